// Modal questions (native <dialog>): the form's values go to `submit`; an API error keeps
// the dialog open and shows the error's message inside it.

import { h } from './dom.js';

let counter = 0;

/**
 * Ask for values. `fields(id)` returns the form's controls; `submit(values)` runs the
 * command and resolves with its answer, which `ask` resolves with (null when cancelled).
 */
export function ask({ title, intro, fields, submitLabel, submit }) {
  counter += 1;
  const id = `dialog-${counter}`;
  const opener = document.activeElement;
  return new Promise((resolve) => {
    const error = h('p', { class: 'dialog-error', role: 'alert' });
    const cancel = h('button', { type: 'button', class: 'quiet' }, 'Cancel');
    const confirm = h('button', { type: 'submit', class: 'primary' }, submitLabel);
    const form = h('form', { novalidate: false },
      h('h2', { id: `${id}-title` }, title),
      intro ? h('p', {}, intro) : null,
      fields(id),
      error,
      h('div', { class: 'dialog-buttons' }, cancel, confirm));
    const dialog = h('dialog', { 'aria-labelledby': `${id}-title` }, form);
    let answer = null;
    const close = () => dialog.close();
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(answer);
    });
    cancel.addEventListener('click', close);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const values = Object.fromEntries(new FormData(form).entries());
      confirm.disabled = true;
      error.textContent = '';
      try {
        answer = await submit(values);
        close();
      } catch (failure) {
        error.textContent = failure.message || String(failure);
        confirm.disabled = false;
      }
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A labelled control: label text, then the control made with `h`. */
export function field(label, control, hint) {
  const hintId = hint ? `${control.id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' },
    h('label', { for: control.id }, label),
    control,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null);
}

// Sign-in: an API token, checked with GET /v1/me before the dashboard opens.

import { h, fill } from '../dom.js';

export function mount(root, { message, signIn }) {
  const error = h('p', { class: 'form-error', role: 'alert', id: 'signin-error' }, message || '');
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', required: true, autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'token-hint signin-error',
  });
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', {
    class: 'signin', 'aria-labelledby': 'signin-title',
    onsubmit: async (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) {
        error.textContent = 'Paste your API token first.';
        return;
      }
      button.disabled = true;
      error.textContent = '';
      try {
        await signIn(token);
      } catch (failure) {
        error.textContent = failure.message || String(failure);
        button.disabled = false;
        input.focus();
      }
    },
  },
  h('h1', { id: 'signin-title' }, 'Sign in to Dealtrail'),
  h('div', { class: 'field' },
    h('label', { for: 'token' }, 'API token'),
    input,
    h('p', { class: 'hint', id: 'token-hint' },
      'The token you were given (make demo prints one). It stays in this browser tab '
      + 'only and is forgotten when the tab closes.')),
  error,
  button);
  fill(root, form);
  input.focus();
}

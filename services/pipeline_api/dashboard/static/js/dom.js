// Building the page: elements are made with h(); text always goes in as text nodes, never
// as markup, so nothing an API answer contains can turn into script.

/**
 * Make an element: h('a', { href: '#/board', class: 'nav' }, 'Board').
 * Attributes that are null, undefined or false are left out; `on<event>` takes a
 * listener; `dataset` an object of data-* values.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? '' : String(value));
  }
  add(el, children);
  return el;
}

function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  add(el, children);
  return el;
}

/** A `<time>` element: the moment in the reader's words, the exact UTC moment as title. */
export function time(iso, text) {
  if (!iso) return '—';
  return h('time', { datetime: iso, title: new Date(iso).toISOString() }, text);
}

/** A description list from [term, description] pairs (descriptions may be elements). */
export function facts(pairs, attrs = {}) {
  return h('dl', { class: 'facts', ...attrs }, pairs.map(([term, value, extra = {}]) => [
    h('dt', {}, term),
    h('dd', extra, value ?? '—'),
  ]));
}

/**
 * A table with a caption, column headers and rows of cells (strings or elements). A wide
 * one scrolls sideways in its box, which keyboard users reach with Tab (`scrolls`).
 */
export function table({ caption, columns, rows, numeric = [], attrs = {}, scrolls = false }) {
  const box = scrolls ? { tabindex: 0, role: 'region', 'aria-label': caption } : {};
  return h('div', { class: 'table-wrap', ...box },
    h('table', attrs,
      caption ? h('caption', {}, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c, i) => h('th', {
        scope: 'col', class: numeric.includes(i) ? 'num' : null,
      }, c)))),
      h('tbody', {}, rows.map((row) => h('tr', {}, row.map((cell, i) => (
        i === 0 ? h('th', { scope: 'row' }, cell) : h('td', { class: numeric.includes(i) ? 'num' : null }, cell)
      )))))));
}

/** A panel that says a view could not load, in the API's words, with a way to retry. */
export function problem(error, retry) {
  return h('div', { class: 'problem', role: 'alert' },
    h('p', {}, h('strong', {}, 'This could not be loaded. '), error.message || String(error)),
    retry ? h('button', { type: 'button', onclick: retry }, 'Try again') : null);
}

/** Say something to screen-reader users without moving their focus. */
export function announce(text) {
  const region = document.getElementById('announcer');
  if (!region) return;
  region.textContent = '';
  // A fresh text node after a tick makes screen readers read it even when repeated.
  setTimeout(() => { region.textContent = text; }, 30);
}

// Messages to the user: what went well in a polite status region, what went wrong in an
// alert region, always in words (an API error's own message).

import { h } from './dom.js';

const NOTICE_MS = 8000;
const MAX_ALERTS = 3;

export function notify(text) {
  const region = document.getElementById('notices');
  const item = h('p', { class: 'notice' }, text);
  region.append(item);
  setTimeout(() => item.remove(), NOTICE_MS);
}

export function fail(error) {
  const region = document.getElementById('alerts');
  const text = typeof error === 'string' ? error : (error && error.message) || String(error);
  const item = h('div', { class: 'alert' },
    h('p', {}, text),
    h('button', {
      type: 'button', class: 'quiet', 'aria-label': 'Dismiss this message',
      onclick: () => item.remove(),
    }, 'Dismiss'));
  region.append(item);
  while (region.children.length > MAX_ALERTS) region.firstElementChild.remove();
}

export function clearAlerts() {
  document.getElementById('alerts').replaceChildren();
}

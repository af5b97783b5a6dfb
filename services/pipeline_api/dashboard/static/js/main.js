// The dashboard's entry point: sign-in, the header, and the views behind #/ addresses.

import { Api } from './api.js';
import { h, fill, problem } from './dom.js';
import { words } from './format.js';
import { ChangeFeed } from './live.js';
import { clearAlerts, fail, notify } from './notices.js';
import * as session from './session.js';
import * as activities from './views/activities.js';
import * as automations from './views/automations.js';
import * as board from './views/board.js';
import * as deal from './views/deal.js';
import * as nonext from './views/nonext.js';
import * as reports from './views/reports.js';
import * as signin from './views/signin.js';
import * as stale from './views/stale.js';
import * as timetravel from './views/timetravel.js';

const VIEWS = {
  board, deal, activities, 'no-next-step': nonext, reports, stale, automations,
  'time-travel': timetravel,
};
const NAV = [
  ['board', 'Board'], ['activities', 'My activities'], ['no-next-step', 'No next step'],
  ['reports', 'Reports'], ['stale', 'Stale deals'], ['automations', 'Automations'],
  ['time-travel', 'Time travel'],
];
const LOOKUP_TTL_MS = 30000;  // pipelines and owners are fetched again after this

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');

let app = null;        // { api, me, feed, lookups } while signed in
let current = null;    // the mounted view: { controller, dispose }
let navigated = false; // focus moves to a view's heading only after the first one

function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = raw.split('?');
  const [name, id] = path.split('/');
  const params = new URLSearchParams(query);
  if (id) params.set('id', decodeURIComponent(id));
  return { name: VIEWS[name] ? name : 'board', params };
}

/** Open a view with parameters (empty ones left out). */
function go(name, values = {}) {
  const query = new URLSearchParams(Object.entries(values).filter(([, v]) => v));
  const text = query.toString();
  window.location.hash = `#/${name}${text ? `?${text}` : ''}`;
}

function lookup(key, load, fresh = false) {
  const kept = app.lookups[key];
  if (kept && !fresh && Date.now() - kept.at < LOOKUP_TTL_MS) return kept.promise;
  const promise = load().catch((error) => {
    delete app.lookups[key];
    throw error;
  });
  app.lookups[key] = { at: Date.now(), promise };
  return promise;
}

function context(signal) {
  const { api, me, feed } = app;
  return {
    api, me, feed, signal, notify, fail, go,
    // Pipelines come from a read model: ask for one that has seen what this page has.
    pipelines: (fresh) => lookup('pipelines', async () => (
      await api.get('/v1/pipelines', { min_position: feed.position })).data, fresh),
    owners: () => lookup('owners', async () => (await api.get('/v1/owners')).data),
    knownPosition: () => feed.position,
  };
}

function dispose() {
  if (!current) return;
  current.controller.abort();
  if (current.dispose) current.dispose();
  current = null;
}

async function route() {
  if (!app) return;
  const { name, params } = parseHash();
  dispose();
  const controller = new AbortController();
  const mine = { controller, dispose: null };
  current = mine;
  const container = h('div', { class: 'view', dataset: { view: name } });
  fill(main, container);
  for (const link of nav.querySelectorAll('a')) {
    if (link.dataset.view === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.body.classList.toggle('in-past', name === 'time-travel');
  try {
    const mounted = await VIEWS[name].mount(container, context(controller.signal), params);
    if (current !== mine) {
      if (mounted && mounted.dispose) mounted.dispose();
      return;
    }
    mine.dispose = mounted && mounted.dispose;
  } catch (error) {
    if (error.name === 'AbortError' || current !== mine) return;
    fill(container, h('h1', { id: 'view-title' }, words(name)), problem(error, route));
  }
  const heading = container.querySelector('h1');
  if (heading) {
    document.title = `${heading.textContent} · Dealtrail`;
    if (navigated) {
      heading.tabIndex = -1;
      heading.focus();
    }
  }
  container.dataset.ready = 'true';
}

function renderHeader() {
  if (!app) {
    nav.replaceChildren();
    who.replaceChildren();
    return;
  }
  fill(nav, h('ul', {}, NAV.map(([name, label]) => h('li', {},
    h('a', { href: `#/${name}`, dataset: { view: name } }, label)))));
  const { me, feed } = app;
  const live = h('button', { type: 'button', class: 'quiet live', 'aria-pressed': 'true' }, 'Live updates');
  const liveState = h('span', { class: 'live-state' });
  live.addEventListener('click', () => feed.setPaused(!feed.paused));
  feed.watch((f) => {
    live.setAttribute('aria-pressed', String(!f.paused));
    if (f.paused) liveState.textContent = 'paused';
    else if (f.problem) liveState.textContent = `retrying: ${f.problem}`;
    else liveState.textContent = 'on';
  });
  fill(who,
    h('p', { class: 'signed-in' }, 'Signed in as ', h('strong', { id: 'who-name' }, me.name),
      ' ', h('span', { class: 'role', id: 'who-role' }, `(${me.role})`),
      me.may_run_commands ? null : h('span', { class: 'badge read-only' }, 'Read-only')),
    h('span', { class: 'live-wrap' }, live, ' ', liveState),
    h('button', { type: 'button', class: 'quiet', onclick: () => signOut('You signed out.') }, 'Sign out'));
}

function showSignIn(message) {
  document.body.classList.remove('in-past');
  document.body.dataset.signedIn = 'false';
  document.title = 'Sign in · Dealtrail';
  const container = h('div', { class: 'view', dataset: { view: 'sign-in' } });
  fill(main, container);
  signin.mount(container, { message, signIn });
}

function signOut(message) {
  dispose();
  if (app) app.feed.stop();
  app = null;
  session.forget();
  clearAlerts();
  renderHeader();
  showSignIn(message);
}

async function signIn(token) {
  const me = await new Api(token).get('/v1/me');
  session.keep(token);
  const api = new Api(token, {
    onUnauthorized: (message) => signOut(`You were signed out (${message}). Sign in again.`),
  });
  app = { api, me, feed: new ChangeFeed(api), lookups: {} };
  document.body.dataset.signedIn = 'true';
  renderHeader();
  app.feed.start();
  await route();
}

async function start() {
  document.querySelector('.skip-link').addEventListener('click', (event) => {
    event.preventDefault();  // the address holds the view; focus the content instead
    main.focus();
  });
  window.addEventListener('hashchange', () => {
    navigated = true;
    clearAlerts();
    route();
  });
  const token = session.token();
  if (!token) {
    showSignIn();
    return;
  }
  try {
    await signIn(token);
  } catch (error) {
    if (error.status === 401) {
      session.forget();
      showSignIn(`Sign in again: ${error.message}.`);
    } else {
      fill(main, h('h1', {}, 'Dealtrail'), problem(error, () => window.location.reload()));
    }
  }
}

start();

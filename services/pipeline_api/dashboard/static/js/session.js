// The API token lives in sessionStorage: it is gone when the tab closes, it is never
// sent as a cookie (so there is no cross-site request forgery to defend against), and
// the page's Content-Security-Policy runs only the dashboard's own scripts.

const KEY = 'dealtrail.token';

export function token() {
  return sessionStorage.getItem(KEY);
}

export function keep(value) {
  sessionStorage.setItem(KEY, value);
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

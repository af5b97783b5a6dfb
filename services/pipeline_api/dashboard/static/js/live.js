// Live updates. A ChangeFeed tells its subscribers when the event log has moved past the
// position the page last showed, and each view then reloads what it shows with
// `min_position` set to that position. A command's own answer is fed in at once
// (`advance`), so the user always sees their own change without waiting for a poll.
//
// Today the feed polls a cheap query whose answer carries the read model's position.
// A server-sent-events route would replace only `poll`: its messages call `#reach`.

const POLL_MS = 3000;
const MAX_BACKOFF_MS = 30000;

export class ChangeFeed {
  constructor(api, { intervalMs = POLL_MS } = {}) {
    this.api = api;
    this.intervalMs = intervalMs;
    this.position = null;
    this.paused = false;
    this.problem = null;
    this.listeners = new Set();
    this.statusListeners = new Set();
    this.timer = null;
    this.failures = 0;
    this.running = false;
    this.onVisible = () => { if (!document.hidden) this.poll(); };
  }

  /** fn(position) runs with the log's position after every poll and every command. */
  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** fn(feed) runs when paused, running or failing changes (for the header). */
  watch(fn) {
    this.statusListeners.add(fn);
    fn(this);
    return () => this.statusListeners.delete(fn);
  }

  /** A position the page itself caused (a command's answer): tell everyone now. */
  advance(position) {
    if (Number.isInteger(position)) this.#reach(position);
  }

  start() {
    if (this.running) return;
    this.running = true;
    document.addEventListener('visibilitychange', this.onVisible);
    this.poll();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    document.removeEventListener('visibilitychange', this.onVisible);
  }

  setPaused(paused) {
    this.paused = paused;
    this.#status();
    if (!paused) this.poll();
  }

  async poll() {
    clearTimeout(this.timer);
    if (!this.running) return;
    let wait = this.intervalMs;
    if (!this.paused && !document.hidden) {
      try {
        const answer = await this.api.get('/v1/deals', { limit: 1 });
        this.failures = 0;
        this.#setProblem(null);
        this.#reach(answer.position);
      } catch (error) {
        if (error.status === 401) return;
        this.failures += 1;
        wait = Math.min(MAX_BACKOFF_MS, this.intervalMs * 2 ** this.failures);
        this.#setProblem(error.message);
      }
    }
    if (this.running) this.timer = setTimeout(() => this.poll(), wait);
  }

  #reach(position) {
    if (position === null || position === undefined) return;
    this.position = Math.max(this.position ?? position, position);
    // Every answer is passed on: each view compares it with the position it shows and
    // reloads only when behind (so a view whose reload failed tries again next time).
    for (const fn of [...this.listeners]) fn(this.position);
  }

  #setProblem(problem) {
    if (problem === this.problem) return;
    this.problem = problem;
    this.#status();
  }

  #status() {
    for (const fn of [...this.statusListeners]) fn(this);
  }
}

/**
 * Keep a view's content following the log: `refresh(minPosition)` loads (`load` answers
 * with a `position`) and shows the newest answer only. When the feed reports a position
 * beyond what is shown, the view reloads with it as `min_position`; while a load is under
 * way the position is kept and loaded right after, so no answer is thrown away. While
 * `busy()` (a keyboard move under way) loads wait, and `resume()` runs the one that
 * waited. A first load that fails shows the error in `body` with a retry; later failures
 * go to the alert region and keep what is shown (the next poll tries again).
 */
export function follow(ctx, { load, show, body, problem, busy = () => false }) {
  let sequence = 0;
  let shown = -1;
  let loaded = false;
  let loading = 0;
  let wanted = -1;

  async function refresh(minPosition) {
    if (busy()) {
      wanted = Math.max(wanted, minPosition ?? 0);
      return;
    }
    sequence += 1;
    const mine = sequence;
    loading += 1;
    let ok = false;
    try {
      const answer = await load(minPosition);
      if (mine !== sequence || ctx.signal.aborted) return;
      shown = answer.position;
      loaded = true;
      ok = true;
      show(answer);
    } catch (error) {
      if (error.name === 'AbortError' || mine !== sequence) return;
      if (loaded) ctx.fail(error);
      else body.replaceChildren(problem(error, () => refresh(minPosition)));
    } finally {
      loading -= 1;
      if (ok && !loading && wanted > shown && !ctx.signal.aborted) refresh(wanted);
    }
  }

  function resume() {
    if (wanted > shown) refresh(wanted);
  }

  const stop = ctx.feed.subscribe((position) => {
    wanted = Math.max(wanted, position);
    if (position > shown && !loading && !busy()) refresh(position);
  });
  return { refresh, resume, stop, loaded: () => loaded };
}

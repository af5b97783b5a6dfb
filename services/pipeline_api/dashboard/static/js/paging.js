// A list the API answers a page at a time (`next_cursor`): the first page, then "Show more"
// follows the cursor. A live reload asks again for as many items as are shown, so the
// list keeps its length while it follows the log.

import { h, problem, table } from './dom.js';
import { count } from './format.js';
import { follow } from './live.js';

export class PagedList {
  constructor(ctx, path, params, { pageSize = 50 } = {}) {
    this.ctx = ctx;
    this.path = path;
    this.params = params;
    this.pageSize = pageSize;
    this.items = [];
    this.cursor = null;
    this.wanted = pageSize;
  }

  /** The items up to the length shown, at `minPosition` at least (not yet kept). */
  async fetch(minPosition) {
    const answer = await this.ctx.api.all(this.path, {
      ...this.params, limit: this.pageSize, min_position: minPosition,
    }, { limit: this.wanted, signal: this.ctx.signal });
    return {
      items: answer.data,
      cursor: answer.next_cursor,
      // A list answered without a position counts as the one asked for.
      position: answer.position ?? minPosition ?? 0,
    };
  }

  /** Show what `fetch` answered. */
  keep(answer) {
    this.items = answer.items;
    this.cursor = answer.cursor;
  }

  get hasMore() {
    return Boolean(this.cursor);
  }

  /** The next page, after the items shown. */
  async more() {
    const page = await this.ctx.api.get(this.path, {
      ...this.params, limit: this.pageSize, cursor: this.cursor,
    }, { signal: this.ctx.signal });
    this.items = this.items.concat(page.data || page.items || []);
    this.cursor = page.next_cursor;
    this.wanted = Math.ceil(this.items.length / this.pageSize) * this.pageSize;
  }

  /** "12 shown" and, while there are more, a "Show more" button that shows them. */
  footer(what, shown) {
    const button = this.hasMore
      ? h('button', {
        type: 'button', class: 'quiet more-items',
        onclick: async () => {
          button.disabled = true;
          try {
            await this.more();
            shown();
          } catch (error) {
            if (error.name !== 'AbortError') this.ctx.fail(error);
            button.disabled = false;
          }
        },
      }, `Show more ${what}`)
      : null;
    return h('div', { class: 'list-foot' },
      h('p', { class: 'hint' }, `${count(this.items.length)} shown${this.hasMore ? '; there are more' : ''}.`),
      button);
  }

  /** The items as a table (`row(item)` gives the cells) or, with none, `empty`; then the footer. */
  view({ caption, columns, numeric = [], id, row, empty, what }, shown) {
    return [
      this.items.length
        ? table({ caption, columns, numeric, scrolls: true, attrs: { id }, rows: this.items.map(row) })
        : h('p', { class: 'empty' }, empty),
      this.footer(what, shown),
    ];
  }

  /** Follow the log (live.js): reload as many items as are shown, then `shown()`. */
  follow(body, shown) {
    return follow(this.ctx, {
      load: (minPosition) => this.fetch(minPosition),
      show: (answer) => {
        this.keep(answer);
        shown();
      },
      body,
      problem,
    });
  }
}

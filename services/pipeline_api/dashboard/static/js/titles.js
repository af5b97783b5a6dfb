// Deals' titles for pages whose answers name a deal only by id (a past board, a list of
// activities, an automation's firings): looked up a few at a time, kept for the view.

const LOOKUPS_AT_ONCE = 6;

/** A view's cache of deal titles: `get(id)`, and `lookUp(ids, onTitle)` for the rest. */
export function dealTitles(ctx) {
  const titles = new Map();
  async function lookUp(ids, onTitle) {
    const queue = [...new Set(ids)].filter((id) => id && !titles.has(id));
    const worker = async () => {
      while (queue.length && !ctx.signal.aborted) {
        const id = queue.shift();
        try {
          const deal = await ctx.api.get(`/v1/deals/${id}`, {}, { signal: ctx.signal });
          titles.set(id, deal.title);
        } catch (error) {
          if (error.name === 'AbortError') return;
          titles.set(id, `Deal ${id.slice(0, 8)}`);
        }
        onTitle(id, titles.get(id));
      }
    };
    await Promise.all(Array.from({ length: LOOKUPS_AT_ONCE }, worker));
  }
  return { get: (id) => titles.get(id), lookUp };
}

/** Write a title into every element of `root` marked `data-title-of="<deal id>"`. */
export function showTitle(root, id, title) {
  for (const el of root.querySelectorAll(`[data-title-of="${id}"]`)) el.textContent = title;
}

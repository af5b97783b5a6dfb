// Deal commands from any view: each names the version the page showed (If-Match), and
// feeds its answer's position to the change feed so every view reloads to include it.

import { ApiError } from './api.js';
import { ask, field } from './dialogs.js';
import { h } from './dom.js';

const NOTE_MAX = 2000;  // the API's limit for notes

/** A 412 in words: the page showed an older version than the one stored. */
export function staleMessage(title) {
  return `Someone else changed “${title}” after this page loaded it, so your change was `
    + 'not made. The deal has been reloaded: check it and try again.';
}

/**
 * POST (or `method`) /v1/deals/{id}/{verb} with If-Match naming the version the page
 * showed (none when it showed none); the answer's position goes to the feed. A 412 is
 * said in words and, when the view gave `ctx.onConflict`, passed to it to reload.
 */
export async function dealCommand(ctx, deal, verb, body, { method = 'POST' } = {}) {
  try {
    const answer = await ctx.api.request(method, `/v1/deals/${deal.id}/${verb}`,
      { body, ifMatch: deal.version });
    ctx.feed.advance(answer.position);
    return answer;
  } catch (error) {
    if (error.status === 412) {
      const stale = new ApiError(412, error.code, staleMessage(deal.title), error.details);
      if (ctx.onConflict) ctx.onConflict(stale);  // the view reloads the deal
      throw stale;
    }
    throw error;
  }
}

const CONFLICT_RELOADS = 20;    // after a 412, reloads until the newer version shows…
const CONFLICT_PAUSE_MS = 250;  // …this long apart

/**
 * After a refused command: reload, and after a 412 keep reloading (the read model may not
 * have the other change yet) until `shownVersion()` reaches the version that refused.
 */
export async function reloadAfter(error, refresh, shownVersion) {
  const wanted = error.status === 412 ? error.details.current_version : null;
  for (let attempt = 0; attempt < CONFLICT_RELOADS; attempt += 1) {
    await refresh();
    const shown = shownVersion();
    if (!wanted || shown === null || shown === undefined || shown >= wanted) return;
    await new Promise((resolve) => { setTimeout(resolve, CONFLICT_PAUSE_MS); });
  }
}

/** Ask for one of the pipeline's active lost reasons (and a note), then lose the deal. */
export function loseDeal(ctx, deal, pipeline) {
  const reasons = pipeline ? pipeline.lost_reasons : [];
  return ask({
    title: `Mark “${deal.title}” as lost`,
    intro: 'Why was it lost? Choose one of this pipeline’s reasons; add details in the note.',
    submitLabel: 'Mark as lost',
    fields: (id) => [
      field('Reason', h('select', { id: `${id}-reason`, name: 'reason', required: true },
        h('option', { value: '' }, 'Choose a reason…'),
        reasons.map((reason) => h('option', { value: reason }, reason)))),
      field('Note (optional)', h('textarea', {
        id: `${id}-note`, name: 'note', rows: 3, maxlength: NOTE_MAX,
      })),
    ],
    submit: ({ reason, note }) => dealCommand(ctx, deal, 'lose', { reason, note: note || null }),
  });
}

function isoDay(offsetDays) {
  const d = new Date(Date.now() + offsetDays * 86400000);
  return d.toISOString().slice(0, 10);
}

/** Ask until when (and why), then snooze the deal off the stale list. */
export function snoozeDeal(ctx, deal) {
  return ask({
    title: `Snooze “${deal.title}”`,
    intro: 'A snoozed deal leaves the stale list until the day you choose.',
    submitLabel: 'Snooze',
    fields: (id) => [
      field('Until', h('input', {
        id: `${id}-until`, name: 'until', type: 'date', required: true,
        min: isoDay(1), value: isoDay(7),
      }), 'The deal comes back on this day (UTC midnight).'),
      field('Reason', h('textarea', {
        id: `${id}-reason`, name: 'reason', rows: 2, maxlength: NOTE_MAX, required: true,
      })),
    ],
    submit: ({ until, reason }) => dealCommand(ctx, deal, 'snooze', {
      until: `${until}T00:00:00Z`, reason,
    }),
  });
}

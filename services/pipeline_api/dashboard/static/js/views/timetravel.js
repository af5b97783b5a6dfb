// Time travel: the board as it was at a past moment (`as_of`), marked as the past and
// read-only. The past board answers with each deal's state then; a deal's title is not
// part of that history, so cards show the deal's title as it is now, looked up per card.

import { h, fill, problem } from '../dom.js';
import { pipelineViewStart } from '../filters.js';
import { dateTime, localInput } from '../format.js';
import { dealTitles } from '../titles.js';
import { PER_STAGE, renderColumns, totalsLine } from './board.js';

function defaultMoment() {
  const d = new Date(Date.now() - 30 * 86400000);
  d.setSeconds(0, 0);
  return d;
}

export async function mount(root, ctx, params) {
  const { signal } = ctx;
  root.classList.add('past');
  const start = await pipelineViewStart(ctx, params, root, 'Time travel');
  if (!start) return {};
  const { pipelines, pipeline } = start;
  const wanted = params.get('at') ? new Date(params.get('at')) : defaultMoment();
  const moment = Number.isNaN(wanted.getTime()) ? defaultMoment() : wanted;
  const titles = dealTitles(ctx);

  const form = h('form', {
    class: 'filters', 'aria-label': 'Moment to look at',
    onsubmit: (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      const at = new Date(data.get('at'));
      if (Number.isNaN(at.getTime())) {
        ctx.fail('Choose a date and time to look at.');
        return;
      }
      ctx.go('time-travel', { pipeline: data.get('pipeline'), at: at.toISOString() });
    },
  },
  h('div', { class: 'field' },
    h('label', { for: 'travel-pipeline' }, 'Pipeline'),
    h('select', { id: 'travel-pipeline', name: 'pipeline' },
      pipelines.map((p) => h('option', { value: p.id, selected: p.id === pipeline.id }, p.name)))),
  h('div', { class: 'field' },
    h('label', { for: 'travel-at' }, 'Moment (your time zone)'),
    h('input', {
      id: 'travel-at', name: 'at', type: 'datetime-local', required: true,
      value: localInput(moment), max: localInput(new Date()),
    })),
  h('button', { type: 'submit', class: 'primary' }, 'Show the board then'));

  const banner = h('p', { class: 'past-banner', role: 'note' },
    h('strong', {}, 'The past, read-only. '),
    `This is ${pipeline.name} as it was on `, h('time', { datetime: moment.toISOString() }, dateTime(moment.toISOString())),
    '. Nothing can be changed here; the Board shows the pipeline now.');
  const status = h('div', { class: 'board-status' });
  const body = h('div', { class: 'board-body', 'aria-busy': 'true' }, h('p', {}, 'Loading the past board…'));
  fill(root,
    h('div', { class: 'view-head' }, h('h1', { id: 'view-title' }, `Time travel: ${pipeline.name}`), form),
    banner, status, body);

  function titleOf(deal) {
    return titles.get(deal.id) || 'Deal (loading its title…)';
  }

  function lookUpTitles(ids) {
    return titles.lookUp(ids, (id, title) => {
      for (const link of body.querySelectorAll(`.card[data-deal-id="${id}"] .card-title`)) {
        link.textContent = title;
      }
    });
  }

  try {
    const answer = await ctx.api.get(`/v1/pipelines/${pipeline.id}/board`, {
      as_of: moment.toISOString(), per_stage: PER_STAGE,
    }, { signal });
    const board = {
      currency: answer.pipeline.currency,
      columns: answer.stages.map((stage) => ({
        stage, count: stage.count, total: stage.total_value, weighted: stage.weighted_value,
        stale: 0, deals: stage.deals, more: null,
      })),
    };
    fill(status, totalsLine(answer.totals, board.currency, 'Board totals then'));
    fill(body, renderColumns(board, { past: true, titleOf }));
    body.setAttribute('aria-busy', 'false');
    lookUpTitles(board.columns.flatMap((c) => c.deals.map((d) => d.id)));
  } catch (error) {
    if (error.name !== 'AbortError') fill(body, problem(error, () => ctx.go('time-travel', Object.fromEntries(params))));
  }
  return {};
}

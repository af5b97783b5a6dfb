// Stale deals: open deals that sat too long in their stage or saw no activity, most stale
// first, each with a snooze that takes it off the list until a chosen day.

import { snoozeDeal } from '../commands.js';
import { downloadCsv } from '../download.js';
import { h, fill, problem, table } from '../dom.js';
import { filterBar, pipelineViewStart } from '../filters.js';
import { count, decimal, money, words } from '../format.js';
import { follow } from '../live.js';

export async function mount(root, ctx, params) {
  const { signal } = ctx;
  const start = await pipelineViewStart(ctx, params, root, 'Stale deals');
  if (!start) return {};
  const { pipelines, owners, pipeline } = start;
  const values = { pipeline: pipeline.id, owner: params.get('owner') || '', team: params.get('team') || '' };
  const query = { pipeline_id: pipeline.id, owner: values.owner, team: values.team };
  const summary = h('p', { class: 'summary' });
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading stale deals…'));
  let rows = [];

  fill(root,
    h('div', { class: 'view-head' },
      h('h1', { id: 'view-title' }, `Stale deals: ${pipeline.name}`),
      filterBar({
        label: 'Stale deal filters',
        fields: ['pipeline', 'owner', 'team'],
        pipelines,
        owners,
        values,
        apply: (next) => ctx.go('stale', next),
      })),
    h('p', { class: 'hint' },
      'Rotting: longer in its stage than the stage allows. No activity: untouched for longer '
      + 'than the pipeline allows. Days stale: how far past the larger limit.'),
    h('div', { class: 'report-head' }, summary,
      h('button', {
        type: 'button', class: 'quiet download', 'aria-label': 'Download CSV: stale deals',
        onclick: async () => {
          try {
            ctx.notify(`Downloaded ${await downloadCsv(ctx.api, '/v1/reports/stale-deals', query, signal)}.`);
          } catch (error) {
            if (error.name !== 'AbortError') ctx.fail(error);
          }
        },
      }, 'Download CSV')),
    body);

  async function snooze(row) {
    const answer = await snoozeDeal(ctx, { id: row.deal_id, title: row.title });
    if (answer) ctx.notify(`“${row.title}” is snoozed until ${new Date(answer.snoozed_until).toLocaleDateString()}.`);
  }

  function render(answer) {
    rows = answer.rows;
    const total = `${count(answer.summary.stale)} stale ${answer.summary.stale === 1 ? 'deal' : 'deals'}`;
    fill(summary, answer.summary.stale > answer.summary.shown
      ? `${total}; the ${count(answer.summary.shown)} most stale are listed.`
      : `${total}.`);
    const columns = ['Deal', 'Owner', 'Stage', 'Value', 'Days in stage', 'Days since activity', 'Days stale', 'Why'];
    if (ctx.me.may_run_commands) columns.push('Snooze');
    fill(body, rows.length
      ? table({
        scrolls: true,
        caption: 'Stale deals, most stale first',
        columns,
        numeric: [3, 4, 5, 6],
        rows: rows.map((r) => {
          const cells = [
            h('a', { href: `#/deal/${r.deal_id}` }, r.title), r.owner, r.stage_name,
            money(r.value, pipeline.currency), decimal(r.days_in_stage), decimal(r.days_since_activity),
            decimal(r.days_stale), r.reasons.split(',').filter(Boolean).map(words).join(', '),
          ];
          if (ctx.me.may_run_commands) {
            cells.push(h('button', {
              type: 'button', class: 'snooze', 'aria-label': `Snooze ${r.title}`,
              onclick: () => snooze(r),
            }, 'Snooze…'));
          }
          return cells;
        }),
        attrs: { id: 'table-stale' },
      })
      : h('p', {}, 'No stale deals: every open deal moved recently enough.'));
    body.setAttribute('aria-busy', 'false');
  }

  const live = follow(ctx, {
    load: (minPosition) => ctx.api.get('/v1/reports/stale-deals', { ...query, min_position: minPosition }, { signal }),
    show: render,
    body,
    problem,
  });
  await live.refresh(ctx.knownPosition());
  return { dispose: live.stop };
}

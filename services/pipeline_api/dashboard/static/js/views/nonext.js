// No next step: a pipeline's open deals with no open activity (nothing planned), from
// GET /v1/deals?has_next_activity=false, each with "Plan an activity" from its row.

import { planActivity } from '../activities.js';
import { h, fill } from '../dom.js';
import { filterBar, pipelineViewStart } from '../filters.js';
import { dateTime, days, money } from '../format.js';
import { PagedList } from '../paging.js';

const PAGE = 50;  // deals per page and per "Show more"

export async function mount(root, ctx, params) {
  const start = await pipelineViewStart(ctx, params, root, 'No next step');
  if (!start) return {};
  const { pipelines, owners, pipeline } = start;
  const owner = params.get('owner') || '';
  const list = new PagedList(ctx, '/v1/deals', {
    pipeline_id: pipeline.id, status: 'open', has_next_activity: 'false', owner,
  }, { pageSize: PAGE });
  const writes = ctx.me.may_run_commands;
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading deals…'));

  fill(root,
    h('div', { class: 'view-head' },
      h('h1', { id: 'view-title' }, `No next step: ${pipeline.name}`),
      filterBar({
        label: 'Filters of deals with no next step',
        fields: ['pipeline', 'owner'],
        pipelines,
        owners,
        values: { pipeline: pipeline.id, owner },
        apply: (values) => ctx.go('no-next-step', { pipeline: values.pipeline, owner: values.owner }),
      })),
    h('p', { class: 'hint' },
      'Open deals with no open activity: nobody has planned what happens next. Plan a call, '
      + 'a meeting or a task and the deal leaves this list.'),
    writes ? null : h('p', { class: 'read-only-note' }, 'Read-only: your role may look at deals but not plan activities.'),
    body);

  async function planOn(deal) {
    try {
      const answer = await planActivity(ctx, deal);
      if (answer) ctx.notify(`Planned “${answer.subject}” on “${deal.title}”.`);
    } catch (error) {
      ctx.fail(error);
    }
  }

  function render() {
    const columns = ['Deal', 'Owner', 'Stage', 'Value', 'In stage', 'Last activity'];
    if (writes) columns.push('Plan');
    fill(body, list.view({
      caption: 'Open deals with nothing planned, oldest first',
      columns,
      numeric: [3],
      id: 'table-no-next-step',
      what: 'deals',
      empty: 'Every open deal has something planned.',
      row: (deal) => [
        h('a', { href: `#/deal/${deal.id}` }, deal.title), deal.owner, deal.stage.name,
        money(deal.value, deal.currency), days(deal.time_in_current_stage_seconds),
        dateTime(deal.last_activity_at),
        writes ? h('button', {
          type: 'button', class: 'quiet plan', 'aria-label': `Plan an activity on ${deal.title}`,
          onclick: () => planOn(deal),
        }, 'Plan an activity…') : null,
      ].slice(0, columns.length),
    }, render));
    body.setAttribute('aria-busy', 'false');
  }

  const live = list.follow(body, render);
  await live.refresh(ctx.knownPosition());
  return { dispose: live.stop };
}

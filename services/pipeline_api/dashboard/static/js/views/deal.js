// A deal's page: its state now, the actions on it, its activities (open, done, cancelled),
// the time it spent in each stage and its full timeline from the audit history (who,
// what, when, before and after).

import {
  activityMarks, cancelActivity, completeActivity, planActivity, rescheduleActivity,
  typeLabel, waiveChecklist,
} from '../activities.js';
import { dealCommand, loseDeal, reloadAfter, snoozeDeal } from '../commands.js';
import { h, facts, fill, problem, table, time } from '../dom.js';
import { follow } from '../live.js';
import { dateTime, day, days, due, money, percent, span, words } from '../format.js';

const HISTORY_LIMIT = 5000;  // timeline entries loaded at most
const ACTIVITY_LIMIT = 200;  // a deal holds at most this many activities (the API's limit)
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const FIELD_NAMES = {
  pipeline_id: 'Pipeline', stage_id: 'Stage id', expected_close_date: 'Expected close date',
  external_id: 'External id', lost_reason: 'Lost reason', lost_note: 'Lost note',
  snoozed_until: 'Snoozed until', snooze_reason: 'Snooze reason',
  probability_override: 'Probability override',
};

/**
 * Seconds spent in each stage (by its name at the time), from the timeline, on business
 * time; the stage an open deal is in counts until `now`.
 */
export function stageTimes(events, now) {
  const stages = new Map();
  let current = null;
  let stage = null;
  const visit = (name, at) => {
    current = { name, since: at };
    const entry = stages.get(name) || { seconds: 0, visits: 0 };
    entry.visits += 1;
    stages.set(name, entry);
  };
  const leave = (at) => {
    if (!current) return;
    stages.get(current.name).seconds += Math.max(0, (at - current.since) / 1000);
    current = null;
  };
  for (const event of events) {
    const at = new Date(event.occurred_at).getTime();
    const changes = event.changes || {};
    const to = changes.stage ? changes.stage.after : null;
    switch (event.event_type) {
      case 'DealCreated':
        stage = to;
        visit(stage, at);
        break;
      case 'StageAdvanced':
      case 'DealMoved':
        if (current) {
          leave(at);
          stage = to || stage;
          visit(stage, at);
        } else stage = to || stage;
        break;
      case 'DealWon':
      case 'DealLost':
        leave(at);
        break;
      case 'DealReopened':
        stage = to || stage;
        visit(stage, at);
        break;
      default:
    }
  }
  leave(now);
  return stages;
}

function shownValue(field, value, currency, pipelines) {
  if (value === null || value === undefined) return '—';
  if (field === 'value') return money(value, currency);
  if (field === 'pipeline_id') {
    const pipeline = pipelines.find((p) => p.id === value);
    return pipeline ? pipeline.name : value;
  }
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function timeline(events, currency, pipelines) {
  return h('ol', { class: 'timeline' }, events.map((event) => h('li', { class: 'event', dataset: { eventType: event.event_type, position: event.position } },
    h('h3', {}, words(event.event_type)),
    h('p', { class: 'event-meta' },
      'by ', h('strong', {}, event.actor || 'unknown'),
      ' · happened ', time(event.occurred_at, dateTime(event.occurred_at)),
      ' · recorded ', time(event.recorded_at, dateTime(event.recorded_at)),
      ` · version ${event.version}`),
    Object.keys(event.changes || {}).length
      ? table({
        columns: ['Field', 'Before', 'After'],
        rows: Object.entries(event.changes).map(([field, change]) => [
          FIELD_NAMES[field] || words(field),
          shownValue(field, change.before, currency, pipelines),
          shownValue(field, change.after, currency, pipelines),
        ]),
        attrs: { class: 'changes' },
      })
      : null)));
}

export async function mount(root, ctx, params) {
  const { signal } = ctx;
  const id = params.get('id') || '';
  if (!UUID.test(id)) {
    fill(root, h('h1', {}, 'Deal'), problem(new Error(`“${id}” is not a deal id.`)));
    return {};
  }
  let pipelines = await ctx.pipelines();
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading the deal…'));
  fill(root, body);
  let current = null;
  // The deal as shown now: a dialog opened earlier sends the version shown when it submits.
  const shown = new Proxy({}, { get: (_, key) => current.deal[key] });
  // Commands from this page reload the deal after a 412 until the newer version shows.
  const cctx = { ...ctx, onConflict: (error) => reloadAfter(error, refresh, () => current.deal.version) };

  async function load(minPosition) {
    const [deal, history, activities] = await Promise.all([
      ctx.api.get(`/v1/deals/${id}`, { min_position: minPosition }, { signal }),
      ctx.api.all(`/v1/deals/${id}/history`, { limit: 500, min_position: minPosition },
        { limit: HISTORY_LIMIT, signal }),
      ctx.api.all(`/v1/deals/${id}/activities`, { limit: ACTIVITY_LIMIT, min_position: minPosition },
        { limit: ACTIVITY_LIMIT, signal }),
    ]);
    if (!pipelines.some((p) => p.id === deal.pipeline_id)) pipelines = await ctx.pipelines(true);
    return {
      deal, history, activities: activities.data,
      position: Math.min(deal.position, history.position, activities.position),
    };
  }

  /** Open a dialog for the deal; say what it did when it did something. */
  async function act(open, done) {
    try {
      const answer = await open();
      if (answer && !answer.unchanged) ctx.notify(done(answer));
    } catch (error) {
      ctx.fail(error);
    }
  }

  function activityButtons(activity) {
    if (!ctx.me.may_run_commands || activity.status !== 'open') return null;
    const button = (verb, label, run) => h('button', {
      type: 'button', class: `quiet ${verb}`, 'aria-label': `${label} ${activity.subject}`,
      dataset: { focusKey: `${verb}-${activity.id}` }, onclick: run,
    }, `${label}…`);
    return h('div', { class: 'row-actions' },
      button('complete', 'Complete', () => act(() => completeActivity(cctx, shown, activity),
        () => `“${activity.subject}” is done.`)),
      button('reschedule', 'Reschedule', () => act(() => rescheduleActivity(cctx, shown, activity),
        () => `“${activity.subject}” is rescheduled.`)),
      button('cancel', 'Cancel', () => act(() => cancelActivity(cctx, shown, activity),
        () => `“${activity.subject}” is cancelled.`)));
  }

  function activityTable(caption, rows, kind) {
    const writes = kind === 'open' && ctx.me.may_run_commands;
    const columns = {
      open: ['Subject', 'Type', 'Due', 'Assignee', 'Note'],
      done: ['Subject', 'Type', 'Completed', 'Assignee', 'Outcome'],
      cancelled: ['Subject', 'Type', 'Cancelled', 'Assignee', 'Reason'],
    }[kind];
    return table({
      caption,
      scrolls: true,
      columns: writes ? [...columns, 'Actions'] : columns,
      rows: rows.map((a) => {
        const cells = [
          h('span', { class: 'activity-subject', dataset: { activityId: a.id } },
            a.subject, ' ', activityMarks(a, pipelines)),
          typeLabel(a.type),
          {
            open: () => time(a.due_at, due(a.due_at)),
            done: () => time(a.completed_at, dateTime(a.completed_at)),
            cancelled: () => time(a.cancelled_at, dateTime(a.cancelled_at)),
          }[kind](),
          a.assignee,
          { open: a.note, done: a.outcome, cancelled: a.cancel_reason }[kind] || '—',
        ];
        if (writes) cells.push(activityButtons(a));
        return cells;
      }),
      attrs: { class: `activities activities-${kind}` },
    });
  }

  function activitySection(deal, activities) {
    const groups = { open: [], done: [], cancelled: [] };
    for (const a of activities) (groups[a.status] || groups.open).push(a);
    const overdue = groups.open.filter((a) => a.overdue).length;
    const openChecklist = groups.open.some((a) => a.checklist && a.checklist.stage_id === deal.stage.id);
    const writes = ctx.me.may_run_commands;
    return h('section', { 'aria-labelledby': 'activities-title', id: 'activities' },
      h('h2', { id: 'activities-title' },
        `Activities (${groups.open.length} open${overdue ? `, ${overdue} overdue` : ''})`),
      writes
        ? h('div', { class: 'actions' },
          h('button', {
            type: 'button', class: 'primary plan', dataset: { focusKey: 'plan' },
            onclick: () => act(() => planActivity(cctx, shown), (a) => `Planned “${a.subject}”.`),
          }, 'Plan an activity…'),
          ctx.me.may_waive_checklists && openChecklist && deal.status === 'open'
            ? h('button', {
              type: 'button', class: 'quiet waive', dataset: { focusKey: 'waive' },
              onclick: () => act(() => waiveChecklist(cctx, shown),
                (a) => `Waived ${a.waived.length} checklist ${a.waived.length === 1 ? 'item' : 'items'}.`),
            }, 'Waive the checklist…')
            : null)
        : null,  // the page says it is read-only once, above
      groups.open.length
        ? activityTable('Open, soonest due first', groups.open, 'open')
        : h('p', { class: 'hint no-next-step' }, 'Nothing planned: no open activity on this deal.'),
      groups.done.length ? activityTable('Done', groups.done, 'done') : null,
      groups.cancelled.length ? activityTable('Cancelled', groups.cancelled, 'cancelled') : null);
  }

  function actions(deal, pipeline) {
    if (!ctx.me.may_run_commands) {
      return h('p', { class: 'read-only-note' }, 'Read-only: your role may look at deals and their activities but not change them.');
    }
    const stages = pipeline ? pipeline.stages : [];
    const run = async (verb, body, done) => {
      try {
        const answer = await dealCommand(ctx, deal, verb, body);
        ctx.notify(done(answer));
      } catch (error) {
        ctx.fail(error);
        await reloadAfter(error, refresh, () => current.deal.version);
      }
    };
    if (deal.status !== 'open') {
      const select = h('select', { id: 'reopen-stage', name: 'stage' },
        stages.map((s) => h('option', { value: s.id, selected: s.id === deal.stage.id }, s.name)));
      return h('form', {
        class: 'actions', 'aria-label': 'Deal actions',
        onsubmit: (event) => {
          event.preventDefault();
          run('reopen', { stage: select.value }, () => `“${deal.title}” is open again.`);
        },
      },
      h('div', { class: 'field' }, h('label', { for: 'reopen-stage' }, 'Reopen in'), select),
      h('button', { type: 'submit', class: 'primary' }, 'Reopen'));
    }
    const others = stages.filter((s) => s.id !== deal.stage.id);
    const select = h('select', { id: 'move-stage', name: 'stage' },
      others.map((s) => h('option', { value: s.id }, s.name)));
    return h('form', {
      class: 'actions', 'aria-label': 'Deal actions',
      onsubmit: (event) => {
        event.preventDefault();
        const stage = stages.find((s) => s.id === select.value);
        if (stage) run('advance', { stage: stage.id }, () => `Moved “${deal.title}” to ${stage.name}.`);
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'move-stage' }, 'Move to'), select),
    h('button', { type: 'submit', class: 'primary' }, 'Move'),
    h('button', {
      type: 'button', class: 'win',
      onclick: () => run('win', undefined, () => `“${deal.title}” is won.`),
    }, 'Won'),
    h('button', {
      type: 'button', class: 'lose',
      onclick: async () => {
        const answer = await loseDeal(ctx, deal, pipeline);
        if (answer) ctx.notify(`“${deal.title}” is lost.`);
      },
    }, 'Lost…'),
    h('button', {
      type: 'button', class: 'snooze',
      onclick: async () => {
        const answer = await snoozeDeal(ctx, deal);
        if (answer) ctx.notify(`“${deal.title}” is snoozed.`);
      },
    }, 'Snooze…'));
  }

  function render() {
    const { deal, history, activities } = current;
    const focusKey = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.focusKey : null;
    const pipeline = pipelines.find((p) => p.id === deal.pipeline_id);
    const currency = deal.currency;
    const stageRows = [...stageTimes(history.data, Date.now()).entries()].map(([name, t]) => [
      name, span(t.seconds), String(t.visits),
    ]);
    fill(body,
      h('p', { class: 'crumbs' }, h('a', { href: `#/board?pipeline=${deal.pipeline_id}` }, `← Board: ${pipeline ? pipeline.name : 'pipeline'}`)),
      h('h1', { id: 'view-title' }, deal.title, ' ', h('span', { class: `status status-${deal.status}` }, words(deal.status))),
      facts([
        ['Stage', deal.stage.name, { dataset: { field: 'stage' } }],
        ['Value', money(deal.value, currency), { dataset: { field: 'value', value: deal.value } }],
        ['Weighted', `${money(deal.weighted_value, currency)} (${percent(deal.probability / 100)})`],
        ['Owner', deal.owner, { dataset: { field: 'owner' } }],
        ['Expected close', day(deal.expected_close_date)],
        ['Account', deal.account],
        ['Product', deal.product],
        ['Created', dateTime(deal.created_at)],
        deal.status === 'open'
          ? ['In this stage for', days(deal.time_in_current_stage_seconds)]
          : ['Closed', dateTime(deal.closed_at)],
        ['Last activity', dateTime(deal.last_activity_at)],
        deal.stale ? ['Stale', `${deal.stale_reasons.map(words).join(', ')}; ${days(deal.days_stale * 86400)} past the limit`] : null,
        deal.lost_reason ? ['Lost because', `${deal.lost_reason}${deal.lost_note ? ` (${deal.lost_note})` : ''}`] : null,
        deal.snoozed_until ? ['Snoozed until', `${dateTime(deal.snoozed_until)}${deal.snooze_reason ? ` (${deal.snooze_reason})` : ''}`] : null,
        ['Version', String(deal.version)],
      ].filter(Boolean), { 'aria-label': 'The deal now' }),
      actions(deal, pipeline),
      activitySection(deal, activities),
      h('section', { 'aria-labelledby': 'stage-times' },
        h('h2', { id: 'stage-times' }, 'Time in each stage'),
        h('p', { class: 'hint' }, 'Business time, from the timeline below; the current stage counts until now.'),
        table({ columns: ['Stage', 'Time', 'Visits'], rows: stageRows, numeric: [1, 2] })),
      h('section', { 'aria-labelledby': 'timeline-title' },
        h('h2', { id: 'timeline-title' }, `Timeline (${history.data.length} events, oldest first)`),
        history.truncated ? h('p', { class: 'hint' }, `Only the first ${HISTORY_LIMIT} events are shown.`) : null,
        timeline(history.data, currency, pipelines)));
    body.setAttribute('aria-busy', 'false');
    const again = focusKey && body.querySelector(`[data-focus-key="${focusKey}"]`);
    if (again) again.focus();
  }

  const live = follow(ctx, {
    load,
    show: (next) => {
      current = next;
      render();
    },
    body,
    problem,
  });
  const { refresh } = live;
  await refresh(ctx.knownPosition());
  return { dispose: live.stop };
}

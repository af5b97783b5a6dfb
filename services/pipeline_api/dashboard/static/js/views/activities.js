// My activities: the signed-in user's work across deals from GET /v1/activities, by default
// what is due today or overdue and, below it, what is coming up; other lists by status and
// type, anyone's for admins and managers. Open ones can be completed from the list.

import { activityMarks, completeActivity, TYPES, typeLabel } from '../activities.js';
import { h, fill, problem, table, time } from '../dom.js';
import { dateTime, due, words } from '../format.js';
import { follow } from '../live.js';
import { PagedList } from '../paging.js';
import { dealTitles, showTitle } from '../titles.js';

const PAGE = 50;  // activities per page and per "Show more"

/** Each choice of "Show": its lists, and the query of each (`tomorrow`: local midnight). */
const SCOPES = {
  due: ['Due today or overdue, then upcoming', (tomorrow) => [
    ['Due today or overdue', { status: 'open', due_before: tomorrow }],
    ['Upcoming', { status: 'open', due_after: tomorrow }],
  ]],
  overdue: ['Overdue', () => [['Overdue', { status: 'overdue' }]]],
  upcoming: ['Upcoming', (tomorrow) => [['Upcoming', { status: 'open', due_after: tomorrow }]]],
  open: ['All open', () => [['Open', { status: 'open' }]]],
  done: ['Done', () => [['Done', { status: 'done' }]]],
  cancelled: ['Cancelled', () => [['Cancelled', { status: 'cancelled' }]]],
};

function startOfTomorrow() {
  const d = new Date();
  d.setDate(d.getDate() + 1);
  d.setHours(0, 0, 0, 0);
  return d.toISOString();
}

function select(id, name, label, options, value) {
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    h('select', { id, name }, options.map(([v, text]) => h('option', { value: v, selected: v === value }, text))));
}

export async function mount(root, ctx, params) {
  const scope = SCOPES[params.get('show')] ? params.get('show') : 'due';
  const type = params.get('type') || '';
  const others = ctx.me.role === 'admin' || ctx.me.role === 'manager';
  const assignee = (others && params.get('assignee')) || ctx.me.name;
  const owners = others ? await ctx.owners() : [];
  const mine = assignee === ctx.me.name;
  const titles = dealTitles(ctx);
  const title = mine ? 'My activities' : `Activities of ${assignee}`;

  const names = [...new Set([ctx.me.name, ...owners.map((o) => o.owner)])];
  const filters = h('form', {
    class: 'filters', 'aria-label': 'Activity filters',
    onchange: (event) => {
      const data = Object.fromEntries(new FormData(event.currentTarget).entries());
      ctx.go('activities', {
        show: data.show === 'due' ? '' : data.show,
        type: data.type,
        assignee: data.assignee === ctx.me.name ? '' : data.assignee,
      });
    },
    onsubmit: (event) => event.preventDefault(),
  },
  others ? select('filter-assignee', 'assignee', 'Whose', names.map((n) => [n, n === ctx.me.name ? `Mine (${n})` : n]), assignee) : null,
  select('filter-show', 'show', 'Show', Object.entries(SCOPES).map(([k, [label]]) => [k, label]), scope),
  select('filter-type', 'type', 'Type', [['', 'All types'], ...TYPES.map(([t, label]) => [t, label])], type));

  const lists = SCOPES[scope][1](startOfTomorrow()).map(([caption, query]) => ({
    caption,
    query,
    paged: new PagedList(ctx, '/v1/activities', { assignee, type, ...query }, { pageSize: PAGE }),
  }));
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading activities…'));
  fill(root,
    h('div', { class: 'view-head' }, h('h1', { id: 'view-title' }, title), filters),
    ctx.me.may_run_commands ? null
      : h('p', { class: 'read-only-note' }, 'Read-only: your role may look at activities but not change them.'),
    body);

  async function complete(activity) {
    const id = activity.deal_id;
    if (!titles.get(id)) await titles.lookUp([id], (dealId, dealTitle) => showTitle(body, dealId, dealTitle));
    // No If-Match: the list shows no deal version; an activity done or cancelled meanwhile
    // is refused by the API (409) and the message says so.
    const deal = { id, title: titles.get(id) || 'the deal' };
    try {
      const answer = await completeActivity(ctx, deal, activity);
      if (answer) ctx.notify(`“${activity.subject}” is done.`);
    } catch (error) {
      ctx.fail(error);
    }
  }

  function rows(list) {
    const open = list.query.status === 'open' || list.query.status === 'overdue';
    const writes = open && ctx.me.may_run_commands;
    const columns = ['Subject', 'Type', open ? 'Due' : 'Status', 'Deal', 'Assignee'];
    if (writes) columns.push('Complete');
    return table({
      caption: list.caption,
      scrolls: true,
      columns,
      attrs: { class: 'activities activity-list', dataset: { list: list.caption } },
      rows: list.paged.items.map((a) => {
        const cells = [
          h('span', { class: 'activity-subject', dataset: { activityId: a.id } }, a.subject, ' ', activityMarks(a)),
          typeLabel(a.type),
          open
            ? time(a.due_at, due(a.due_at))
            : [words(a.status), ' ', time(a.completed_at || a.cancelled_at, dateTime(a.completed_at || a.cancelled_at))],
          h('a', { href: `#/deal/${a.deal_id}`, dataset: { titleOf: a.deal_id } },
            titles.get(a.deal_id) || 'Deal (loading its title…)'),
          a.assignee,
        ];
        if (writes) {
          cells.push(h('button', {
            type: 'button', class: 'quiet complete', 'aria-label': `Complete ${a.subject}`,
            onclick: () => complete(a),
          }, 'Complete…'));
        }
        return cells;
      }),
    });
  }

  function render() {
    fill(body, lists.map((list) => h('section', { class: 'activity-section' },
      h('h2', {}, list.caption),
      list.paged.items.length ? rows(list) : h('p', { class: 'hint empty' }, 'Nothing here.'),
      list.paged.footer('activities', render))));
    body.setAttribute('aria-busy', 'false');
    const ids = lists.flatMap((list) => list.paged.items.map((a) => a.deal_id));
    titles.lookUp(ids, (id, dealTitle) => showTitle(body, id, dealTitle));
  }

  const live = follow(ctx, {
    load: async (minPosition) => {
      const answers = await Promise.all(lists.map((list) => list.paged.fetch(minPosition)));
      return { answers, position: Math.min(...answers.map((a) => a.position)) };
    },
    show: ({ answers }) => {
      answers.forEach((answer, i) => lists[i].paged.keep(answer));
      render();
    },
    body,
    problem,
  });
  await live.refresh(ctx.knownPosition());
  return { dispose: live.stop };
}

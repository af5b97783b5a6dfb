// Activities (calls, meetings, emails, tasks, deadlines) wherever the dashboard shows them:
// how one reads, and the dialogs that plan, complete, cancel and reschedule one. Every
// command is a command on the deal (commands.js): If-Match names the deal's version the
// page showed, and a 412 says someone else changed the deal.

import { dealCommand } from './commands.js';
import { ask, field } from './dialogs.js';
import { h } from './dom.js';
import { due, localInput } from './format.js';

const NOTE_MAX = 2000;     // the API's limit for notes, outcomes and reasons
const SUBJECT_MAX = 200;   // …and for a subject
const NAME_MAX = 100;      // …and for an assignee's name

/** The activity types, with a symbol each (decorative: the word always goes with it). */
export const TYPES = [
  ['call', 'Call', '☎'],
  ['meeting', 'Meeting', '⚇'],
  ['email', 'Email', '✉'],
  ['task', 'Task', '✓'],
  ['deadline', 'Deadline', '⚑'],
];
const BY_TYPE = new Map(TYPES.map(([type, label, symbol]) => [type, { label, symbol }]));

export function typeName(type) {
  return (BY_TYPE.get(type) || { label: type }).label;
}

/** The type as a symbol and its word: "☎ Call". */
export function typeLabel(type) {
  const known = BY_TYPE.get(type) || { label: type, symbol: '•' };
  return h('span', { class: `activity-type type-${type}` },
    h('span', { class: 'symbol', 'aria-hidden': 'true' }, known.symbol), ' ', known.label);
}

export function overdueBadge() {
  return h('span', { class: 'badge overdue', title: 'Open and due before now' }, 'Overdue');
}

/** The stage a checklist item came from, by its name now (its id if it is gone). */
function stageName(activity, pipelines) {
  const origin = activity.checklist;
  const pipeline = pipelines.find((p) => p.id === origin.pipeline_id);
  const stages = pipeline ? [...pipeline.stages, ...(pipeline.removed_stages || [])] : [];
  const stage = stages.find((s) => s.id === origin.stage_id);
  return stage ? stage.name : origin.stage_id;
}

/** Marks beside an activity: overdue, from a stage's checklist, waived. */
export function activityMarks(activity, pipelines = []) {
  return [
    activity.overdue ? overdueBadge() : null,
    activity.checklist
      ? h('span', {
        class: 'badge checklist',
        title: `Added by the checklist of the stage (version ${activity.checklist.version})`,
      }, `Checklist: ${stageName(activity, pipelines)}`)
      : null,
    activity.waived ? h('span', { class: 'badge waived' }, 'Waived') : null,
  ].filter(Boolean);
}

/** A board card's line about the deal's next activity (or that nothing is planned). */
export function nextActivityLine(deal) {
  const next = deal.next_activity;
  if (!next) {
    return deal.status === 'open'
      ? h('p', { class: 'card-next none' }, 'No next step planned')
      : null;
  }
  return h('p', {
    class: `card-next${next.overdue ? ' is-overdue' : ''}`,
    dataset: { activityId: next.id, overdue: String(next.overdue) },
  },
  h('span', { class: 'visually-hidden' }, 'Next: '),
  typeLabel(next.type), ': ',
  h('span', { class: 'card-next-subject' }, next.subject),
  ' · ', h('time', { datetime: next.due_at || '' }, due(next.due_at)),
  next.overdue ? [' ', overdueBadge()] : null);
}

function dueAt(value) {
  const at = new Date(value);
  if (Number.isNaN(at.getTime())) throw new Error('Choose a date and time for when it is due.');
  return at.toISOString();
}

function tomorrowMorning() {
  const d = new Date();
  d.setDate(d.getDate() + 1);
  d.setHours(9, 0, 0, 0);
  return d;
}

/** Reps assign activities only to themselves (the API refuses others). */
function mayAssignOthers(ctx) {
  return ctx.me.role !== 'rep';
}

/** The assignee control: a name, suggesting the known owners; fixed for reps. */
function assigneeField(ctx, id, value, owners) {
  const free = mayAssignOthers(ctx);
  const listId = `${id}-assignees`;
  const input = h('input', {
    id: `${id}-assignee`, name: 'assignee', required: true, maxlength: NAME_MAX,
    value, readonly: !free, list: free ? listId : null, autocomplete: 'off',
  });
  const hint = free ? 'Anyone; the deal’s owner unless you choose another.' : 'Reps plan activities for themselves.';
  return [
    field('Assignee', input, hint),
    free ? h('datalist', { id: listId }, owners.map((o) => h('option', { value: o.owner }))) : null,
  ];
}

/** Ask what to plan on the deal, then POST /v1/deals/{id}/activities. */
export async function planActivity(ctx, deal) {
  const owners = await ctx.owners().catch(() => []);
  return ask({
    title: `Plan an activity on “${deal.title}”`,
    submitLabel: 'Plan it',
    fields: (id) => [
      field('Type', h('select', { id: `${id}-type`, name: 'type', required: true },
        TYPES.map(([type, label]) => h('option', { value: type }, label)))),
      field('Subject', h('input', {
        id: `${id}-subject`, name: 'subject', required: true, maxlength: SUBJECT_MAX,
      })),
      field('Due', h('input', {
        id: `${id}-due`, name: 'due', type: 'datetime-local', required: true,
        value: localInput(tomorrowMorning()),
      }), 'In your time zone.'),
      assigneeField(ctx, id, mayAssignOthers(ctx) ? deal.owner : ctx.me.name, owners),
      field('Note (optional)', h('textarea', { id: `${id}-note`, name: 'note', rows: 3, maxlength: NOTE_MAX })),
    ],
    submit: (values) => dealCommand(ctx, deal, 'activities', {
      type: values.type,
      subject: values.subject.trim(),
      due_at: dueAt(values.due),
      assignee: values.assignee.trim() || null,
      note: values.note || null,
    }),
  });
}

function activityPath(activity, verb = '') {
  return `activities/${activity.id}${verb ? `/${verb}` : ''}`;
}

/** Ask for the outcome, then complete the activity. */
export function completeActivity(ctx, deal, activity) {
  return ask({
    title: `Complete “${activity.subject}”`,
    intro: `${typeName(activity.type)} on “${deal.title}”.`,
    submitLabel: 'Mark as done',
    fields: (id) => [
      field('Outcome (optional)', h('textarea', {
        id: `${id}-outcome`, name: 'outcome', rows: 3, maxlength: NOTE_MAX,
      }), 'What came of it.'),
    ],
    submit: ({ outcome }) => dealCommand(ctx, deal, activityPath(activity, 'complete'),
      { outcome: outcome || null }),
  });
}

/** Ask why, then cancel the activity. */
export function cancelActivity(ctx, deal, activity) {
  return ask({
    title: `Cancel “${activity.subject}”`,
    intro: 'A cancelled activity stays in the deal’s list and its history.',
    submitLabel: 'Cancel the activity',
    fields: (id) => [
      field('Reason (optional)', h('textarea', {
        id: `${id}-reason`, name: 'reason', rows: 2, maxlength: NOTE_MAX,
      })),
    ],
    submit: ({ reason }) => dealCommand(ctx, deal, activityPath(activity, 'cancel'),
      { reason: reason || null }),
  });
}

/** Ask for a new due time (and assignee), then PATCH the activity with what changed. */
export async function rescheduleActivity(ctx, deal, activity) {
  const owners = await ctx.owners().catch(() => []);
  const was = activity.due_at ? localInput(new Date(activity.due_at)) : '';
  return ask({
    title: `Reschedule “${activity.subject}”`,
    submitLabel: 'Save',
    fields: (id) => [
      field('Due', h('input', {
        id: `${id}-due`, name: 'due', type: 'datetime-local', required: true,
        value: was || localInput(tomorrowMorning()),
      }), 'In your time zone.'),
      assigneeField(ctx, id, activity.assignee, owners),
    ],
    submit: ({ due: when, assignee }) => {
      const body = {};
      if (when !== was) body.due_at = dueAt(when);
      if (assignee.trim() && assignee.trim() !== activity.assignee) body.assignee = assignee.trim();
      if (!Object.keys(body).length) return Promise.resolve({ unchanged: true });
      return dealCommand(ctx, deal, activityPath(activity), body, { method: 'PATCH' });
    },
  });
}

/** Ask for a reason, then waive the open checklist items of the deal's stage. */
export function waiveChecklist(ctx, deal) {
  return ask({
    title: `Waive the checklist of “${deal.title}”`,
    intro: `The open checklist items of ${deal.stage.name} are cancelled as waived, and the deal may leave the stage.`,
    submitLabel: 'Waive',
    fields: (id) => [
      field('Reason', h('textarea', {
        id: `${id}-reason`, name: 'reason', rows: 2, maxlength: NOTE_MAX, required: true,
      })),
    ],
    submit: ({ reason }) => dealCommand(ctx, deal, 'checklist/waive', { reason }),
  });
}

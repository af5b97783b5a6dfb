// Automations: a pipeline's rules (when this happens, do that) in words, with how often
// each fired; admins and managers create, pause, resume and delete them. A rule's own page
// (#/automations/ID) shows it and its firing history: when, which deal, why, and what each
// action did.

import { typeName, TYPES } from '../activities.js';
import { ApiError } from '../api.js';
import { ask } from '../dialogs.js';
import { h, facts, fill, problem, table, time } from '../dom.js';
import { filterBar, pipelineViewStart } from '../filters.js';
import { count, dateTime, words } from '../format.js';
import { follow } from '../live.js';
import { PagedList } from '../paging.js';
import { dealTitles, showTitle } from '../titles.js';

const PAGE = 50;           // rules, and firings, per page and per "Show more"
const MAX_ACTIONS = 10;    // the API's limit of actions per rule
const NAME_MAX = 100;      // …of a rule's name
const TEXT_MAX = 2000;     // …of its description
const SUBJECT_MAX = 200;   // …of an activity's subject
const MAX_DAYS = 365;      // days asked for in the form, at most

const TRIGGERS = [
  ['enters_stage', 'A deal enters a stage'],
  ['rotting', 'A deal stays too long in a stage (rotting)'],
  ['stale', 'A deal goes stale (no activity)'],
  ['activity_overdue', 'An activity becomes overdue'],
  ['won', 'A deal is won'],
  ['lost', 'A deal is lost'],
  ['schedule', 'On a schedule'],
];
const ACTIONS = [
  ['create_activity', 'Plan an activity'],
  ['notify', 'Notify (the firing goes to webhook subscribers)'],
  ['reassign', 'Reassign the deal'],
  ['digest', 'Send a report to a webhook (schedules only)'],
];
const REPORTS = ['funnel', 'stage-durations', 'forecast', 'win-rate', 'lost-reasons', 'owners', 'stale-deals', 'activities'];

/** Only admins and managers write rules (as /v1/me says, when it says). */
function mayWrite(me) {
  if (typeof me.may_manage_automations === 'boolean') return me.may_manage_automations;
  return me.role === 'admin' || me.role === 'manager';
}

function stageName(pipeline, id) {
  const stage = pipeline && pipeline.stages.find((s) => s.id === id);
  return stage ? stage.name : id;
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

/** A trigger in words: "A deal stays in Negotiation longer than 14 days". */
export function triggerWords(trigger, pipeline) {
  switch (trigger.type) {
    case 'enters_stage': return `A deal enters ${stageName(pipeline, trigger.stage)}`;
    case 'rotting': {
      const where = trigger.stage ? stageName(pipeline, trigger.stage) : 'any stage';
      const limit = trigger.days ? plural(trigger.days, 'day', 'days') : 'the stage allows';
      return `A deal stays in ${where} longer than ${limit}`;
    }
    case 'stale': {
      const days = pipeline && pipeline.stale_after_days;
      return `A deal goes stale: no activity for ${days ? plural(days, 'day', 'days') : 'as long as the pipeline allows'}`;
    }
    case 'activity_overdue': return 'An activity on a deal becomes overdue';
    case 'won': return 'A deal is won';
    case 'lost': return 'A deal is lost';
    case 'schedule': return `On the schedule “${trigger.cron}” (${trigger.timezone || 'UTC'})`;
    default: return `${words(String(trigger.type))} ${JSON.stringify(trigger)}`;
  }
}

/** An action in words: "Plan a call “Call the customer” due 1 day later, for the deal's owner". */
export function actionWords(action) {
  switch (action.type) {
    case 'create_activity': {
      const later = action.due_in_days ? `${plural(action.due_in_days, 'day', 'days')} later` : 'at once';
      return `Plan a ${typeName(action.activity_type).toLowerCase()} “${action.subject}” due ${later}, `
        + `for ${action.assignee || 'the deal’s owner'}`;
    }
    case 'notify': return 'Notify the webhook subscribers';
    case 'reassign': return `Reassign the deal to ${action.owner}`;
    case 'digest': return `Send the ${action.report} report to webhook ${String(action.webhook_id).slice(0, 8)}`;
    default: return `${words(String(action.type))} ${JSON.stringify(action)}`;
  }
}

/** What a firing's action did, in words (a refusal in the domain's own words). */
function resultWords(result) {
  const what = words(String(result.type));
  if (result.ok === false) return `${what}: not done (${result.message || result.error})`;
  switch (result.type) {
    case 'create_activity': return `Planned an activity for ${result.assignee}`;
    case 'notify': return 'Notified';
    case 'reassign': return `Reassigned to ${result.owner}`;
    case 'digest': return `Sent the ${result.report} report`;
    default: return what;
  }
}

function staleRule(rule) {
  return `Someone else changed the rule “${rule.name}” after this page loaded it, so your `
    + 'change was not made. The rule has been reloaded: check it and try again.';
}

/** A command on a rule with If-Match; its answer's position goes to the feed. */
async function ruleCommand(ctx, rule, verb, { method = 'POST', body } = {}) {
  const path = `/v1/automations/${rule.id}${verb ? `/${verb}` : ''}`;
  try {
    const answer = await ctx.api.request(method, path, { body, ifMatch: rule.version });
    if (answer) ctx.feed.advance(answer.position);
    return answer;
  } catch (error) {
    if (error.status === 412) throw new ApiError(412, error.code, staleRule(rule), error.details);
    throw error;
  }
}

function statusBadge(rule) {
  return h('span', { class: `status status-${rule.status}` }, words(rule.status));
}

/** Pause or resume, and delete (after asking), for one rule; `done()` after each. */
function ruleButtons(ctx, rule, done) {
  const run = async (verb, text) => {
    try {
      await ruleCommand(ctx, rule, verb);
      ctx.notify(text);
    } catch (error) {
      ctx.fail(error);
    }
    done(verb);
  };
  const remove = async () => {
    const answer = await ask({
      title: `Delete the rule “${rule.name}”`,
      intro: 'It never fires again; what it did stays in the history of the deals.',
      submitLabel: 'Delete',
      fields: () => [],
      submit: async () => {
        await ruleCommand(ctx, rule, '', { method: 'DELETE' });
        return { deleted: true };
      },
    });
    if (answer) {
      ctx.notify(`Deleted the rule “${rule.name}”.`);
      done('delete');
    }
  };
  return h('div', { class: 'row-actions' },
    rule.status === 'active'
      ? h('button', {
        type: 'button', class: 'quiet pause', 'aria-label': `Pause ${rule.name}`,
        onclick: () => run('pause', `Paused “${rule.name}”.`),
      }, 'Pause')
      : h('button', {
        type: 'button', class: 'quiet resume', 'aria-label': `Resume ${rule.name}`,
        onclick: () => run('resume', `Resumed “${rule.name}”.`),
      }, 'Resume'),
    h('button', {
      type: 'button', class: 'quiet delete', 'aria-label': `Delete ${rule.name}`, onclick: remove,
    }, 'Delete…'));
}

// --- the form of a new rule -----------------------------------------------------------

function control(id, label, input, hint) {
  input.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) input.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field', dataset: { for: id } },
    h('label', { for: id }, label), input,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null);
}

function options(pairs, value) {
  return pairs.map(([v, text]) => h('option', { value: v, selected: v === value }, text));
}

function show(el, visible) {
  el.hidden = !visible;
}

/** One action's fieldset; `read()` gives the action's JSON from what is shown. */
function actionFields(n, onRemove) {
  const id = (name) => `rule-action-${n}-${name}`;
  const type = h('select', {}, options(ACTIONS, 'create_activity'));
  const activityType = h('select', {}, options(TYPES.map(([t, label]) => [t, label]), 'call'));
  const subject = h('input', { maxlength: SUBJECT_MAX });
  const dueIn = h('input', { type: 'number', min: 0, max: MAX_DAYS, value: 1 });
  const assignee = h('input', { maxlength: NAME_MAX, autocomplete: 'off' });
  const owner = h('input', { maxlength: NAME_MAX, autocomplete: 'off' });
  const report = h('select', {}, options(REPORTS.map((r) => [r, words(r.replace(/-/g, '_'))]), 'funnel'));
  const webhook = h('input', { maxlength: 36, autocomplete: 'off', spellcheck: 'false' });
  const activity = h('div', { class: 'row' },
    control(id('activity-type'), 'Activity type', activityType),
    control(id('subject'), 'Subject', subject),
    control(id('due'), 'Due after (days)', dueIn),
    control(id('assignee'), 'Assignee (optional)', assignee, 'Empty: the deal’s owner.'));
  const reassign = h('div', { class: 'row' }, control(id('owner'), 'New owner', owner));
  const digest = h('div', { class: 'row' },
    control(id('report'), 'Report', report),
    control(id('webhook'), 'Webhook id', webhook));
  const sync = () => {
    show(activity, type.value === 'create_activity');
    show(reassign, type.value === 'reassign');
    show(digest, type.value === 'digest');
  };
  type.addEventListener('change', sync);
  sync();
  const element = h('fieldset', { class: 'rule-action' },
    h('legend', {}, `Action ${n}`),
    h('div', { class: 'row' },
      control(id('type'), 'Do', type),
      onRemove ? h('button', {
        type: 'button', class: 'quiet', 'aria-label': `Remove action ${n}`, onclick: onRemove,
      }, 'Remove') : null),
    activity, reassign, digest);
  const read = () => {
    switch (type.value) {
      case 'create_activity':
        return {
          type: 'create_activity', activity_type: activityType.value, subject: subject.value.trim(),
          due_in_days: Number(dueIn.value || 0), assignee: assignee.value.trim() || null,
        };
      case 'reassign': return { type: 'reassign', owner: owner.value.trim() };
      case 'digest': return { type: 'digest', report: report.value, params: {}, webhook_id: webhook.value.trim() };
      default: return { type: type.value };
    }
  };
  return { element, read };
}

function ruleForm(ctx, pipeline, created) {
  const stages = pipeline.stages.map((s) => [s.id, s.name]);
  const name = h('input', { required: true, maxlength: NAME_MAX });
  const description = h('textarea', { rows: 2, maxlength: TEXT_MAX });
  const trigger = h('select', {}, options(TRIGGERS, 'enters_stage'));
  const stage = h('select', {}, options(stages, stages.length ? stages[0][0] : ''));
  const rotStage = h('select', {}, options([['', 'Any stage'], ...stages], ''));
  const days = h('input', { type: 'number', min: 1, max: MAX_DAYS });
  const cron = h('input', { value: '0 8 * * MON', spellcheck: 'false', autocomplete: 'off' });
  const zone = h('input', {
    value: Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC', autocomplete: 'off',
  });
  const stageField = control('rule-stage', 'Stage', stage);
  const rotting = h('div', { class: 'row' },
    control('rule-rot-stage', 'In stage', rotStage),
    control('rule-days', 'Days (optional)', days, 'Empty: the stage’s own rotting limit.'));
  const schedule = h('div', { class: 'row' },
    control('rule-cron', 'Schedule (cron)', cron, 'Minute, hour, day, month, weekday: 0 8 * * MON is Mondays at 8:00.'),
    control('rule-timezone', 'Time zone', zone));
  const syncTrigger = () => {
    show(stageField, trigger.value === 'enters_stage');
    show(rotting, trigger.value === 'rotting');
    show(schedule, trigger.value === 'schedule');
  };
  trigger.addEventListener('change', syncTrigger);
  syncTrigger();

  const actions = [];
  const list = h('div', { class: 'rule-actions' });
  const add = h('button', { type: 'button', class: 'quiet add-action' }, 'Add an action');
  const redraw = () => {
    actions.forEach((a, i) => {
      a.element.querySelector('legend').textContent = `Action ${i + 1}`;
    });
    add.hidden = actions.length >= MAX_ACTIONS;
  };
  const addAction = () => {
    const n = actions.length ? Math.max(...actions.map((a) => a.n)) + 1 : 1;
    const entry = { n };
    Object.assign(entry, actionFields(n, n === 1 ? null : () => {
      actions.splice(actions.indexOf(entry), 1);
      entry.element.remove();
      redraw();
      add.focus();
    }));
    actions.push(entry);
    list.append(entry.element);
    redraw();
    return entry;
  };
  add.addEventListener('click', () => {
    const entry = addAction();
    entry.element.querySelector('select').focus();
  });
  addAction();

  const error = h('p', { class: 'form-error', role: 'alert', id: 'rule-error' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create the rule');
  const readTrigger = () => {
    switch (trigger.value) {
      case 'enters_stage': return { type: 'enters_stage', stage: stage.value };
      case 'rotting': {
        const t = { type: 'rotting' };
        if (rotStage.value) t.stage = rotStage.value;
        if (days.value) t.days = Number(days.value);
        return t;
      }
      case 'schedule': return { type: 'schedule', cron: cron.value.trim(), timezone: zone.value.trim() };
      default: return { type: trigger.value };
    }
  };
  const form = h('form', {
    class: 'rule-form', 'aria-labelledby': 'rule-form-title', id: 'rule-form',
    onsubmit: async (event) => {
      event.preventDefault();
      error.textContent = '';
      submit.disabled = true;
      try {
        const rule = await ctx.api.post('/v1/automations', {
          name: name.value.trim(),
          pipeline_id: pipeline.id,
          description: description.value.trim() || null,
          trigger: readTrigger(),
          actions: actions.map((a) => a.read()),
        });
        ctx.feed.advance(rule.position);
        created(rule);
      } catch (failure) {
        error.textContent = failure.message || String(failure);
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('h2', { id: 'rule-form-title' }, 'New rule'),
  h('div', { class: 'row' },
    control('rule-name', 'Name', name),
    control('rule-description', 'Description (optional)', description)),
  h('fieldset', {}, h('legend', {}, 'When'),
    h('div', { class: 'row' }, control('rule-trigger', 'Trigger', trigger), stageField),
    rotting, schedule),
  h('fieldset', {}, h('legend', {}, 'Then'), list, add),
  error,
  h('div', { class: 'dialog-buttons' }, submit));
  return form;
}

// --- the list of rules ----------------------------------------------------------------

async function mountList(root, ctx, params) {
  const start = await pipelineViewStart(ctx, params, root, 'Automations');
  if (!start) return {};
  const { pipelines, pipeline } = start;
  const status = ['active', 'paused'].includes(params.get('status')) ? params.get('status') : '';
  const writes = mayWrite(ctx.me);
  const list = new PagedList(ctx, '/v1/automations', { pipeline_id: pipeline.id, status }, { pageSize: PAGE });
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading the rules…'));
  const formBox = h('div', { id: 'rule-form-box', hidden: true });
  const toggle = writes
    ? h('button', {
      type: 'button', class: 'primary new-rule', 'aria-expanded': 'false', 'aria-controls': 'rule-form-box',
    }, 'New rule…')
    : null;

  const bar = filterBar({
    label: 'Automation filters', fields: ['pipeline'], pipelines, values: { pipeline: pipeline.id },
    apply: (values) => ctx.go('automations', { pipeline: values.pipeline, status }),
  });
  bar.append(h('div', { class: 'field' },
    h('label', { for: 'filter-status' }, 'Status'),
    h('select', {
      id: 'filter-status', name: 'status',
      onchange: (event) => ctx.go('automations', { pipeline: pipeline.id, status: event.target.value }),
    }, options([['', 'Active and paused'], ['active', 'Active'], ['paused', 'Paused']], status))));

  fill(root,
    h('div', { class: 'view-head' }, h('h1', { id: 'view-title' }, `Automations: ${pipeline.name}`), bar),
    h('p', { class: 'hint' },
      'Each rule watches the pipeline: when its trigger happens to a deal, its actions run '
      + 'through the deal’s own commands (so the pipeline’s rules hold), and the firing is recorded.'),
    writes
      ? h('div', { class: 'actions' }, toggle)
      : h('p', { class: 'read-only-note' }, 'Read-only: only admins and managers create or change rules.'),
    formBox,
    body);

  const live = list.follow(body, render);

  const reload = (verb, rule) => {
    if (verb === 'delete') {  // a deletion answers no position: drop the row here
      list.items = list.items.filter((r) => r.id !== rule.id);
      render();
    } else live.refresh(ctx.knownPosition());
  };

  if (writes) {
    toggle.addEventListener('click', () => {
      const open = formBox.hidden;
      formBox.hidden = !open;
      toggle.setAttribute('aria-expanded', String(open));
      if (open) {
        fill(formBox, ruleForm(ctx, pipeline, (rule) => {
          ctx.notify(`Created the rule “${rule.name}”.`);
          formBox.hidden = true;
          toggle.setAttribute('aria-expanded', 'false');
          formBox.replaceChildren();
          toggle.focus();
          live.refresh(ctx.knownPosition());
        }));
        formBox.querySelector('input').focus();
      } else formBox.replaceChildren();
    });
  }

  function render() {
    const columns = ['Rule', 'When', 'Then', 'Status', 'Fired', 'Last fired'];
    if (writes) columns.push('Change');
    fill(body, list.view({
      caption: 'Rules, oldest first',
      columns,
      numeric: [4],
      id: 'table-automations',
      what: 'rules',
      empty: status ? `No ${status} rules on this pipeline.` : 'No rules on this pipeline yet.',
      row: (rule) => [
        h('a', { href: `#/automations/${rule.id}` }, rule.name),
        triggerWords(rule.trigger, pipeline),
        h('ul', { class: 'plain' }, rule.actions.map((a) => h('li', {}, actionWords(a)))),
        statusBadge(rule),
        count(rule.fired_count),
        rule.last_fired_at ? time(rule.last_fired_at, dateTime(rule.last_fired_at)) : 'never',
        writes ? ruleButtons(ctx, rule, (verb) => reload(verb, rule)) : null,
      ].slice(0, columns.length),
    }, render));
    body.setAttribute('aria-busy', 'false');
  }

  await live.refresh(ctx.knownPosition());
  return { dispose: live.stop };
}

// --- one rule and its firings ---------------------------------------------------------

async function mountRule(root, ctx, id) {
  const pipelines = await ctx.pipelines();
  const writes = mayWrite(ctx.me);
  const titles = dealTitles(ctx);
  const firings = new PagedList(ctx, `/v1/automations/${id}/firings`, {}, { pageSize: PAGE });
  const body = h('div', { 'aria-busy': 'true' }, h('p', {}, 'Loading the rule…'));
  fill(root, body);
  let rule = null;
  let deleted = false;

  async function load(minPosition) {
    const [one, fired] = await Promise.all([
      ctx.api.get(`/v1/automations/${id}`, { min_position: minPosition }, { signal: ctx.signal }),
      firings.fetch(minPosition),
    ]);
    return { rule: one, fired, position: fired.position };
  }

  function render() {
    const pipeline = pipelines.find((p) => p.id === rule.pipeline_id);
    const rows = firings.items.map((f) => [
      time(f.occurred_at, dateTime(f.occurred_at)),
      f.deal_id
        ? h('a', { href: `#/deal/${f.deal_id}`, dataset: { titleOf: f.deal_id } }, titles.get(f.deal_id) || 'Deal (loading its title…)')
        : 'no deal (a schedule)',
      f.reason,
      h('ul', { class: 'plain' }, (f.actions || []).map((r) => h('li', { class: r.ok === false ? 'failed' : null }, resultWords(r)))),
    ]);
    fill(body,
      h('p', { class: 'crumbs' }, h('a', { href: `#/automations?pipeline=${rule.pipeline_id}` }, `← Automations: ${pipeline ? pipeline.name : 'pipeline'}`)),
      h('h1', { id: 'view-title' }, rule.name, ' ', deleted ? h('span', { class: 'status' }, 'Deleted') : statusBadge(rule)),
      rule.description ? h('p', {}, rule.description) : null,
      facts([
        ['When', triggerWords(rule.trigger, pipeline)],
        ['Then', h('ul', { class: 'plain' }, rule.actions.map((a) => h('li', {}, actionWords(a))))],
        ['Fired', count(rule.fired_count), { dataset: { field: 'fired', value: rule.fired_count } }],
        ['Last fired', rule.last_fired_at ? dateTime(rule.last_fired_at) : 'never'],
        ['Created', `${dateTime(rule.created_at)} by ${rule.created_by}`],
        ['Changed', dateTime(rule.updated_at)],
        ['Version', String(rule.version)],
      ], { 'aria-label': 'The rule' }),
      writes && !deleted ? ruleButtons(ctx, rule, (verb) => {
        if (verb === 'delete') {
          deleted = true;
          ctx.go('automations', { pipeline: rule.pipeline_id });
        } else live.refresh(ctx.knownPosition());
      }) : null,
      h('section', { 'aria-labelledby': 'firings-title' },
        h('h2', { id: 'firings-title' }, 'Firings, oldest first'),
        rows.length
          ? table({
            caption: 'When the rule fired, on which deal, why, and what each action did',
            scrolls: true, columns: ['When', 'Deal', 'Why', 'What it did'], rows, attrs: { id: 'table-firings' },
          })
          : h('p', { class: 'empty' }, 'It has not fired yet.'),
        firings.footer('firings', render)));
    body.setAttribute('aria-busy', 'false');
    titles.lookUp(firings.items.map((f) => f.deal_id), (dealId, title) => showTitle(body, dealId, title));
  }

  const live = follow(ctx, {
    load,
    show: (answer) => {
      rule = answer.rule;
      firings.keep(answer.fired);
      render();
    },
    body,
    problem,
  });
  await live.refresh(ctx.knownPosition());
  return { dispose: live.stop };
}

export function mount(root, ctx, params) {
  const id = params.get('id');
  return id ? mountRule(root, ctx, id) : mountList(root, ctx, params);
}

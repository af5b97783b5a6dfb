// The pipeline switcher and the owner, team and period filters the views share. Filters
// live in the address (#/board?pipeline=…&owner=…), so a view can be bookmarked and sent.

import { fill, h } from './dom.js';

const LAST_PIPELINE = 'dealtrail.pipeline';

/** The pipeline asked for, else the one used last in this tab, else the first. */
export function choosePipeline(pipelines, wanted) {
  const id = wanted || sessionStorage.getItem(LAST_PIPELINE);
  const found = pipelines.find((p) => p.id === id) || pipelines[0] || null;
  if (found) sessionStorage.setItem(LAST_PIPELINE, found.id);
  return found;
}

/** Owners' names and teams from GET /v1/owners (teams as they are now). */
export function teamsOf(owners) {
  return [...new Set(owners.map((o) => o.team).filter(Boolean))].sort();
}

export function ownersInTeam(owners, team) {
  return owners.filter((o) => o.team === team).map((o) => o.owner);
}

function select(id, name, label, options, value, onchange) {
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    h('select', { id, name, onchange }, options.map(([optionValue, text]) => h('option', {
      value: optionValue, selected: optionValue === value,
    }, text))));
}

/** The day after an ISO date: a period "to" the reader means inclusively. */
export function dayAfter(isoDate) {
  const d = new Date(`${isoDate}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

/**
 * A toolbar of filters; `fields` picks from pipeline, owner, team, from, to. Choices
 * apply at once (the dates with the Apply button) through `apply(values)`.
 */
export function filterBar({ label, fields, pipelines, owners = [], extraOwners = [], values, apply }) {
  const current = { ...values };
  const change = (name) => (event) => {
    current[name] = event.target.value;
    if (name === 'owner' && current.owner) current.team = '';
    if (name === 'team' && current.team) current.owner = '';
    if (!['from', 'to'].includes(name)) apply(current);
  };
  const controls = [];
  if (fields.includes('pipeline')) {
    controls.push(select('filter-pipeline', 'pipeline', 'Pipeline',
      pipelines.map((p) => [p.id, p.name]), values.pipeline, change('pipeline')));
  }
  if (fields.includes('owner')) {
    const names = [...new Set([...owners.map((o) => o.owner), ...extraOwners])].sort();
    controls.push(select('filter-owner', 'owner', 'Owner',
      [['', 'All owners'], ...names.map((n) => [n, n])], values.owner || '', change('owner')));
  }
  if (fields.includes('team')) {
    controls.push(select('filter-team', 'team', 'Team',
      [['', 'All teams'], ...teamsOf(owners).map((t) => [t, t])], values.team || '', change('team')));
  }
  const period = fields.includes('from');
  if (period) {
    controls.push(h('div', { class: 'field' },
      h('label', { for: 'filter-from' }, 'From'),
      h('input', { id: 'filter-from', name: 'from', type: 'date', value: values.from || '', onchange: change('from') })));
    controls.push(h('div', { class: 'field' },
      h('label', { for: 'filter-to' }, 'To (inclusive)'),
      h('input', { id: 'filter-to', name: 'to', type: 'date', value: values.to || '', onchange: change('to') })));
    controls.push(h('button', { type: 'submit' }, 'Apply period'));
  }
  return h('form', {
    class: 'filters',
    'aria-label': label,
    onsubmit: (event) => { event.preventDefault(); apply(current); },
  }, controls);
}

/**
 * What every pipeline view starts with: the pipelines, the owners and the pipeline to
 * show; null (after saying so in `root`) when there is no pipeline yet.
 */
export async function pipelineViewStart(ctx, params, root, title) {
  let [pipelines, owners] = await Promise.all([ctx.pipelines(), ctx.owners()]);
  const wanted = params.get('pipeline');
  if (wanted && !pipelines.some((p) => p.id === wanted)) pipelines = await ctx.pipelines(true);
  const pipeline = choosePipeline(pipelines, wanted);
  if (!pipeline) {
    fill(root, h('h1', { id: 'view-title' }, title),
      h('p', {}, 'There is no pipeline yet: an admin or manager defines one first.'));
    return null;
  }
  return { pipelines, owners, pipeline };
}

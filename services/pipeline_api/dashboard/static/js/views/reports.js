// Reports: funnel, stage durations, forecast, win rate and lost reasons, and the owners
// table, each from its /v1/reports route with the same filters, each with a chart (where
// a picture helps), the figures as a table, and a CSV download. Money is shown in the
// currency each row and summary carries, one currency apart from another, never added.

import { barChart, chartBox } from '../charts.js';
import { downloadCsv } from '../download.js';
import { h, facts, fill, problem, table } from '../dom.js';
import { dayAfter, filterBar, pipelineViewStart } from '../filters.js';
import { byCurrency, count, decimal, money, moneyPerCurrency, percent, words } from '../format.js';

const compactFormat = new Intl.NumberFormat(undefined, { notation: 'compact' });
const compact = (value) => compactFormat.format(value);

const REFRESH_MS = 10000;  // reports reload at most this often on live changes

const SECTIONS = [
  { report: 'funnel', title: 'Funnel', draw: funnel },
  { report: 'stage-durations', title: 'Stage durations', draw: stageDurations },
  { report: 'forecast', title: 'Forecast by month', draw: forecast },
  { report: 'win-rate', title: 'Win rate', draw: winRate },
  { report: 'lost-reasons', title: 'Lost reasons', draw: lostReasons },
  { report: 'owners', title: 'Owners', draw: owners },
];

/** A chart (`id`, named `label`) in its box. */
function plot(chart, { id, label, ...spec }) {
  const { canvas, box } = chartBox(id, label);
  chart(canvas, spec);
  return box;
}

/** A chart and, as its text equivalent, the same figures as a table. */
function figure(chart, chartSpec, tableSpec) {
  return [plot(chart, chartSpec), table({ scrolls: true, ...tableSpec })];
}

function funnel(answer, { chart }) {
  const rows = answer.rows;
  return figure(chart, {
    id: 'chart-funnel',
    label: 'Funnel: deals that entered each stage, and of those, won',
    labels: rows.map((r) => r.stage_name),
    series: [
      { label: 'Entered', data: rows.map((r) => r.entered) },
      { label: 'Won afterwards', data: rows.map((r) => r.won) },
    ],
    horizontal: true,
    axisLabel: 'Deals',
  }, {
    caption: 'Funnel per stage',
    columns: ['Stage', 'Entered', 'Advanced', 'Lost here', 'Won', 'To next stage', 'To won'],
    numeric: [1, 2, 3, 4, 5, 6],
    rows: rows.map((r) => [r.stage_name, count(r.entered), count(r.advanced), count(r.lost_here),
      count(r.won), percent(r.conversion_to_next), percent(r.conversion_to_won)]),
    attrs: { id: 'table-funnel' },
  });
}

function stageDurations(answer, { chart }) {
  const rows = answer.rows;
  const name = (r) => r.stage_name + (r.removed ? ' (removed)' : '');
  return figure(chart, {
    id: 'chart-stage-durations',
    label: 'Median and 90th percentile days per stage',
    labels: rows.map(name),
    series: [
      { label: 'Median days', data: rows.map((r) => r.median_days) },
      { label: '90th percentile days', data: rows.map((r) => r.p90_days) },
    ],
    axisLabel: 'Days',
  }, {
    caption: 'Time in each stage (business time, completed visits)',
    columns: ['Stage', 'Visits', 'Completed', 'Still open', 'Mean days', 'Median days', '90th percentile days'],
    numeric: [1, 2, 3, 4, 5, 6],
    rows: rows.map((r) => [name(r), count(r.visits), count(r.completed), count(r.open),
      decimal(r.mean_days), decimal(r.median_days), decimal(r.p90_days)]),
  });
}

function bucketName(bucket) {
  if (bucket === 'overdue') return 'Overdue';
  if (bucket === 'no date') return 'No date';
  return bucket;
}

function forecast(answer, { chart }) {
  const rows = answer.rows;
  const s = answer.summary;
  const months = (group) => group.map((r) => bucketName(r.bucket));
  return [
    facts([
      ['Open value', moneyPerCurrency(s.open_value)],
      ['Weighted value', moneyPerCurrency(s.weighted_value)],
      ['Won value', moneyPerCurrency(s.won_value)],
    ], { class: 'facts inline' }),
    // A chart per currency: amounts in different currencies share no axis.
    [...byCurrency(rows)].map(([currency, group]) => plot(chart, {
      id: `chart-forecast-${currency}`,
      label: `Open, weighted and won value by month, in ${currency}`,
      labels: months(group),
      series: [
        { label: 'Open value', data: group.map((r) => Number(r.open_value)) },
        { label: 'Weighted value', data: group.map((r) => Number(r.weighted_value)) },
        { label: 'Won value', data: group.map((r) => Number(r.won_value)) },
      ],
      axisLabel: currency,
      tick: compact,
    })),
    table({
      scrolls: true,
      caption: 'By expected close month (won: by month won)',
      columns: ['Month', 'Open deals', 'Open value', 'Weighted value', 'Won deals', 'Won value'],
      numeric: [1, 2, 3, 4, 5],
      rows: rows.map((r) => [bucketName(r.bucket), count(r.open_count), money(r.open_value, r.currency),
        money(r.weighted_value, r.currency), count(r.won_count), money(r.won_value, r.currency)]),
      attrs: { id: 'table-forecast' },
    }),
  ];
}

function winRate(answer) {
  const s = answer.summary;
  const groups = answer.rows.filter((r) => r.dimension !== 'overall');
  return [
    facts([['Won', count(s.won)], ['Lost', count(s.lost)], ['Win rate', percent(s.win_rate)]],
      { class: 'facts inline' }),
    table({
      scrolls: true,
      caption: 'Win rate by owner, team, region and stage at closing',
      columns: ['Group', 'Won', 'Lost', 'Win rate'],
      numeric: [1, 2, 3],
      rows: groups.map((r) => [`${words(r.dimension)}: ${r.key ?? '—'}`, count(r.won), count(r.lost), percent(r.win_rate)]),
    }),
  ];
}

function lostReasons(answer, { chart }) {
  const reasons = answer.rows.filter((r) => r.dimension === 'reason');
  // A reason has a row per currency; the chart counts deals, which add up across them.
  const perReason = new Map();
  for (const r of reasons) perReason.set(r.reason, (perReason.get(r.reason) || 0) + r.count);
  return [
    facts([
      ['Lost', count(answer.summary.lost)],
      ['Lost value', moneyPerCurrency(answer.summary.lost_value)],
    ], { class: 'facts inline' }),
    ...figure(chart, {
      id: 'chart-lost-reasons',
      label: 'Lost deals per reason',
      labels: [...perReason.keys()],
      series: [{ label: 'Lost deals', data: [...perReason.values()] }],
      horizontal: true,
      axisLabel: 'Deals',
    }, {
      caption: 'Lost deals per reason',
      columns: ['Reason', 'Deals', 'Value', 'Share'],
      numeric: [1, 2, 3],
      rows: reasons.map((r) => [r.reason, count(r.count), money(r.value, r.currency), percent(r.share)]),
      attrs: { id: 'table-lost-reasons' },
    }),
  ];
}

function owners(answer) {
  return [table({
    scrolls: true,
    caption: 'Per owner and currency (team and region as of each event)',
    columns: ['Owner', 'Team', 'Open deals', 'Open value', 'Weighted', 'Won', 'Won value', 'Lost',
      'Win rate', 'Average won deal', 'Median days to win'],
    numeric: [2, 3, 4, 5, 6, 7, 8, 9, 10],
    rows: answer.rows.map((r) => [r.owner, r.team ?? '—', count(r.open_deals),
      money(r.open_value, r.currency), money(r.weighted_value, r.currency), count(r.won),
      money(r.won_value, r.currency), count(r.lost), percent(r.win_rate),
      money(r.average_deal_size, r.currency), decimal(r.median_days_to_win)]),
    attrs: { id: 'table-owners' },
  })];
}

export async function mount(root, ctx, params) {
  const { signal } = ctx;
  const start = await pipelineViewStart(ctx, params, root, 'Reports');
  if (!start) return {};
  const { pipelines, owners: ownerList, pipeline } = start;
  const values = {
    pipeline: pipeline.id,
    owner: params.get('owner') || '',
    team: params.get('team') || '',
    from: params.get('from') || '',
    to: params.get('to') || '',
  };
  const query = {
    pipeline_id: pipeline.id,
    owner: values.owner,
    team: values.team,
    from: values.from ? `${values.from}T00:00:00Z` : '',
    to: values.to ? `${dayAfter(values.to)}T00:00:00Z` : '',
  };
  const charts = [];
  const chart = (canvas, spec) => {
    barChart(canvas, spec).then((made) => {
      if (signal.aborted) made.destroy();
      else charts.push(made);
    }, (error) => ctx.fail(error));
  };
  let shown = -1;
  let lastLoad = 0;
  let timer = null;

  const sections = SECTIONS.map((section) => {
    const body = h('div', { class: 'report-body', 'aria-busy': 'true' }, h('p', {}, 'Loading…'));
    const download = h('button', {
      type: 'button', class: 'quiet download', dataset: { report: section.report },
      'aria-label': `Download CSV: ${section.title}`,
      onclick: async () => {
        try {
          const name = await downloadCsv(ctx.api, `/v1/reports/${section.report}`, query, signal);
          ctx.notify(`Downloaded ${name}.`);
        } catch (error) {
          if (error.name !== 'AbortError') ctx.fail(error);
        }
      },
    }, 'Download CSV');
    const element = h('section', {
      class: 'report', id: `report-${section.report}`, 'aria-labelledby': `title-${section.report}`,
    },
    h('header', { class: 'report-head' }, h('h2', { id: `title-${section.report}` }, section.title), download),
    body);
    return { ...section, body, element };
  });

  fill(root,
    h('div', { class: 'view-head' },
      h('h1', { id: 'view-title' }, `Reports: ${pipeline.name}`),
      filterBar({
        label: 'Report filters',
        fields: ['pipeline', 'owner', 'team', 'from', 'to'],
        pipelines,
        owners: ownerList,
        values,
        apply: (next) => ctx.go('reports', next),
      })),
    h('p', { class: 'hint' }, values.from || values.to
      ? 'The period counts business time (when things happened).'
      : 'All time. Choose a period to narrow every report; business time counts.'),
    h('div', { class: 'reports' }, sections.map((s) => s.element)));

  async function load(minPosition) {
    lastLoad = Date.now();
    const positions = await Promise.all(sections.map(async (section) => {
      try {
        const answer = await ctx.api.get(`/v1/reports/${section.report}`, { ...query, min_position: minPosition }, { signal });
        for (const old of charts.filter((c) => section.body.contains(c.canvas))) {
          old.destroy();
          charts.splice(charts.indexOf(old), 1);
        }
        fill(section.body, section.draw(answer, { chart }),
          answer.notes ? h('p', { class: 'hint' }, answer.notes) : null);
        section.body.setAttribute('aria-busy', 'false');
        return answer.position;
      } catch (error) {
        if (error.name === 'AbortError') return null;
        fill(section.body, problem(error, () => load(minPosition)));
        return null;
      }
    }));
    const reached = positions.filter((p) => p !== null);
    if (reached.length) shown = Math.min(...reached);
  }

  await load(ctx.knownPosition());
  const unsubscribe = ctx.feed.subscribe((position) => {
    if (position <= shown || timer) return;
    timer = setTimeout(() => {
      timer = null;
      if (ctx.knownPosition() > shown) load(ctx.knownPosition());
    }, Math.max(0, lastLoad + REFRESH_MS - Date.now()));
  });
  return {
    dispose: () => {
      unsubscribe();
      clearTimeout(timer);
      for (const c of charts) c.destroy();
    },
  };
}

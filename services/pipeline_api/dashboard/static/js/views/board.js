// The board: a column per stage with its open deals' count, total and weighted value, and
// deal cards (with the deal's next activity) that move by drag and drop or with the
// keyboard. The same columns, read-only, show the past in time travel (views/timetravel.js).

import { nextActivityLine } from '../activities.js';
import { dealCommand, loseDeal, reloadAfter } from '../commands.js';
import { announce, h, fill, problem } from '../dom.js';
import { follow } from '../live.js';
import { filterBar, ownersInTeam, pipelineViewStart } from '../filters.js';
import { count, days, money, sum } from '../format.js';

export const PER_STAGE = 20;       // cards per column at first, and per "Show more"
const MAX_PER_STAGE = 100;         // the API's limit for per_stage
const FILTERED_LIMIT = 2000;       // open deals a filtered board loads at most

/** The board's totals line: what the API (or the filtered sum) says, to the cent. */
export function totalsLine(totals, currency, label) {
  return h('dl', { class: 'totals', 'aria-label': label },
    h('dt', {}, 'Open deals'), h('dd', { dataset: { field: 'count', value: totals.count } }, count(totals.count)),
    h('dt', {}, 'Total'), h('dd', { dataset: { field: 'total', value: totals.total_value } }, money(totals.total_value, currency)),
    h('dt', {}, 'Weighted'), h('dd', { dataset: { field: 'weighted', value: totals.weighted_value } }, money(totals.weighted_value, currency)));
}

function badges(deal) {
  const out = [];
  const reasons = deal.stale_reasons || [];
  if (reasons.includes('rotting_in_stage')) {
    out.push(h('span', { class: 'badge rotting', title: 'Longer in this stage than the stage allows' }, 'Rotting'));
  }
  if (reasons.includes('no_activity')) {
    out.push(h('span', { class: 'badge stale', title: 'No activity for longer than the pipeline allows' }, 'Stale'));
  }
  if (deal.snoozed_until && new Date(deal.snoozed_until) > new Date()) {
    out.push(h('span', { class: 'badge snoozed' }, 'Snoozed'));
  }
  return out;
}

/** One deal card; `actions` adds the move, won and lost controls. */
function card(deal, currency, { actions, past, titleOf }) {
  const title = titleOf ? titleOf(deal) : deal.title;
  const age = past
    ? `in this state since ${new Date(deal.state_since).toLocaleDateString()}`
    : `${days(deal.time_in_current_stage_seconds)} in stage`;
  const item = h('li', {
    class: 'card',
    draggable: actions ? 'true' : null,
    dataset: { dealId: deal.id, version: deal.version ?? '', stageId: deal.stage.id },
  },
  h('a', { class: 'card-title', href: `#/deal/${deal.id}` }, title),
  h('p', { class: 'card-meta' },
    h('span', { class: 'card-value', dataset: { value: deal.value } }, money(deal.value, currency)),
    ' · ',
    h('span', { class: 'card-owner' }, deal.owner)),
  h('p', { class: 'card-age' }, age, ' ', badges(deal)),
  past ? null : nextActivityLine(deal));
  if (actions) {
    item.append(h('div', { class: 'card-actions' },
      h('button', {
        type: 'button', class: 'move', 'aria-label': `Move ${title}`,
        'aria-describedby': 'board-keys', 'aria-pressed': 'false',
      }, 'Move'),
      h('button', { type: 'button', class: 'win', 'aria-label': `Mark ${title} as won` }, 'Won'),
      h('button', { type: 'button', class: 'lose', 'aria-label': `Mark ${title} as lost` }, 'Lost…')));
  }
  return item;
}

/**
 * The columns, one per stage. `column.deals` are the cards shown; `column.more()` gives
 * the next ones (or is null when all are shown).
 */
export function renderColumns(board, { actions = false, past = false, titleOf = null, onMore = null }) {
  return h('div', { class: 'columns', role: 'list', 'aria-label': 'Stages' },
    board.columns.map((column) => {
      const headingId = `stage-${column.stage.id}`;
      const shown = column.deals.length;
      const more = column.count - shown;
      return h('section', {
        class: 'column', role: 'listitem', 'aria-labelledby': headingId,
        dataset: { stageId: column.stage.id },
      },
      h('header', { class: 'column-head' },
        h('h2', { id: headingId }, column.stage.name),
        h('dl', { class: 'stage-totals' },
          h('dt', {}, 'Deals'), h('dd', { dataset: { field: 'count', value: column.count } }, count(column.count)),
          h('dt', {}, 'Total'), h('dd', { dataset: { field: 'total', value: column.total } }, money(column.total, board.currency)),
          h('dt', {}, 'Weighted'), h('dd', { dataset: { field: 'weighted', value: column.weighted } }, money(column.weighted, board.currency))),
        column.stale ? h('p', { class: 'stage-stale' }, `${count(column.stale)} stale`) : null),
      h('ul', { class: 'cards', 'aria-label': `Deals in ${column.stage.name}` },
        column.deals.map((deal) => card(deal, board.currency, { actions, past, titleOf }))),
      more > 0
        ? (column.more && onMore
          ? h('button', { type: 'button', class: 'more quiet', onclick: () => onMore(column) },
            `Show more (${count(more)} not shown)`)
          : h('p', { class: 'more-note' }, `${count(more)} more not listed`))
        : null);
    }));
}

function liveColumns(answer, pipeline, api, signal) {
  return answer.stages.map((stage) => {
    let cursor = stage.next_cursor;
    const column = {
      stage, count: stage.count, total: stage.total_value, weighted: stage.weighted_value,
      stale: stage.stale_count, deals: stage.deals, more: null,
    };
    if (cursor) {
      column.more = async () => {
        const page = await api.get('/v1/deals', {
          pipeline_id: pipeline.id, stage: stage.id, status: 'open', limit: PER_STAGE, cursor,
        }, { signal });
        cursor = page.next_cursor;
        if (!cursor) column.more = null;
        return page.data;
      };
    }
    return column;
  });
}

/** Open deals of some owners, grouped by stage, with totals summed here exactly. */
async function filteredBoard(ctx, pipeline, owners, minPosition, signal) {
  const lists = await Promise.all(owners.map((owner) => ctx.api.all('/v1/deals', {
    pipeline_id: pipeline.id, status: 'open', owner, limit: 500, min_position: minPosition,
  }, { limit: FILTERED_LIMIT, signal })));
  const deals = lists.flatMap((list) => list.data);
  const columns = pipeline.stages.map((stage) => {
    const inStage = deals.filter((d) => d.stage.id === stage.id);
    const column = {
      stage, count: inStage.length,
      total: sum(inStage.map((d) => d.value)),
      weighted: sum(inStage.map((d) => d.weighted_value)),
      stale: inStage.filter((d) => d.stale).length,
      deals: inStage.slice(0, PER_STAGE), more: null,
    };
    if (inStage.length > PER_STAGE) {
      column.more = async () => {
        const next = inStage.slice(column.deals.length, column.deals.length + PER_STAGE);
        if (column.deals.length + next.length >= inStage.length) column.more = null;
        return next;
      };
    }
    return column;
  });
  return {
    currency: pipeline.currency,
    position: Math.max(0, ...lists.map((l) => l.position ?? 0)),
    columns,
    totals: {
      count: deals.length,
      total_value: sum(deals.map((d) => d.value)),
      weighted_value: sum(deals.map((d) => d.weighted_value)),
    },
    truncated: lists.some((l) => l.truncated),
  };
}

export async function mount(root, ctx, params) {
  const { signal } = ctx;
  const start = await pipelineViewStart(ctx, params, root, 'Board');
  if (!start) return {};
  const { pipelines, owners, pipeline } = start;
  const owner = params.get('owner') || '';
  const team = params.get('team') || '';
  const filtered = Boolean(owner || team);
  const teamOwners = team ? ownersInTeam(owners, team) : [];
  const canMove = ctx.me.may_run_commands;

  const status = h('div', { class: 'board-status' });
  const body = h('div', { class: 'board-body', 'aria-busy': 'true' }, h('p', {}, 'Loading the board…'));
  let board = null;
  let perStage = PER_STAGE;
  let moving = null;       // the keyboard move under way, if any
  const deals = new Map(); // deal id -> deal, for the cards shown

  const toolbar = filterBar({
    label: 'Board filters',
    fields: ['pipeline', 'owner', 'team'],
    pipelines,
    owners,
    values: { pipeline: pipeline.id, owner, team },
    apply: (values) => ctx.go('board', values),
  });
  fill(root,
    h('div', { class: 'view-head' },
      h('h1', { id: 'view-title' }, `Board: ${pipeline.name}`),
      toolbar),
    status,
    canMove
      ? h('p', { class: 'hint', id: 'board-keys' },
        'Drag a card to another stage, or focus its Move button, press Enter, choose a stage '
        + 'with the left and right arrow keys and press Enter again (Escape cancels).')
      : h('p', { class: 'read-only-note', id: 'board-keys' },
        'Read-only: your role may look at the board but not change deals.'),
    body);

  async function load(minPosition) {
    if (filtered) {
      const who = owner ? [owner] : teamOwners;
      return filteredBoard(ctx, pipeline, who, minPosition, signal);
    }
    const answer = await ctx.api.get(`/v1/pipelines/${pipeline.id}/board`, {
      per_stage: perStage, min_position: minPosition,
    }, { signal });
    return {
      currency: answer.pipeline.currency,
      position: answer.position,
      columns: liveColumns(answer, pipeline, ctx.api, signal),
      totals: answer.totals,
    };
  }

  function focusedControl() {
    const active = document.activeElement;
    const cardEl = active && active.closest ? active.closest('.card') : null;
    if (!cardEl) return null;
    return { id: cardEl.dataset.dealId, className: active.className.split(' ')[0] || null };
  }

  function restoreFocus(remembered) {
    if (!remembered) return;
    const cardEl = body.querySelector(`.card[data-deal-id="${remembered.id}"]`);
    if (!cardEl) return;
    const target = (remembered.className && cardEl.querySelector(`.${remembered.className}`))
      || cardEl.querySelector('a');
    if (target) target.focus();
  }

  function render() {
    const remembered = focusedControl();
    deals.clear();
    for (const column of board.columns) for (const deal of column.deals) deals.set(deal.id, deal);
    const note = filtered
      ? h('p', { class: 'hint' },
        owner ? `Only ${owner}’s open deals` : `Only the open deals of team ${team} (its members now: ${teamOwners.join(', ') || 'none'})`,
        '; totals added up from those deals.',
        board.truncated ? ` Only the first ${count(FILTERED_LIMIT)} deals are shown.` : '')
      : null;
    fill(status,
      totalsLine(board.totals, board.currency, filtered ? 'Totals of the filtered deals' : 'Board totals'),
      note);
    fill(body, renderColumns(board, { actions: canMove, onMore: showMore }));
    body.setAttribute('aria-busy', 'false');
    restoreFocus(remembered);
  }

  const live = follow(ctx, {
    load,
    show: (next) => {
      const first = board === null;
      board = next;
      render();
      if (first) performance.mark('dashboard:board-interactive');
    },
    body,
    problem,
    busy: () => moving !== null,
  });
  const { refresh } = live;

  async function showMore(column) {
    try {
      const next = await column.more();
      column.deals = column.deals.concat(next);
      if (!filtered) perStage = Math.min(MAX_PER_STAGE, Math.max(perStage, column.deals.length));
      render();
    } catch (error) {
      ctx.fail(error);
    }
  }

  // --- moving cards -------------------------------------------------------------------

  function stageIndex(stageId) {
    return board.columns.findIndex((c) => c.stage.id === stageId);
  }

  async function move(dealId, stage) {
    const deal = deals.get(dealId);
    if (!deal || deal.stage.id === stage.id) return;
    const cardEl = body.querySelector(`.card[data-deal-id="${dealId}"]`);
    const target = body.querySelector(`.column[data-stage-id="${stage.id}"] .cards`);
    if (cardEl && target) {  // show the move at once; the answer confirms or undoes it
      const focused = cardEl.contains(document.activeElement) ? document.activeElement : null;
      target.prepend(cardEl);
      if (focused) focused.focus();
      cardEl.classList.add('saving');
      cardEl.setAttribute('aria-busy', 'true');
    }
    try {
      await dealCommand(ctx, deal, 'advance', { stage: stage.id });
      ctx.notify(`Moved “${deal.title}” to ${stage.name}.`);
      announce(`Moved ${deal.title} to ${stage.name}.`);
    } catch (error) {
      await recover(error, deal.id);
    }
  }

  async function win(deal) {
    try {
      await dealCommand(ctx, deal, 'win');
      ctx.notify(`“${deal.title}” is won. Its page can reopen it if that was a mistake.`);
    } catch (error) {
      await recover(error, deal.id);
    }
  }

  /**
   * Say what went wrong and show the deal as it is. After a 412 the read model may not
   * have the other change yet: reload until the card shows the version that refused.
   */
  async function recover(error, dealId) {
    ctx.fail(error);
    await reloadAfter(error, refresh, () => deals.get(dealId)?.version);
  }

  async function lose(deal) {
    const answer = await loseDeal(ctx, deal, pipeline);
    if (answer) ctx.notify(`“${deal.title}” is lost (${answer.lost_reason || 'reason recorded'}).`);
  }

  function highlight(index) {
    body.querySelectorAll('.column.drop-target').forEach((c) => c.classList.remove('drop-target'));
    const column = body.querySelectorAll('.column')[index];
    if (column) column.classList.add('drop-target');
  }

  function endMove() {
    if (!moving) return;
    moving.button.setAttribute('aria-pressed', 'false');
    moving.card.classList.remove('moving');
    highlight(-1);
    moving = null;
    live.resume();
  }

  function startMove(button) {
    const cardEl = button.closest('.card');
    const from = stageIndex(cardEl.dataset.stageId);
    moving = { button, card: cardEl, from, target: from };
    button.setAttribute('aria-pressed', 'true');
    cardEl.classList.add('moving');
    highlight(from);
    const deal = deals.get(cardEl.dataset.dealId);
    announce(`Moving ${deal.title}, now in ${board.columns[from].stage.name}. `
      + 'Left and right arrow keys choose a stage, Enter moves it there, Escape cancels.');
  }

  body.addEventListener('click', (event) => {
    const button = event.target.closest('button');
    if (!button || !canMove) return;
    const cardEl = button.closest('.card');
    if (!cardEl) return;
    const deal = deals.get(cardEl.dataset.dealId);
    if (button.classList.contains('move')) {
      if (moving && moving.button === button) {
        const { target, from } = moving;
        endMove();
        if (target !== from) move(deal.id, board.columns[target].stage);
      } else {
        endMove();
        startMove(button);
      }
    } else if (button.classList.contains('win')) {
      win(deal);
    } else if (button.classList.contains('lose')) {
      lose(deal);
    }
  });

  body.addEventListener('keydown', (event) => {
    if (!moving || event.target !== moving.button) return;
    if (event.key === 'ArrowRight' || event.key === 'ArrowLeft') {
      event.preventDefault();
      const step = event.key === 'ArrowRight' ? 1 : -1;
      moving.target = Math.max(0, Math.min(board.columns.length - 1, moving.target + step));
      highlight(moving.target);
      const stage = board.columns[moving.target].stage;
      announce(moving.target === moving.from
        ? `${stage.name}: where it is now.`
        : `Move to ${stage.name}? Press Enter.`);
    } else if (event.key === 'Escape') {
      event.preventDefault();
      endMove();
      announce('Move cancelled.');
    }
  });

  body.addEventListener('focusout', (event) => {
    if (moving && event.target === moving.button) endMove();
  });

  let dragged = null;
  body.addEventListener('dragstart', (event) => {
    const cardEl = event.target.closest && event.target.closest('.card');
    if (!cardEl || !canMove) return;
    dragged = cardEl.dataset.dealId;
    event.dataTransfer.setData('text/plain', dragged);
    event.dataTransfer.effectAllowed = 'move';
    cardEl.classList.add('dragging');
  });
  body.addEventListener('dragend', (event) => {
    const cardEl = event.target.closest && event.target.closest('.card');
    if (cardEl) cardEl.classList.remove('dragging');
    highlight(-1);
    dragged = null;
  });
  body.addEventListener('dragover', (event) => {
    const column = event.target.closest && event.target.closest('.column');
    if (!dragged || !column) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = 'move';
    highlight([...body.querySelectorAll('.column')].indexOf(column));
  });
  body.addEventListener('drop', (event) => {
    const column = event.target.closest && event.target.closest('.column');
    if (!dragged || !column) return;
    event.preventDefault();
    const dealId = dragged;
    dragged = null;
    highlight(-1);
    const stage = board.columns[stageIndex(column.dataset.stageId)].stage;
    move(dealId, stage);
  });

  await refresh(ctx.knownPosition());
  return { dispose: live.stop };
}

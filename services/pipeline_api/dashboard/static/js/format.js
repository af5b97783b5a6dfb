// How numbers, money, moments and durations read on the page. Money arrives as decimal
// strings and is formatted from the string, so no amount ever passes through a float.

const numberFormats = new Map();

function numberFormat(options) {
  const key = JSON.stringify(options);
  let format = numberFormats.get(key);
  if (!format) {
    format = new Intl.NumberFormat(undefined, options);
    numberFormats.set(key, format);
  }
  return format;
}

/** "€12,000.00" from "12000.00" and "EUR"; a plain number without a currency. */
export function money(amount, currency) {
  if (amount === null || amount === undefined || amount === '') return '—';
  const options = currency
    ? { style: 'currency', currency }
    : { minimumFractionDigits: 2, maximumFractionDigits: 4 };
  return numberFormat(options).format(String(amount));
}

/**
 * Amounts kept apart per currency, as reports over pipelines answer them
 * ({"EUR": "100.00", "USD": "40.00"}): each in its own currency, side by side, never added.
 */
export function moneyPerCurrency(amounts) {
  const entries = Object.entries(amounts || {});
  if (!entries.length) return '—';
  return entries.map(([currency, amount]) => money(amount, currency)).join(' · ');
}

/** Rows that carry a `currency` column, grouped by it in the order they come. */
export function byCurrency(rows) {
  const groups = new Map();
  for (const row of rows) {
    if (!groups.has(row.currency)) groups.set(row.currency, []);
    groups.get(row.currency).push(row);
  }
  return groups;
}

export function count(n) {
  return n === null || n === undefined ? '—' : numberFormat({}).format(n);
}

/** A ratio (0.4038) as a percentage ("40.4%"); null reads as a dash. */
export function percent(ratio) {
  if (ratio === null || ratio === undefined) return '—';
  return numberFormat({ style: 'percent', maximumFractionDigits: 1 }).format(ratio);
}

export function decimal(n, digits = 1) {
  if (n === null || n === undefined) return '—';
  return numberFormat({ maximumFractionDigits: digits }).format(n);
}

const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

export function dateTime(iso) {
  return iso ? dateTimeFormat.format(new Date(iso)) : '—';
}

/** A calendar date ("2026-03-21") in the reader's words, without shifting its day. */
export function day(isoDate) {
  if (!isoDate) return '—';
  const [y, m, d] = isoDate.slice(0, 10).split('-').map(Number);
  return dateFormat.format(new Date(y, m - 1, d));
}

/** "12 days", "1 day", "less than a day" from seconds. */
export function days(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const whole = Math.floor(seconds / 86400);
  if (whole < 1) return 'less than a day';
  return `${count(whole)} ${whole === 1 ? 'day' : 'days'}`;
}

/** A length of time for tables: days with one decimal; hours, or minutes, below that. */
export function span(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  if (seconds < 3600) return `${decimal(seconds / 60, 0)} min`;
  if (seconds < 86400) return `${decimal(seconds / 3600)} h`;
  return `${decimal(seconds / 86400)} d`;
}

/** "StageAdvanced" → "Stage advanced". */
export function words(identifier) {
  const spaced = identifier.replace(/_/g, ' ').replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
  return spaced.charAt(0).toUpperCase() + spaced.slice(1);
}

// Exact sums of decimal strings (at most four decimals, as the API allows), for the
// totals of a filtered board that the browser adds up itself.
const UNITS = 10000n;

function toUnits(amount) {
  const text = String(amount);
  const negative = text.startsWith('-');
  const [whole, fraction = ''] = text.replace('-', '').split('.');
  const units = BigInt(whole || '0') * UNITS + BigInt((fraction + '0000').slice(0, 4));
  return negative ? -units : units;
}

/** The exact sum of decimal strings, spelled like the API: at least two decimals. */
export function sum(amounts) {
  let total = 0n;
  for (const amount of amounts) total += toUnits(amount);
  const negative = total < 0n;
  const abs = negative ? -total : total;
  let fraction = (abs % UNITS).toString().padStart(4, '0');
  while (fraction.length > 2 && fraction.endsWith('0')) fraction = fraction.slice(0, -1);
  return `${negative ? '-' : ''}${abs / UNITS}.${fraction}`;
}

/** "2026-05-01T09:30" in the reader's time zone, for a datetime-local input. */
export function localInput(date) {
  const shifted = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return shifted.toISOString().slice(0, 16);
}

const timeFormat = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' });

/** A due moment: "today, 9:30 AM", "tomorrow, …", "yesterday, …", else date and time. */
export function due(iso) {
  if (!iso) return 'no due date';
  const at = new Date(iso);
  const startOfToday = new Date();
  startOfToday.setHours(0, 0, 0, 0);
  const dayOffset = Math.floor((at - startOfToday) / 86400000);
  const named = { '-1': 'yesterday', 0: 'today', 1: 'tomorrow' }[dayOffset];
  return named ? `${named}, ${timeFormat.format(at)}` : dateTime(iso);
}

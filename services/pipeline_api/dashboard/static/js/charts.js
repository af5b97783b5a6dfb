// Charts with the vendored Chart.js, loaded only when a view draws its first chart, so
// the board never pays for it. Each chart has a text equivalent: the table beside it.

import { h } from './dom.js';

const LIBRARY = '/dashboard/vendor/chart.umd.min.js';
export const COLOURS = ['#1d4ed8', '#b45309', '#15803d', '#6d28d9', '#be123c', '#0f766e'];

let loading = null;

export function chartLibrary() {
  if (window.Chart) return Promise.resolve(window.Chart);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = h('script', { src: LIBRARY });
      script.addEventListener('load', () => resolve(window.Chart));
      script.addEventListener('error', () => {
        loading = null;
        reject(new Error('The chart library could not be loaded; the tables show the same figures.'));
      });
      document.head.append(script);
    });
  }
  return loading;
}

/** A canvas in a sized box, named for assistive technology by `label`. */
export function chartBox(id, label) {
  const canvas = h('canvas', { id, role: 'img', 'aria-label': label });
  return { canvas, box: h('div', { class: 'chart' }, canvas) };
}

/** A bar chart: `series` are [{label, data}], drawn in the palette's order. */
export async function barChart(canvas, { labels, series, horizontal = false, axisLabel, tick }) {
  const Chart = await chartLibrary();
  const valueAxis = {
    beginAtZero: true,
    title: axisLabel ? { display: true, text: axisLabel } : undefined,
    ticks: tick ? { callback: tick } : undefined,
  };
  return new Chart(canvas, {
    type: 'bar',
    data: {
      labels,
      datasets: series.map((s, i) => ({
        label: s.label, data: s.data, backgroundColor: COLOURS[i % COLOURS.length],
      })),
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      indexAxis: horizontal ? 'y' : 'x',
      scales: horizontal ? { x: valueAxis } : { y: valueAxis },
      plugins: { legend: { display: series.length > 1 } },
    },
  });
}

// The VRAM history chart (uPlot): seeded from /api/vram/history, then fed by vram_update.
import uPlot from '../vendor/uplot/uPlot.esm.js';
import {$, setText} from './dom.js';
import {formatClock, formatMiB, formatMiBShort} from './format.js';

export const WINDOW_S = 10 * 60;   // what the chart shows
export const MAX_POINTS = 3000;           // at most this many samples kept, whatever the poll interval
const HEIGHT_PX = 220;
const PHONE_HEIGHT_PX = 180;
// y-axis steps in MiB: powers of two, so ticks read 4 GiB, 8 GiB, 16 GiB rather than 9.8 GiB.
const MIB_INCREMENTS = Array.from({length: 14}, (_, i) => 2 ** (i + 6));

const cssVar = (name, fallback) =>
  getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;

export class VramChart {
  constructor() {
    this.container = $('vram-chart');
    this.figure = $('chart-figure');
    this.updated = $('chart-updated');
    this.plot = null;
    this.times = [];
    this.series = new Map();  // GPU index -> {label, values[]}
    this.totalMb = 0;
    this.lastLabelAt = 0;
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.container);
    this.colorScheme = window.matchMedia('(prefers-color-scheme: dark)');
    this.colorScheme.addEventListener('change', () => this.rebuild());
  }

  reset() {
    this.destroyPlot();
    this.times = [];
    this.series.clear();
    this.totalMb = 0;
    this.figure.dataset.samples = '0';
    setText(this.updated, '');
    this.container.setAttribute('aria-label', 'VRAM history chart: waiting for data');
  }

  /** Fill from GET /api/vram/history samples (oldest first). */
  seed(samples) {
    for (const sample of samples) this.add(sample.timestamp, sample.gpus || []);
    this.render();
  }

  /** Append one vram_update payload. NVML unavailable adds a gap, not zeros. */
  push(status) {
    if (typeof status.timestamp !== 'number') return;
    this.add(status.timestamp, status.error && !(status.gpus && status.gpus.length) ? [] : status.gpus || []);
    this.render();
  }

  add(timestamp, gpus) {
    const last = this.times.length ? this.times[this.times.length - 1] : -Infinity;
    if (timestamp <= last) return;  // already have it (the seed and the first update overlap)
    for (const gpu of gpus) {
      if (!this.series.has(gpu.index)) {
        this.series.set(gpu.index, {label: `GPU ${gpu.index}`, values: this.times.map(() => null)});
        this.destroyPlot();  // a new series: rebuilt on the next render
      }
      if (gpu.total_mb) this.totalMb = Math.max(this.totalMb, gpu.total_mb);
    }
    this.times.push(timestamp);
    const byIndex = new Map(gpus.map((gpu) => [gpu.index, gpu]));
    for (const [index, entry] of this.series) {
      const gpu = byIndex.get(index);
      // A lost GPU (error, no used_mb) is a gap in its line.
      entry.values.push(gpu && !gpu.error && gpu.used_mb !== null && gpu.used_mb !== undefined ? gpu.used_mb : null);
    }
    this.trim();
  }

  trim() {
    const newest = this.times[this.times.length - 1];
    let drop = 0;
    while (drop < this.times.length && this.times[drop] < newest - WINDOW_S) drop += 1;
    drop = Math.max(drop, this.times.length - MAX_POINTS);
    if (drop > 0) {
      this.times.splice(0, drop);
      for (const entry of this.series.values()) entry.values.splice(0, drop);
    }
  }

  data() {
    const indices = [...this.series.keys()].sort((a, b) => a - b);
    return [this.times, ...indices.map((index) => this.series.get(index).values)];
  }

  render() {
    this.figure.dataset.samples = String(this.times.length);
    if (!this.times.length || !this.series.size) return;
    if (!this.plot) this.create();
    else this.plot.setData(this.data());
    this.showLatestInLegend();
    const newest = this.times[this.times.length - 1];
    setText(this.updated, `updated ${formatClock(new Date(newest * 1000))}`);
    this.describe();
  }

  /** A text alternative for the canvas, refreshed every few seconds. */
  describe() {
    const now = Date.now();
    if (now - this.lastLabelAt < 5000) return;
    this.lastLabelAt = now;
    const parts = [...this.series.entries()].sort(([a], [b]) => a - b).map(([index, entry]) => {
      const value = entry.values[entry.values.length - 1];
      return `GPU ${index} ${value === null ? 'no reading' : `${formatMiB(value)} used`}`;
    });
    this.container.setAttribute('aria-label',
      `VRAM history chart over the last ${WINDOW_S / 60} minutes: now ${parts.join('; ')}`);
  }

  size() {
    const width = Math.max(200, Math.floor(this.container.clientWidth));
    const height = window.matchMedia('(max-width: 600px)').matches ? PHONE_HEIGHT_PX : HEIGHT_PX;
    return {width, height};
  }

  create() {
    const axisColor = cssVar('--text-muted', '#666');
    const gridColor = cssVar('--grid', 'rgba(0,0,0,0.08)');
    const indices = [...this.series.keys()].sort((a, b) => a - b);
    const options = {
      ...this.size(),
      class: 'vram-uplot',
      legend: {live: true},
      cursor: {drag: {x: false, y: false}},
      scales: {
        x: {time: true},
        y: {range: (u, min, max) => [0, Math.max(this.totalMb || 0, max || 0, 1)]},
      },
      axes: [
        {stroke: axisColor, space: 60, grid: {stroke: gridColor, width: 1}, ticks: {stroke: gridColor, width: 1}},
        {stroke: axisColor, grid: {stroke: gridColor, width: 1}, ticks: {stroke: gridColor, width: 1},
          size: 64, space: 28, incrs: MIB_INCREMENTS, values: (u, splits) => splits.map(formatMiBShort)},
      ],
      hooks: {
        // Off the chart, the legend shows the newest reading rather than dashes.
        setCursor: [(u) => { if (u.cursor.idx === null || u.cursor.idx === undefined) this.showLatestInLegend(); }],
      },
      series: [
        {label: 'Time', value: (u, ts) => (ts === null ? '—' : formatClock(new Date(ts * 1000)))},
        ...indices.map((index, i) => {
          const color = cssVar(`--series-${i % 4}`, '#1f6feb');
          return {
            label: this.series.get(index).label,
            stroke: color,
            width: 2,
            fill: `${color}22`,
            spanGaps: false,
            points: {show: false},
            value: (u, v) => (v === null || v === undefined ? '—' : formatMiB(v)),
          };
        }),
      ],
    };
    this.plot = new uPlot(options, this.data(), this.container);
  }

  showLatestInLegend() {
    const plot = this.plot;
    if (!plot || !this.times.length) return;
    if (plot.cursor.idx === null || plot.cursor.idx === undefined) plot.setLegend({idx: this.times.length - 1}, false);
  }

  resize() {
    if (this.plot) this.plot.setSize(this.size());
  }

  rebuild() {
    this.destroyPlot();
    this.render();
  }

  destroyPlot() {
    if (this.plot) {
      this.plot.destroy();
      this.plot = null;
    }
  }
}

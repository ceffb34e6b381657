// The live GPU panel: one card per GPU (VRAM stacked by model), the process table, NVML / lost-GPU states.
import {$, announce, fillTable, h, setText} from './dom.js';
import {formatMiB, formatPercent, formatPower, formatTemperature, percentOf} from './format.js';

const WARN_PERCENT = 75;
const CRIT_PERCENT = 90;
const MODEL_COLOURS = 6;  // .seg-0 … .seg-5 in app.css

/** A stable colour slot for a model name, so a model keeps its colour across GPUs and updates. */
function colourOf(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % MODEL_COLOURS;
}

/** GPU index -> [[model, used MiB], …] (largest first), from the processes the driver measured. */
export function vramByModel(processes) {
  const byGpu = new Map();
  for (const proc of processes) {
    if (!proc.model || proc.used_mb === null || proc.used_mb === undefined) continue;
    const models = byGpu.get(proc.gpu_index) ?? new Map();
    models.set(proc.model, (models.get(proc.model) ?? 0) + proc.used_mb);
    byGpu.set(proc.gpu_index, models);
  }
  const out = new Map();
  for (const [index, models] of byGpu) out.set(index, [...models].sort((a, b) => b[1] - a[1]));
  return out;
}

export class GpuPanel {
  constructor() {
    this.list = $('gpu-list');
    this.nvmlError = $('nvml-error');
    this.driver = $('driver-version');
    this.processRows = $('process-rows');
    this.cards = new Map();  // GPU index -> {root, fields}
    this.lost = new Set();   // indices last reported with an error
    this.nvmlDown = false;
  }

  reset() {
    this.cards.clear();
    this.lost.clear();
    this.nvmlDown = false;
    this.nvmlError.hidden = true;
    setText(this.driver, '');
    this.list.replaceChildren(h('p', {class: 'muted'}, 'Waiting for the first reading…'));
    this.list.setAttribute('aria-busy', 'true');
    fillTable(this.processRows, [], 5, 'Waiting for the first reading…');
  }

  /** Show a /api/vram/status body (or the `vram_update` payload, which is the same). */
  update(status) {
    this.list.setAttribute('aria-busy', 'false');
    if (status.error && !(status.gpus && status.gpus.length)) {
      this.showUnavailable(status.error);
      return;
    }
    if (this.nvmlDown) announce('NVML is available again.');
    this.nvmlDown = false;
    this.nvmlError.hidden = true;
    setText(this.driver, status.driver_version ? `Driver ${status.driver_version}` : '');
    this.renderCards(status.gpus || [], vramByModel(status.processes || []));
    this.renderProcesses(status.processes || []);
  }

  /** NVML unavailable: say so plainly, and show no figures at all (never zeros). */
  showUnavailable(message) {
    if (!this.nvmlDown) announce('GPU readings are unavailable.');
    this.nvmlDown = true;
    this.cards.clear();
    setText(this.nvmlError, `GPU readings unavailable: ${message}`);
    this.nvmlError.hidden = false;
    setText(this.driver, '');
    this.list.replaceChildren(h('p', {class: 'muted'}, 'No GPU figures while NVML is unavailable.'));
    fillTable(this.processRows, [], 5, 'Unavailable: NVML cannot be read.');
  }

  renderCards(gpus, models = new Map()) {
    const seen = new Set();
    if (!gpus.length) {
      this.cards.clear();
      this.list.replaceChildren(h('p', {class: 'muted'}, 'NVML reports no GPUs.'));
      return;
    }
    if (!this.cards.size) this.list.replaceChildren();
    for (const gpu of gpus) {
      seen.add(gpu.index);
      let card = this.cards.get(gpu.index);
      if (!card) {
        card = buildCard(gpu.index);
        this.cards.set(gpu.index, card);
        this.insertInOrder(card.root, gpu.index);
      }
      fillCard(card, gpu, models.get(gpu.index) || []);
      const wasLost = this.lost.has(gpu.index);
      if (gpu.error && !wasLost) {
        this.lost.add(gpu.index);
        announce(`GPU ${gpu.index}: ${gpu.error}`);
      } else if (!gpu.error && wasLost) {
        this.lost.delete(gpu.index);
        announce(`GPU ${gpu.index} reports again.`);
      }
    }
    for (const [index, card] of this.cards) {
      if (!seen.has(index)) {
        card.root.remove();
        this.cards.delete(index);
      }
    }
  }

  insertInOrder(root, index) {
    const after = [...this.cards.entries()]
      .filter(([other]) => other > index)
      .sort(([a], [b]) => a - b)[0];
    if (after && after[1].root.isConnected) this.list.insertBefore(root, after[1].root);
    else this.list.append(root);
  }

  renderProcesses(processes) {
    const rows = [...processes]
      .sort((a, b) => a.gpu_index - b.gpu_index || (b.used_mb ?? -1) - (a.used_mb ?? -1) || a.pid - b.pid)
      .map((proc) => h('tr', {dataset: {pid: String(proc.pid)}},
        h('td', {class: 'num'}, String(proc.pid)),
        h('td', {class: 'proc-name', title: proc.name || ''}, proc.name || 'unknown'),
        h('td', {class: 'proc-model'}, proc.model
          ? h('span', {class: `model-chip seg-${colourOf(proc.model)}`}, proc.model) : '—'),
        h('td', {class: 'num'}, proc.used_mb === null || proc.used_mb === undefined
          ? 'n/a' : formatMiB(proc.used_mb).replace(' MiB', '')),
        h('td', {class: 'num'}, String(proc.gpu_index))));
    fillTable(this.processRows, rows, 5, 'No processes are using the GPUs.');
  }
}

function buildCard(index) {
  const fields = {
    name: h('span', {class: 'gpu-name'}),
    vramText: h('span', {class: 'vram-text'}),
    segments: h('span', {class: 'bar-segments'}),
    fill: h('span', {class: 'bar-fill', title: 'other'}),
    legend: h('ul', {class: 'vram-legend', 'aria-label': `GPU ${index} VRAM by model`}),
    util: h('dd', {class: 'gpu-util'}),
    memUtil: h('dd', {class: 'gpu-mem-util'}),
    temp: h('dd', {class: 'gpu-temp'}),
    power: h('dd', {class: 'gpu-power'}),
    error: h('p', {class: 'gpu-error'}),
  };
  fields.bar = h('div', {
    class: 'bar', role: 'meter', 'aria-valuemin': '0',
    'aria-label': `GPU ${index} VRAM used`,
  }, fields.segments, fields.fill);
  fields.readings = h('div', {class: 'gpu-readings'},
    h('div', {class: 'vram-row'}, h('span', {class: 'label'}, 'VRAM'), fields.vramText),
    fields.bar,
    fields.legend,
    h('dl', {class: 'stats'},
      h('div', {}, h('dt', {title: 'GPU utilization'}, 'GPU util.'), fields.util),
      h('div', {}, h('dt', {title: 'Memory controller utilization'}, 'Mem. util.'), fields.memUtil),
      h('div', {}, h('dt', {title: 'Temperature'}, 'Temp.'), fields.temp),
      h('div', {}, h('dt', {}, 'Power'), fields.power)));
  const root = h('article', {class: 'gpu-card', dataset: {gpuIndex: String(index)},
    'aria-label': `GPU ${index}`},
  h('h3', {class: 'gpu-title'}, h('span', {class: 'gpu-index'}, `GPU ${index}`), fields.name),
  fields.error, fields.readings);
  return {root, fields};
}

function fillCard({root, fields}, gpu, models) {
  setText(fields.name, gpu.name || '');
  root.classList.toggle('lost', Boolean(gpu.error));
  fields.error.hidden = !gpu.error;
  fields.readings.hidden = Boolean(gpu.error);
  if (gpu.error) {
    // A GPU that fell off the bus has no figures: say why, show none.
    setText(fields.error, `No readings: ${gpu.error}`);
    return;
  }
  const percent = percentOf(gpu.used_mb, gpu.total_mb);
  const known = percent !== null;
  setText(fields.vramText, known
    ? `${formatMiB(gpu.used_mb).replace(' MiB', '')} / ${formatMiB(gpu.total_mb)} (${formatPercent(percent)})`
    : 'n/a');
  // Stacked: one segment per model the driver measured, then "other" (everything else used).
  // CSSOM widths (allowed by the page's style-src 'self'; a style attribute would not be).
  const modelMiB = models.reduce((sum, [, mib]) => sum + mib, 0);
  const widthOf = (mib) => `${Math.min(100, Math.max(0, percentOf(mib, gpu.total_mb) ?? 0)).toFixed(2)}%`;
  fields.segments.replaceChildren(...(known ? models : []).map(([name, mib]) => {
    const seg = h('span', {class: `bar-seg seg-${colourOf(name)}`, title: `${name}: ${formatMiB(mib)}`});
    seg.style.width = widthOf(mib);
    return seg;
  }));
  const otherMiB = known ? Math.max(0, gpu.used_mb - modelMiB) : 0;
  fields.fill.style.width = known ? widthOf(models.length ? otherMiB : gpu.used_mb) : '0%';
  fields.legend.hidden = !known || !models.length;
  fields.legend.replaceChildren(...(known && models.length ? [
    ...models.map(([name, mib]) => h('li', {},
      h('span', {class: `swatch seg-${colourOf(name)}`, 'aria-hidden': 'true'}), `${name} `,
      h('span', {class: 'muted'}, formatMiB(mib)))),
    h('li', {}, h('span', {class: 'swatch other', 'aria-hidden': 'true'}), 'other ',
      h('span', {class: 'muted'}, formatMiB(otherMiB))),
  ] : []));
  fields.bar.classList.toggle('unknown', !known);
  fields.bar.classList.toggle('warn', known && percent >= WARN_PERCENT && percent < CRIT_PERCENT);
  fields.bar.classList.toggle('crit', known && percent >= CRIT_PERCENT);
  if (known) {
    fields.bar.setAttribute('aria-valuemax', String(gpu.total_mb));
    fields.bar.setAttribute('aria-valuenow', String(gpu.used_mb));
    fields.bar.setAttribute('aria-valuetext', `${formatMiB(gpu.used_mb)} of ${formatMiB(gpu.total_mb)}, ${formatPercent(percent)}`);
  } else {
    fields.bar.removeAttribute('aria-valuenow');
    fields.bar.setAttribute('aria-valuetext', 'not reported');
  }
  setText(fields.util, formatPercent(gpu.utilization));
  setText(fields.memUtil, formatPercent(gpu.memory_utilization));
  setText(fields.temp, formatTemperature(gpu.temperature_c));
  setText(fields.power, formatPower(gpu.power_w));
}

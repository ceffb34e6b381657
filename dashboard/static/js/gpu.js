// The live GPU panel: one card per GPU, the process table, NVML / lost-GPU states.
import {$, announce, fillTable, h, setText} from './dom.js';
import {formatMiB, formatPercent, formatPower, formatTemperature, percentOf} from './format.js';

const WARN_PERCENT = 75;
const CRIT_PERCENT = 90;

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
    fillTable(this.processRows, [], 4, 'Waiting for the first reading…');
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
    this.renderCards(status.gpus || []);
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
    fillTable(this.processRows, [], 4, 'Unavailable: NVML cannot be read.');
  }

  renderCards(gpus) {
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
      fillCard(card, gpu);
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
        h('td', {class: 'num'}, proc.used_mb === null || proc.used_mb === undefined
          ? 'n/a' : formatMiB(proc.used_mb).replace(' MiB', '')),
        h('td', {class: 'num'}, String(proc.gpu_index))));
    fillTable(this.processRows, rows, 4, 'No processes are using the GPUs.');
  }
}

function buildCard(index) {
  const fields = {
    name: h('span', {class: 'gpu-name'}),
    vramText: h('span', {class: 'vram-text'}),
    fill: h('span', {class: 'bar-fill'}),
    util: h('dd', {class: 'gpu-util'}),
    memUtil: h('dd', {class: 'gpu-mem-util'}),
    temp: h('dd', {class: 'gpu-temp'}),
    power: h('dd', {class: 'gpu-power'}),
    error: h('p', {class: 'gpu-error'}),
  };
  fields.bar = h('div', {
    class: 'bar', role: 'meter', 'aria-valuemin': '0',
    'aria-label': `GPU ${index} VRAM used`,
  }, fields.fill);
  fields.readings = h('div', {class: 'gpu-readings'},
    h('div', {class: 'vram-row'}, h('span', {class: 'label'}, 'VRAM'), fields.vramText),
    fields.bar,
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

function fillCard({root, fields}, gpu) {
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
  // CSSOM width (allowed by the page's style-src 'self'; a style attribute would not be).
  fields.fill.style.width = known ? `${Math.min(100, Math.max(0, percent)).toFixed(2)}%` : '0%';
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

// The fleet: one card per node (name, GPUs, VRAM bars, stale marker) and model actions on a chosen
// node through /api/nodes/<node>/models/ollama/…. Shown only when there is more than one node.
import {ApiError, get, post} from './api.js';
import {$, announce, h, setText} from './dom.js';
import {formatMiB, formatPercent, percentOf} from './format.js';

const REFRESH_MS = 5000;

export class FleetPanel {
  constructor() {
    this.panel = $('fleet-panel');
    this.cards = $('fleet-cards');
    this.select = $('fleet-node');
    this.nodes = new Map();   // name -> node as GET /api/fleet lists it
    this.timer = null;
    $('fleet-load')?.addEventListener('click', () => this.act('load'));
    $('fleet-unload')?.addEventListener('click', () => this.act('unload'));
  }

  async start() {
    this.stop();
    await this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    clearInterval(this.timer);
    this.timer = null;
  }

  async refresh() {
    try {
      const {nodes} = await get('/api/fleet');
      this.nodes = new Map(nodes.map((node) => [node.name, node]));
      this.render();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
    }
  }

  // Socket.IO fleet_update {node, status}: that node was just heard from.
  onUpdate({node, status}) {
    const known = this.nodes.get(node);
    if (!known) return void this.refresh();
    Object.assign(known, {status, stale: false, last_seen: Date.now() / 1000});
    this.render();
  }

  render() {
    if (!this.panel) return;
    this.panel.hidden = this.nodes.size < 2;
    this.cards.replaceChildren(...[...this.nodes.values()].map(card));
    const chosen = this.select.value;
    this.select.replaceChildren(...[...this.nodes.keys()].map((name) => h('option', {value: name, text: name})));
    if (this.nodes.has(chosen)) this.select.value = chosen;
  }

  async act(operation) {
    const node = this.select.value;
    const model = $('fleet-model').value.trim();
    const result = $('fleet-result');
    if (!node || !model) return setText(result, 'Choose a node and type a model name.');
    try {
      const answer = await post(`/api/nodes/${encodeURIComponent(node)}/models/ollama/${operation}`,
                                {model_name: model});
      setText(result, `${node}: ${answer.message}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      setText(result, `${node}: ${error.message}`);
    }
    announce(result.textContent);
  }
}

function card(node) {
  const gpus = node.status?.gpus ?? [];
  return h('article', {class: `fleet-card${node.stale ? ' stale' : ''}`, dataset: {node: node.name}},
    h('header', {},
      h('h3', {text: node.name}),
      node.stale ? h('span', {class: 'badge warn', text: 'stale'}) : null,
      h('span', {class: 'muted small', text: `${node.nvml ? 'NVML' : 'no NVML'} · ${node.ollama ? 'Ollama' : 'no Ollama'}`})),
    gpus.length ? h('ul', {class: 'fleet-gpus'}, gpus.map((gpu) => {
      const used = percentOf(gpu.used_mb, gpu.total_mb) ?? 0;
      const fill = h('div', {class: 'bar-fill'});
      fill.style.width = `${used}%`;  // through the CSSOM: the CSP refuses style attributes
      return h('li', {},
        h('span', {text: `${gpu.index}: ${gpu.name}`}),
        h('div', {class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(used),
                  'aria-label': `GPU ${gpu.index} VRAM used`}, fill),
        h('span', {class: 'small', text: `${formatMiB(gpu.used_mb)} / ${formatMiB(gpu.total_mb)} (${formatPercent(used)})`}));
    })) : h('p', {class: 'muted small', text: node.status?.error ?? 'No reading yet'}));
}

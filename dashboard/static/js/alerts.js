// Alerts: a banner and a list of the alerts firing now, and a toast when one fires (vram_alert).
import {get} from './api.js';
import {$, announce, h, setText} from './dom.js';

const TOAST_MS = 8000;

function where(alert) {
  return alert.gpu_index === null || alert.gpu_index === undefined ? '' : `GPU ${alert.gpu_index}`;
}

export class AlertsPanel {
  constructor() {
    this.firing = new Map();  // id -> alert
  }

  async start() {
    this.firing.clear();
    try {
      const body = await get('/api/alerts?state=firing&limit=100');
      for (const alert of body.alerts || []) this.firing.set(alert.id, alert);
    } catch (failure) {
      console.warn('alerts:', failure.message);
    }
    this.render();
  }

  stop() {
    this.firing.clear();
    this.render();
  }

  /** One vram_alert event: firing adds it (and a toast), resolved removes it. */
  onAlert(alert) {
    if (alert.state === 'firing') {
      this.firing.set(alert.id, alert);
      this.toast(alert);
    } else {
      this.firing.delete(alert.id);
      announce(`Resolved: ${alert.message}`);
    }
    this.render();
  }

  render() {
    const banner = $('alert-banner');
    const list = $('alert-list');
    if (!banner || !list) return;
    const alerts = [...this.firing.values()].sort((a, b) => String(b.started_at).localeCompare(String(a.started_at)));
    banner.hidden = alerts.length === 0;
    setText($('alert-banner-text'), alerts.length === 1 ? '1 alert firing' : `${alerts.length} alerts firing`);
    list.replaceChildren(...alerts.map((alert) => h('li', {class: 'alert-item', dataset: {rule: alert.rule}},
      h('strong', {}, alert.rule), ' ', where(alert) ? h('span', {class: 'alert-gpu'}, where(alert)) : null,
      ' ', h('span', {}, alert.message))));
  }

  toast(alert) {
    const area = $('toast-area');
    if (!area) return;
    const toast = h('div', {class: 'toast', role: 'alert', dataset: {rule: alert.rule}},
      h('strong', {}, 'Alert: '), alert.message);
    area.append(toast);
    window.setTimeout(() => toast.remove(), TOAST_MS);
  }
}

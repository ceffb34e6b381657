// Settings: GET /api/settings for everyone; administrators edit them (PATCH /api/settings).
import {api, get} from './api.js';
import {$, h, setText} from './dom.js';

const FIELDS = [
  ['alert_vram_percent', 'VRAM alert at (% used)', 'number'],
  ['alert_temperature_c', 'Temperature alert at (°C)', 'number'],
  ['alert_for_seconds', 'Alert after holding (s)', 'number'],
  ['alert_webhook_url', 'Webhook URL', 'url'],
  ['vram_poll_interval_s', 'Poll interval (s)', 'number'],
  ['load_keep_alive', 'Load keep_alive', 'text'],
];

export class SettingsPanel {
  async start() {
    let me = null;
    try {
      me = await get('/api/auth/me');
      const body = await get('/api/settings');
      this.render(body, me.role === 'admin' && me.auth === 'session');
    } catch (failure) {
      setText($('settings-status'), failure.message);
    }
  }

  stop() {
    const form = $('settings-form');
    if (form) form.replaceChildren();
  }

  render(body, editable) {
    const form = $('settings-form');
    if (!form) return;
    const rows = FIELDS.map(([name, label, type]) => {
      const value = body.settings[name];
      const input = h('input', {id: `setting-${name}`, name, type: type === 'number' ? 'number' : 'text',
        step: type === 'number' ? 'any' : null, value: value === null || value === undefined ? '' : String(value),
        readonly: !editable, 'aria-describedby': `setting-${name}-source`});
      return h('div', {class: 'field'}, h('label', {for: `setting-${name}`}, label), input,
        h('span', {class: 'muted small', id: `setting-${name}-source`}, body.sources[name] || ''));
    });
    const save = editable ? h('button', {type: 'submit', class: 'button primary', id: 'settings-save'}, 'Save') : null;
    form.replaceChildren(...rows, save);
    form.onsubmit = (event) => { event.preventDefault(); if (editable) this.save(body); };
    setText($('settings-status'), editable ? '' : 'Only administrators can change these.');
  }

  async save(previous) {
    const changes = {};
    for (const [name, , type] of FIELDS) {
      const raw = $(`setting-${name}`).value.trim();
      const before = previous.settings[name];
      // An emptied number goes as null, for the server to refuse: Number('') would send 0.
      const value = type === 'number' ? (raw === '' ? null : Number(raw)) : raw;
      if (String(before ?? '') !== raw) changes[name] = value;
    }
    if (!Object.keys(changes).length) {
      setText($('settings-status'), 'Nothing changed.');
      return;
    }
    try {
      const body = await api('/api/settings', {method: 'PATCH', body: changes});
      this.render(body, true);
      setText($('settings-status'), 'Saved.');
    } catch (failure) {
      setText($('settings-status'), failure.message);
    }
  }
}

// The Audit page (administrators): the newest entries, filtered by user and action.
import {get} from './api.js';
import {$, fillTable, h, setText} from './dom.js';

const COLUMNS = 7;
export const ACTIONS = ['login', 'login_failed', 'logout', 'password_change', 'user_create', 'user_update',
  'user_delete', 'key_create', 'key_revoke', 'model_load', 'model_unload', 'model_download',
  'model_download_cancel', 'model_delete', 'settings_update'];
const LIMIT = 200;

export class AuditPage {
  constructor() {
    this.rows = $('audit-rows');
    this.status = $('audit-status');
    this.user = $('audit-user');
    this.action = $('audit-action');
    this.action.append(...ACTIONS.map((action) => h('option', {value: action}, action)));
    $('audit-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.refresh();
    });
    this.action.addEventListener('change', () => this.refresh());
  }

  show() {
    this.refresh();
  }

  reset() {
    this.user.value = '';
    this.action.value = '';
    fillTable(this.rows, [], COLUMNS, 'Loading…');
    setText(this.status, '');
  }

  async refresh() {
    const run = this.run = (this.run || 0) + 1;  // only the latest request's answer is shown
    const query = new URLSearchParams({limit: String(LIMIT)});
    const username = this.user.value.trim();
    if (username) query.set('username', username);
    if (this.action.value) query.set('action', this.action.value);
    try {
      const data = await get(`/api/audit?${query}`);
      if (run !== this.run) return;
      const entries = data.entries || [];
      this.render(entries);
      setText(this.status, entries.length >= LIMIT ? `The newest ${LIMIT} entries.` : `${entries.length} entries.`);
    } catch (error) {
      if (error.status === 401 || run !== this.run) return;
      fillTable(this.rows, [], COLUMNS, `Could not read the audit log: ${error.message}`);
    }
  }

  render(entries) {
    const rows = entries.map((entry) => {
      const when = new Date(entry.timestamp * 1000);
      return h('tr', {dataset: {action: entry.action}},
        h('td', {class: 'nowrap', title: when.toISOString()}, when.toLocaleString()),
        h('td', {}, entry.username ?? '—'),
        h('td', {}, h('code', {}, entry.action)),
        h('td', {}, entry.target ?? ''),
        h('td', {}, h('span', {class: `badge ${entry.success ? 'ok' : 'error'}`}, entry.success ? 'ok' : 'failed')),
        h('td', {}, entry.source_ip ?? ''),
        h('td', {class: 'detail'}, entry.detail ?? ''));
    });
    fillTable(this.rows, rows, COLUMNS, 'No entries.');
  }
}

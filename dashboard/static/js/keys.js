// The API keys page (everyone): create (the key shown once, with a copy button), list, revoke.
import {del, get, post} from './api.js';
import {$, announce, fillTable, h, setText} from './dom.js';
import {formatDateTime, formatRelative} from './format.js';
import {DEFAULT_SCOPES, SCOPE_TEXT, scopesFor} from './roles.js';

const COLUMNS = 8;

export class KeysPage {
  constructor() {
    this.rows = $('keys-rows');
    this.status = $('keys-status');
    this.error = $('key-error');
    this.scopes = $('key-scopes');
    this.secretBox = $('key-secret');
    this.secret = $('key-secret-value');
    this.role = null;
    $('key-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.create();
    });
    $('key-copy').addEventListener('click', () => this.copy());
  }

  /** Offer only the scopes this role allows, those of read and proxy checked (the server's default). */
  setRole(role) {
    this.role = role;
    const boxes = scopesFor(role).map((scope) => h('label', {class: 'check'},
      h('input', {type: 'checkbox', name: 'scopes', value: scope, checked: DEFAULT_SCOPES.includes(scope)}),
      ` ${SCOPE_TEXT[scope]}`));
    this.scopes.replaceChildren(h('legend', {}, 'Scopes'), ...boxes);
  }

  show() {
    this.refresh();
  }

  reset() {
    this.hideSecret();
    fillTable(this.rows, [], COLUMNS, 'Loading…');
    setText(this.status, '');
    setText(this.error, '');
  }

  hide() {
    this.hideSecret();  // shown once: leaving the page forgets it
  }

  hideSecret() {
    setText(this.secret, '');
    this.secretBox.hidden = true;
  }

  async refresh() {
    try {
      const data = await get('/api/keys');
      this.render(data.keys || []);
    } catch (error) {
      if (error.status === 401) return;
      fillTable(this.rows, [], COLUMNS, `Could not list keys: ${error.message}`);
    }
  }

  render(keys) {
    const rows = keys.map((key) => h('tr', {dataset: {key: key.id}},
      h('th', {scope: 'row'}, key.name),
      h('td', {}, h('code', {}, `${key.prefix}…`)),
      h('td', {}, key.scopes.join(', ') || '—'),
      h('td', {}, key.username),
      h('td', {title: formatDateTime(key.created_at)}, formatRelative(key.created_at)),
      h('td', {title: key.expires_at ? formatDateTime(key.expires_at) : null},
        key.expires_at ? formatDateTime(key.expires_at) : 'never'),
      h('td', {title: formatDateTime(key.last_used_at)}, key.last_used_at ? formatRelative(key.last_used_at) : 'never'),
      h('td', {class: 'actions'}, h('button', {type: 'button', class: 'button small danger-outline',
        dataset: {action: 'revoke'}, 'aria-label': `Revoke ${key.name}`, onclick: () => this.revoke(key)}, 'Revoke'))));
    fillTable(this.rows, rows, COLUMNS, 'No API keys yet.');
  }

  async create() {
    const name = $('key-name').value.trim();
    const scopes = [...this.scopes.querySelectorAll('input[name="scopes"]:checked')].map((box) => box.value);
    const daysText = $('key-days').value.trim();
    setText(this.error, '');
    this.hideSecret();
    if (!name) {
      setText(this.error, 'Give the key a name.');
      $('key-name').focus();
      return;
    }
    const body = {name, scopes};
    if (daysText) {
      const days = Number(daysText);
      if (!Number.isInteger(days) || days < 1 || days > 3650) {
        setText(this.error, 'Expiry: a whole number of days from 1 to 3650, or empty for none.');
        return;
      }
      body.expires_in_days = days;
    }
    const submit = $('key-submit');
    submit.disabled = true;
    try {
      const key = await post('/api/keys', body);
      $('key-name').value = '';
      $('key-days').value = '';
      setText(this.secret, key.key);
      this.secretBox.hidden = false;
      announce(`Key ${key.name} created. Copy it now: it is not shown again.`);
      await this.refresh();
    } catch (error) {
      if (error.status !== 401) setText(this.error, error.message);
    } finally {
      submit.disabled = false;
    }
  }

  async copy() {
    const text = this.secret.textContent;
    const button = $('key-copy');
    try {
      await navigator.clipboard.writeText(text);
      setText(button, 'Copied');
    } catch {
      // No clipboard (an insecure origin, or permission refused): select it for Ctrl+C instead.
      const range = document.createRange();
      range.selectNodeContents(this.secret);
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      setText(button, 'Selected: press Ctrl+C');
    }
    window.setTimeout(() => setText(button, 'Copy'), 2000);
  }

  async revoke(key) {
    try {
      await del(`/api/keys/${encodeURIComponent(key.id)}`);
      setText(this.status, `Key ${key.name} revoked.`);
      announce(`Key ${key.name} revoked.`);
    } catch (error) {
      if (error.status !== 401) setText(this.status, `Could not revoke ${key.name}: ${error.message}`);
    }
    await this.refresh();
  }
}

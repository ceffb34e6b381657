// The Users page (administrators): list, create, change role, disable/enable, reset password, delete.
import {del, get, patch, post} from './api.js';
import {$, announce, fillTable, h, setText} from './dom.js';
import {formatDateTime, formatRelative} from './format.js';
import {ROLES} from './roles.js';

const COLUMNS = 6;

export class UsersPage {
  constructor() {
    this.rows = $('users-rows');
    this.status = $('users-status');
    this.error = $('user-error');
    this.me = null;
    this.users = [];
    $('user-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.create();
    });
  }

  setMe(username) {
    this.me = username;
  }

  show() {
    this.refresh();
  }

  reset() {
    this.users = [];
    fillTable(this.rows, [], COLUMNS, 'Loading…');
    setText(this.status, '');
    setText(this.error, '');
  }

  async refresh() {
    try {
      const data = await get('/api/users');
      this.users = data.users || [];
      this.render();
    } catch (error) {
      if (error.status === 401) return;
      fillTable(this.rows, [], COLUMNS, `Could not list users: ${error.message}`);
    }
  }

  say(message, isError = false) {
    this.status.classList.toggle('error', isError);
    setText(this.status, message);
    if (!isError) announce(message);
  }

  render() {
    const rows = this.users.map((user) => {
      const fixed = user.source === 'environment';  // its role and password come from the environment
      const self = user.username === this.me;
      const role = h('select', {'aria-label': `Role of ${user.username}`, dataset: {action: 'role'},
        disabled: fixed || self, onchange: (event) => this.update(user, {role: event.target.value})},
      ROLES.map((name) => h('option', {value: name, selected: name === user.role}, name)));
      return h('tr', {dataset: {user: user.username}},
        h('th', {scope: 'row'}, user.username, self ? h('span', {class: 'muted small'}, ' (you)') : null),
        h('td', {}, role),
        h('td', {}, h('span', {class: `badge ${user.disabled ? 'error' : 'ok'}`, dataset: {field: 'status'}},
          user.disabled ? 'disabled' : 'active')),
        h('td', {title: formatDateTime(user.last_login_at)}, user.last_login_at ? formatRelative(user.last_login_at) : 'never'),
        h('td', {}, user.source),
        h('td', {class: 'actions'},
          fixed || self ? null : h('button', {type: 'button', class: 'button small secondary', dataset: {action: 'toggle'},
            onclick: () => this.update(user, {disabled: !user.disabled})}, user.disabled ? 'Enable' : 'Disable'),
          fixed ? null : h('button', {type: 'button', class: 'button small secondary', dataset: {action: 'reset'},
            onclick: () => this.resetPassword(user)}, 'Reset password'),
          fixed || self ? null : h('button', {type: 'button', class: 'button small danger-outline', dataset: {action: 'delete'},
            'aria-label': `Delete ${user.username}`, onclick: () => this.remove(user)}, 'Delete')));
    });
    fillTable(this.rows, rows, COLUMNS, 'No users.');
  }

  async create() {
    const username = $('new-user-name').value.trim();
    const password = $('new-user-password').value;
    const role = $('new-user-role').value;
    setText(this.error, '');
    if (!username || !password) {
      setText(this.error, 'Enter a user name and a password.');
      return;
    }
    const submit = $('user-submit');
    submit.disabled = true;
    try {
      await post('/api/users', {username, password, role});
      $('new-user-name').value = '';
      $('new-user-password').value = '';
      this.say(`User ${username} created (${role}).`);
      await this.refresh();
    } catch (error) {
      if (error.status !== 401) setText(this.error, error.message);
    } finally {
      submit.disabled = false;
    }
  }

  async update(user, changes, done = null) {
    try {
      await patch(`/api/users/${encodeURIComponent(user.username)}`, changes);
      this.say(done || `User ${user.username} updated.`);
    } catch (error) {
      if (error.status !== 401) this.say(`Could not update ${user.username}: ${error.message}`, true);
    }
    await this.refresh();
  }

  async resetPassword(user) {
    const dialog = $('reset-dialog');
    const input = $('reset-password');
    setText($('reset-user'), user.username);
    input.value = '';
    dialog.returnValue = 'cancel';
    dialog.showModal();
    const confirmed = await new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), {once: true});
    });
    const password = input.value;
    input.value = '';
    if (!confirmed || !password) return;
    await this.update(user, {password}, `Password of ${user.username} reset.`);
  }

  async remove(user) {
    const dialog = $('confirm-dialog');
    setText($('confirm-title'), 'Delete user?');
    setText($('confirm-text'), `${user.username} is deleted; their sessions end and their API keys stop.`);
    dialog.returnValue = 'cancel';
    dialog.showModal();
    const confirmed = await new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), {once: true});
    });
    if (!confirmed) return;
    try {
      await del(`/api/users/${encodeURIComponent(user.username)}`);
      this.say(`User ${user.username} deleted.`);
    } catch (error) {
      if (error.status !== 401) this.say(`Could not delete ${user.username}: ${error.message}`, true);
    }
    await this.refresh();
  }
}

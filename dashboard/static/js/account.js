// The Account page: who you are, and changing your own password (your other sessions end).
import {post} from './api.js';
import {$, announce, setText} from './dom.js';

export class AccountPage {
  constructor() {
    this.error = $('password-error');
    this.status = $('password-status');
    $('password-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.changePassword();
    });
  }

  setUser(username, role) {
    setText($('account-who'), `Signed in as ${username} (${role}).`);
  }

  reset() {
    for (const id of ['current-password', 'new-password', 'repeat-password']) $(id).value = '';
    setText(this.error, '');
    setText(this.status, '');
  }

  async changePassword() {
    const current = $('current-password').value;
    const next = $('new-password').value;
    setText(this.error, '');
    setText(this.status, '');
    if (!current || !next) {
      setText(this.error, 'Enter your current and your new password.');
      return;
    }
    if (next !== $('repeat-password').value) {
      setText(this.error, 'The new passwords differ.');
      return;
    }
    if (next.length < 8) {
      setText(this.error, 'The new password needs at least 8 characters.');
      return;
    }
    const submit = $('password-submit');
    submit.disabled = true;
    try {
      // A 401 here is a wrong current password, not an ended session: stay signed in.
      await post('/api/auth/password', {current_password: current, new_password: next}, {keepSession: true});
      this.reset();
      setText(this.status, 'Password changed. Your other sessions have ended.');
      announce('Password changed.');
    } catch (error) {
      setText(this.error, error.message);
    } finally {
      submit.disabled = false;
    }
  }
}

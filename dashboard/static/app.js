// VRAM Dashboard: log in, then show live GPU readings and manage Ollama models; usage, API keys,
// your password, and for administrators users and the audit log, each a page (hash routing).
// Plain ES modules served as they are: no build step, nothing fetched from outside this server.
import {io} from './vendor/socket.io-client/socket.io.esm.min.js';
import {ApiError, get, onUnauthorized, post, setToken, token} from './js/api.js';
import {MAX_POINTS, VramChart, WINDOW_S} from './js/chart.js';
import {$, announce, setText} from './js/dom.js';
import {GpuPanel} from './js/gpu.js';
import {ModelsPanel} from './js/models.js';
import {AccountPage} from './js/account.js';
import {AuditPage} from './js/audit.js';
import {KeysPage} from './js/keys.js';
import {Pages} from './js/pages.js';
import {canManageModels} from './js/roles.js';
import {UsagePage} from './js/usage.js';
import {UsersPage} from './js/users.js';
import {FleetPanel} from './js/fleet.js';
import {AlertsPanel} from './js/alerts.js';
import {SettingsPanel} from './js/settings.js';

const gpus = new GpuPanel();
const chart = new VramChart();
const models = new ModelsPanel();
const users = new UsersPage();
const keys = new KeysPage();
const audit = new AuditPage();
const usage = new UsagePage();
const account = new AccountPage();
const pages = new Pages({users, keys, audit, usage, account});
const fleet = new FleetPanel();
const alerts = new AlertsPanel();
const settings = new SettingsPanel();
let socket = null;
let live = false;
let generation = 0;  // bumped by every start and stop, so a stale start gives up

// --- views -------------------------------------------------------------------------------------

function showLogin(message = '') {
  stopLive();
  pages.stop();
  for (const page of [users, keys, audit, usage, account]) page.reset();
  $('session-bar').hidden = true;
  $('login-view').hidden = false;
  const error = $('login-error');
  setText(error, message);
  $('login-password').value = '';
  document.title = 'Log in · VRAM Dashboard';
  $('login-username').focus();
}

/** Signed in: name and role in the top bar, and only the controls the role may use. */
function showDashboard(username, role) {
  $('login-view').hidden = true;
  $('session-bar').hidden = false;
  setText($('user-name'), username);
  setText($('user-role'), role);
  $('user-role').dataset.role = role;
  models.setCanManage(canManageModels(role));
  users.setMe(username);
  keys.setRole(role);
  usage.setRole(role);
  account.setUser(username, role);
  pages.start(role);
  document.title = 'VRAM Dashboard';
  startLive();
}

// --- authentication ----------------------------------------------------------------------------

onUnauthorized(() => {
  // The token expired or was revoked: back to the login page, once.
  if (!token()) return;
  setToken(null);
  showLogin('Your session has ended. Please log in again.');
});

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const username = $('login-username').value.trim();
  const password = $('login-password').value;
  const error = $('login-error');
  if (!username || !password) {
    setText(error, 'Enter your user name and password.');
    (username ? $('login-password') : $('login-username')).focus();
    return;
  }
  const submit = $('login-submit');
  submit.disabled = true;
  setText(submit, 'Logging in…');
  setText(error, '');
  try {
    const session = await post('/api/auth/login', {username, password});
    setToken(session.token);
    $('login-password').value = '';
    showDashboard(session.username, session.role);
    $('main').focus();
  } catch (failure) {
    let message = failure.message;
    if (failure instanceof ApiError && failure.status === 429 && failure.retryAfter) {
      message = `${message} (try again in ${failure.retryAfter} s)`;
    }
    setText(error, message);
    $('login-password').focus();
  } finally {
    submit.disabled = false;
    setText(submit, 'Log in');
  }
});

$('logout-button').addEventListener('click', async () => {
  const button = $('logout-button');
  button.disabled = true;
  stopLive();  // first, so the server closing our socket is not taken for an expired session
  try {
    await post('/api/auth/logout');
  } catch (failure) {
    // Logged out locally all the same; the token dies with its expiry if the server missed it.
    console.warn('logout:', failure.message);
  } finally {
    button.disabled = false;
    setToken(null);
    showLogin('');
    announce('Logged out.');
  }
});

// --- live data ---------------------------------------------------------------------------------

function setLive(state, text) {
  const line = $('live-status');
  line.dataset.state = state;
  setText($('live-text'), text);
}

async function startLive() {
  if (live) return;
  live = true;
  const run = ++generation;
  gpus.reset();
  chart.reset();
  models.start();
  alerts.start();
  settings.start();
  setLive('connecting', 'Connecting…');
  try {
    const samples = await loadHistory();
    if (run === generation) chart.seed(samples);
  } catch (failure) {
    if (failure.status === 401) return;
    console.warn('history:', failure.message);
  }
  if (run === generation) connectSocket();
}

/** The samples the chart's window needs: two first, to learn the poll interval. */
async function loadHistory() {
  const probe = (await get('/api/vram/history?limit=2')).samples || [];
  if (probe.length < 2 || !(probe[1].timestamp > probe[0].timestamp)) return probe;
  const interval = probe[1].timestamp - probe[0].timestamp;
  const limit = Math.min(MAX_POINTS, Math.ceil(WINDOW_S / interval) + 1);
  return (await get(`/api/vram/history?limit=${limit}`)).samples || [];
}

function connectSocket() {
  socket = io({auth: {token: token()}, reconnectionDelayMax: 5000});
  let connectedBefore = false;
  socket.on('connect', () => {
    setLive('live', 'Live');
    // Catch up with whatever finished while we were away: downloads, and (after a reconnect)
    // alerts that fired or resolved meanwhile, whose vram_alert events this page missed.
    models.refreshDownloads();
    if (connectedBefore) alerts.start();
    connectedBefore = true;
  });
  socket.on('disconnect', (reason) => {
    if (!live) return;
    setLive('offline', 'Reconnecting…');
    if (reason === 'io server disconnect') {
      // The server closed it on purpose: logout elsewhere or an expired session.
      verifySession().then((ok) => { if (ok && socket) socket.connect(); });
    }
  });
  socket.on('connect_error', (error) => {
    if (!live) return;
    setLive('offline', 'Reconnecting…');
    if (String(error.message).startsWith('unauthorized')) verifySession();
  });
  socket.on('vram_update', (status) => {
    gpus.update(status);
    chart.push(status);
  });
  socket.on('model_download_progress', (event) => models.onProgress(event));
  socket.on('fleet_update', (event) => fleet.onUpdate(event));
  fleet.start();
  socket.on('vram_alert', (alert) => alerts.onAlert(alert));
}

/** True while the stored token is still good; a 401 sends us to the login page. */
async function verifySession() {
  try {
    await get('/api/auth/me');
    return true;
  } catch {
    return false;
  }
}

function stopLive() {
  fleet.stop();
  live = false;
  generation += 1;
  if (socket) {
    socket.removeAllListeners();
    socket.disconnect();
    socket = null;
  }
  models.stop();
  alerts.stop();
  settings.stop();
  gpus.reset();
  chart.reset();
}

// --- start -------------------------------------------------------------------------------------

async function boot() {
  if (!token()) {
    showLogin();
    return;
  }
  try {
    const me = await get('/api/auth/me');
    showDashboard(me.username, me.role);
  } catch (failure) {
    if (failure.status === 401) return;  // onUnauthorized has shown the login page
    showLogin(failure.message);
  }
}

boot();

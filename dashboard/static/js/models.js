// Ollama models: available and loaded lists, load/unload/delete (a fit estimate before each load),
// downloads with live progress.
import {ApiError, get, post} from './api.js';
import {$, announce, fillTable, h, setText} from './dom.js';
import {formatBytes, formatDateTime, formatMiB, formatRelative, formatUntil} from './format.js';

const REFRESH_MS = 10_000;
const BASE = '/api/models/ollama';
const STATUS_TEXT = {
  starting: 'Starting',
  downloading: 'Downloading',
  complete: 'Complete',
  error: 'Failed',
  cancelled: 'Cancelled',
};
const FINISHED = new Set(['complete', 'error', 'cancelled']);

export class ModelsPanel {
  constructor() {
    this.banner = $('ollama-banner');
    this.bannerText = $('ollama-banner-text');
    this.availableRows = $('available-rows');
    this.availableStatus = $('available-status');
    this.availableCount = $('available-count');
    this.loadedRows = $('loaded-rows');
    this.loadedStatus = $('loaded-status');
    this.loadedCount = $('loaded-count');
    this.form = $('download-form');
    this.nameInput = $('download-name');
    this.downloadError = $('download-error');
    this.submit = $('download-submit');
    this.jobList = $('download-jobs');
    this.fitPrompt = $('fit-prompt');
    this.downloadFit = $('download-fit');
    this.dialog = $('confirm-dialog');
    this.jobs = new Map();     // model name -> {job, view}
    this.busy = new Set();     // "action:model" pairs in flight, so buttons stay disabled
    this.timer = null;
    this.active = false;
    this.refreshing = null;
    this.followUp = null;
    this.available = [];
    this.loaded = [];
    this.canManage = true;     // may load, unload, download, cancel and delete (operator, admin)

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.startDownload();
    });
    $('models-refresh').addEventListener('click', () => this.refresh({announceDone: true}));
    $('download-check').addEventListener('click', () => this.checkDownloadFit());
  }

  /** Show the model operations only to a role that may use them (a viewer sees none). */
  setCanManage(allowed) {
    this.canManage = Boolean(allowed);
    this.submit.hidden = !this.canManage;
    this.submit.disabled = !this.canManage;
    for (const {job, view} of this.jobs.values()) this.paint({job, view});
    if (!this.canManage) this.fitPrompt.replaceChildren();
    this.renderAvailable();
    this.renderLoaded();
  }

  start() {
    this.active = true;
    this.refresh();
    this.refreshDownloads();
    this.timer = window.setInterval(() => this.refresh(), REFRESH_MS);
  }

  stop() {
    this.active = false;
    window.clearInterval(this.timer);
    this.timer = null;
    this.jobs.clear();
    this.busy.clear();
    this.jobList.replaceChildren();
    this.available = [];
    this.loaded = [];
    fillTable(this.availableRows, [], 4, 'Loading…');
    fillTable(this.loadedRows, [], 5, 'Loading…');
    this.fitPrompt.replaceChildren();
    for (const el of [this.availableStatus, this.loadedStatus, this.downloadError, this.availableCount, this.loadedCount,
      this.downloadFit]) {
      setText(el, '');
    }
    this.nameInput.value = '';
    this.nameInput.removeAttribute('aria-invalid');
    this.banner.hidden = true;
    if (this.dialog.open) this.dialog.close('cancel');
  }

  // --- Ollama reachability -------------------------------------------------------------------

  /** Show the banner for a 503 (its message names OLLAMA_HOST); true when it was one. */
  noteFailure(error) {
    if (error instanceof ApiError && error.status === 503) {
      if (this.banner.hidden) announce('Ollama is unreachable.');
      setText(this.bannerText, error.message);
      this.banner.hidden = false;
      return true;
    }
    return false;
  }

  noteReachable() {
    if (!this.banner.hidden) announce('Ollama is reachable again.');
    this.banner.hidden = true;
  }

  // --- lists ---------------------------------------------------------------------------------

  /** Fetch both lists. One request pair at a time; a call during one gets a fresh one after it. */
  refresh({announceDone = false} = {}) {
    if (!this.active) return Promise.resolve();
    let done;
    if (!this.refreshing) {
      this.refreshing = Promise.all([this.refreshAvailable(), this.refreshLoaded()])
        .finally(() => { this.refreshing = null; });
      done = this.refreshing;
    } else {
      // The one in flight may have been asked before the change we want to see (an action).
      this.followUp ??= this.refreshing.then(() => {
        this.followUp = null;
        return this.refresh();
      });
      done = this.followUp;
    }
    if (announceDone) done.then(() => announce('Model lists refreshed.'));
    return done;
  }

  async refreshAvailable() {
    try {
      const data = await get(`${BASE}/list`);
      if (!this.active) return;  // logged out meanwhile
      this.noteReachable();
      this.available = data.models || [];
      setText(this.availableCount, `(${this.available.length})`);
      this.renderAvailable();
    } catch (error) {
      this.listFailed(error, this.availableRows, 4, this.availableCount);
    }
  }

  async refreshLoaded() {
    try {
      const data = await get(`${BASE}/loaded`);
      if (!this.active) return;  // logged out meanwhile
      this.noteReachable();
      this.loaded = data.models || [];
      setText(this.loadedCount, `(${this.loaded.length})`);
      this.renderLoaded();
      this.renderAvailable();  // the Load buttons depend on what is loaded
    } catch (error) {
      this.listFailed(error, this.loadedRows, 5, this.loadedCount);
    }
  }

  listFailed(error, tbody, columns, count) {
    if (error.status === 401 || !this.active) return;
    const down = this.noteFailure(error);
    setText(count, '');
    // Never "no models" when we simply could not ask.
    fillTable(tbody, [], columns, down ? 'Unknown: Ollama is unreachable.' : `Could not list models: ${error.message}`);
  }

  renderAvailable() {
    const loadedNames = new Set(this.loaded.map((model) => model.name));
    const rows = [...this.available].sort((a, b) => a.name.localeCompare(b.name)).map((model) => {
      const isLoaded = loadedNames.has(model.name);
      return h('tr', {dataset: {model: model.name}},
        h('th', {scope: 'row'},
          h('span', {class: 'model-name'}, model.name),
          isLoaded ? h('span', {class: 'badge ok'}, 'loaded') : null,
          h('span', {class: 'model-details'},
            detail('Family', model.family), ' · ', detail('Parameters', model.parameter_size),
            ' · ', detail('Quantization', model.quantization),
            // On a phone the Modified column is hidden; its value moves here.
            h('span', {class: 'phone-only'}, ` · modified ${formatRelative(model.modified_at)}`))),
        h('td', {class: 'num', title: model.size_bytes ? `${model.size_bytes} bytes` : null},
          model.size || formatBytes(model.size_bytes)),
        h('td', {class: 'nowrap col-modified', title: formatDateTime(model.modified_at)}, formatRelative(model.modified_at)),
        h('td', {class: 'actions'},
          this.actionButton('load', model.name, isLoaded ? 'Loaded' : 'Load', 'secondary', isLoaded),
          this.actionButton('delete', model.name, 'Delete', 'danger-outline')));
    });
    this.replaceRowsKeepingFocus(this.availableRows, rows, 4, 'No models downloaded yet. Download one above.');
  }

  renderLoaded() {
    const rows = this.loaded.map((model) => h('tr', {dataset: {model: model.name}},
      h('th', {scope: 'row'}, h('span', {class: 'model-name'}, model.name)),
      h('td', {class: 'num', title: model.size_vram_bytes !== undefined ? `${formatBytes(model.size_vram_bytes)} in VRAM` : null},
        model.size || formatBytes(model.size_bytes)),
      h('td', {}, model.processor || '—', h('span', {class: 'model-vram'}, vramText(model))),
      h('td', {title: formatDateTime(model.expires_at)}, formatUntil(model.expires_at)),
      h('td', {class: 'actions'}, this.actionButton('unload', model.name, 'Unload', 'secondary'))));
    this.replaceRowsKeepingFocus(this.loadedRows, rows, 5, 'No model is loaded.');
  }

  actionButton(action, name, label, variant, disabled = false) {
    if (!this.canManage) return null;  // absent, not failing: the role may not use it
    const busy = this.busy.has(`${action}:${name}`);
    return h('button', {
      type: 'button', class: `button small ${variant}`, dataset: {action, model: name},
      'aria-label': `${label} ${name}`, disabled: disabled || busy,
      onclick: () => this.runAction(action, name),
    }, busy ? `${label}…` : label);
  }

  /** Re-render a table without losing the keyboard focus of a button inside it. */
  replaceRowsKeepingFocus(tbody, rows, columns, emptyText) {
    const focused = tbody.contains(document.activeElement) ? document.activeElement.dataset : null;
    const key = focused && focused.action ? [focused.action, focused.model] : null;
    fillTable(tbody, rows, columns, emptyText);
    if (key) {
      const again = [...tbody.querySelectorAll('button[data-action]')]
        .find((button) => button.dataset.action === key[0] && button.dataset.model === key[1]);
      if (again && !again.disabled) again.focus();
    }
  }

  // --- model operations ----------------------------------------------------------------------

  async runAction(action, name, extra = {}) {
    if (action === 'delete' && !(await this.confirmDelete(name))) return;
    const statusLine = action === 'unload' ? this.loadedStatus : this.availableStatus;
    const verb = {load: 'Loading', unload: 'Unloading', delete: 'Deleting'}[action];
    const key = `${action}:${name}`;
    this.busy.add(key);
    this.renderAvailable();
    this.renderLoaded();
    statusLine.classList.remove('error');
    setText(statusLine, `${verb} ${name}…`);
    try {
      if (action === 'load' && !extra.checked) {
        // The estimate first: load at once when it fits (or cannot be estimated), else ask.
        const fit = await this.estimate(name, statusLine);
        if (fit && !fit.fits) {
          this.offerRoom(name, fit, statusLine);
          return;
        }
        setText(statusLine, `${fit ? `${fit.message}: ` : ''}${verb} ${name}…`);
      }
      this.fitPrompt.replaceChildren();
      const body = {model_name: name};
      if (extra.makeRoom) body.make_room = true;
      const result = await post(`${BASE}/${action}`, body);
      this.noteReachable();
      setText(statusLine, result.message || `${verb} ${name}: done`);
    } catch (error) {
      if (error.status === 401) return;
      this.noteFailure(error);
      statusLine.classList.add('error');
      setText(statusLine, `${name}: ${error.message}`);
    } finally {
      this.busy.delete(key);
      await this.refresh();
    }
  }

  /** POST /fit; null (with the reason on the status line) when it cannot be estimated. */
  async estimate(name, statusLine) {
    setText(statusLine, `Checking whether ${name} fits…`);
    try {
      return await post(`${BASE}/fit`, {model_name: name});
    } catch (error) {
      if (error.status === 401) throw error;
      setText(statusLine, `Could not estimate ${name} (${error.message}); loading anyway…`);
      return null;
    }
  }

  /** It does not fit: say by how much, and offer "make room and load" (one click) or loading anyway. */
  offerRoom(name, fit, statusLine) {
    setText(statusLine, '');
    const buttons = [];
    if (fit.unload_to_fit.length) {
      buttons.push(h('button', {type: 'button', class: 'button small primary', dataset: {action: 'make-room', model: name},
        onclick: () => this.runAction('load', name, {checked: true, makeRoom: true})}, 'Make room and load'));
    }
    buttons.push(h('button', {type: 'button', class: 'button small secondary',
      title: 'Ollama then keeps part of the model in system memory (slower)',
      onclick: () => this.runAction('load', name, {checked: true})}, 'Load anyway'));
    buttons.push(h('button', {type: 'button', class: 'button small secondary',
      onclick: () => this.fitPrompt.replaceChildren()}, 'Cancel'));
    this.fitPrompt.className = 'fit-line tight';
    this.fitPrompt.replaceChildren(`${name}: ${fit.message} (needs ${formatBytes(fit.required_bytes)})`, ...buttons);
    announce(`${name}: ${fit.message}`);
    buttons[0].focus();
  }

  /** The download box's "Will it fit?": the estimate for a name (from its registry when not downloaded). */
  async checkDownloadFit(name = this.nameInput.value.trim()) {
    if (!name) {
      this.fieldError('Enter a model name, e.g. llama3.2:1b.');
      return;
    }
    this.downloadFit.className = 'fit-line muted';
    setText(this.downloadFit, `Checking whether ${name} fits…`);
    try {
      const fit = await post(`${BASE}/fit`, {model_name: name});
      this.downloadFit.className = `fit-line ${fit.fits ? 'fits' : 'tight'}`;
      setText(this.downloadFit, `${fit.model_name}: ${fit.message} — needs ${formatBytes(fit.required_bytes)} `
        + `(weights ${formatBytes(fit.weights_bytes)}, context ${fit.num_ctx}: ${formatBytes(fit.kv_cache_bytes)}, `
        + `overhead ${formatBytes(fit.overhead_bytes)})`);
    } catch (error) {
      if (error.status === 401) return;
      this.downloadFit.className = 'fit-line muted';
      setText(this.downloadFit, `Fit estimate for ${name}: ${error.message}`);
    }
  }

  /** Ask before deleting; resolves true only on an explicit "Delete". */
  confirmDelete(name) {
    const opener = document.activeElement;
    setText($('confirm-title'), `Delete ${name}?`);
    setText($('confirm-text'), `This removes ${name} from Ollama's disk. You would have to download it again to use it.`);
    this.dialog.returnValue = 'cancel';
    this.dialog.showModal();
    $('confirm-cancel').focus();
    return new Promise((resolve) => {
      this.dialog.addEventListener('close', () => {
        if (opener && opener.isConnected) opener.focus();
        resolve(this.dialog.returnValue === 'confirm');
      }, {once: true});
    });
  }

  // --- downloads -----------------------------------------------------------------------------

  async refreshDownloads() {
    if (!this.active) return;
    try {
      const data = await get(`${BASE}/downloads`);
      if (!this.active) return;
      for (const job of data.downloads || []) this.mergeJob(job, 'snapshot');
    } catch (error) {
      if (error.status !== 401) this.noteFailure(error);
    }
  }

  async startDownload() {
    if (!this.canManage) return;
    const name = this.nameInput.value.trim();
    setText(this.downloadError, '');
    this.nameInput.removeAttribute('aria-invalid');
    if (!name) {
      this.fieldError('Enter a model name, e.g. llama3.2:1b.');
      return;
    }
    this.submit.disabled = true;
    const submittedAt = performance.now();
    this.checkDownloadFit(name);  // the estimate, beside the download (it does not hold it up)
    try {
      const result = await post(`${BASE}/download`, {model_name: name});
      this.noteReachable();
      const modelName = result.model_name || name;
      const existing = this.jobs.get(modelName);
      // Its first events may have come in before this answer: then they already show the job.
      if (!existing || (FINISHED.has(existing.job.status) && existing.touched < submittedAt)) {
        this.mergeJob({model_name: modelName, status: 'starting', percent: 0}, 'submit');
      }
      this.setJobNote(modelName, result.message || 'Download started');
      this.nameInput.value = '';
    } catch (error) {
      if (error.status === 401) return;
      this.noteFailure(error);
      this.fieldError(error.message);
    } finally {
      this.submit.disabled = false;
    }
  }

  fieldError(message) {
    setText(this.downloadError, message);
    this.nameInput.setAttribute('aria-invalid', 'true');
    this.nameInput.focus();
  }

  async cancelDownload(name) {
    const entry = this.jobs.get(name);
    if (!entry) return;
    entry.view.cancel.disabled = true;
    setText(entry.view.cancel, 'Cancelling…');
    try {
      const result = await post(`${BASE}/download/cancel`, {model_name: name});
      this.setJobNote(name, result.message || 'Cancelled');
    } catch (error) {
      if (error.status === 401) return;
      this.noteFailure(error);
      this.setJobError(name, error.message);
      // 404: it had already finished; the server's list says how.
      await this.refreshDownloads();
    } finally {
      const current = this.jobs.get(name);
      if (current) {
        current.view.cancel.disabled = false;
        setText(current.view.cancel, 'Cancel');
        this.paint(current);
      }
    }
  }

  /** A model_download_progress event (the server sends each model's events in order). */
  onProgress(event) {
    this.mergeJob(event, 'event');
  }

  /**
   * Fold a job into what is shown. `source` says how far to trust it:
   * 'submit' (our own 202), 'event' (in order, live) or 'snapshot' (GET downloads, may be stale).
   */
  mergeJob(update, source) {
    const name = update.model_name;
    if (!name) return;
    let entry = this.jobs.get(name);
    if (!entry) {
      entry = {job: {model_name: name, percent: 0}, view: this.buildJob(name), touched: 0};
      this.jobs.set(name, entry);
      this.jobList.prepend(entry.view.root);
    }
    const job = entry.job;
    if (FINISHED.has(job.status) && !FINISHED.has(update.status)) {
      // A finished job that runs again is a new download of the same model, unless the news is
      // an older snapshot of the one that just finished.
      const newer = source !== 'snapshot'
        || (job.started_at && update.started_at && Date.parse(update.started_at) > Date.parse(job.started_at));
      if (!newer) return;
      Object.assign(job, {percent: 0, completed_bytes: 0, total_bytes: null, started_at: null,
        finished_at: null, error: null, actionError: null, note: null});
    }
    entry.touched = performance.now();
    // Percent never goes backwards within one job (events and snapshots may interleave).
    if (Number.isFinite(update.percent)) job.percent = Math.max(job.percent || 0, update.percent);
    for (const field of ['status', 'completed_bytes', 'total_bytes', 'started_at', 'finished_at']) {
      if (update[field] !== undefined && update[field] !== null) job[field] = update[field];
    }
    if (job.status === 'error') job.error = update.error || update.message || job.error || 'The download failed.';
    if (job.status === 'complete') job.percent = 100;
    this.paint(entry);
    if (job.status !== entry.lastStatus) {
      if (entry.lastStatus !== undefined || FINISHED.has(job.status)) {
        announce(`${name}: ${STATUS_TEXT[job.status] || job.status}`);
      }
      if (job.status === 'complete' && entry.lastStatus !== undefined) this.refresh();
      entry.lastStatus = job.status;
    }
  }

  setJobNote(name, note) {
    const entry = this.jobs.get(name);
    if (!entry) return;
    entry.job.note = note;
    this.paint(entry);
  }

  setJobError(name, message) {
    const entry = this.jobs.get(name);
    if (!entry) return;
    entry.job.actionError = message;
    this.paint(entry);
  }

  buildJob(name) {
    const view = {
      status: h('span', {class: 'badge job-status'}),
      progress: h('progress', {class: 'job-progress', max: '100', 'aria-label': `Download progress of ${name}`}),
      percent: h('span', {class: 'job-percent'}),
      bytes: h('span', {class: 'job-bytes'}),
      note: h('p', {class: 'job-note muted small'}),
      error: h('p', {class: 'job-error', role: 'alert'}),
      cancel: h('button', {type: 'button', class: 'button small secondary job-cancel', 'aria-label': `Cancel download of ${name}`,
        onclick: () => this.cancelDownload(name)}, 'Cancel'),
    };
    view.root = h('li', {class: 'job', dataset: {model: name}},
      h('div', {class: 'job-head'}, h('span', {class: 'job-name'}, name), view.status),
      h('div', {class: 'job-body'}, view.progress, view.cancel),
      h('div', {class: 'job-figures'}, view.percent, view.bytes),
      view.error, view.note);
    return view;
  }

  paint({job, view}) {
    const status = job.status || 'starting';
    view.root.dataset.status = status;
    setText(view.status, STATUS_TEXT[status] || status);
    view.status.className = `badge job-status ${status}`;
    const percent = Math.max(0, Math.min(100, job.percent || 0));
    if (status === 'starting' || (status === 'downloading' && !job.total_bytes && !percent)) {
      view.progress.removeAttribute('value');  // indeterminate until Ollama says how big it is
    } else {
      view.progress.value = percent;
    }
    view.progress.setAttribute('aria-valuetext', `${percent.toFixed(1)}%`);
    setText(view.percent, `${percent.toFixed(1)}%`);
    setText(view.bytes, job.total_bytes
      ? `${formatBytes(job.completed_bytes || 0)} of ${formatBytes(job.total_bytes)}`
      : (job.completed_bytes ? formatBytes(job.completed_bytes) : ''));
    const running = !FINISHED.has(status);
    view.cancel.hidden = !running || !this.canManage;
    const errorText = status === 'error' ? job.error : job.actionError;
    setText(view.error, errorText ? `Error: ${errorText}` : '');
    view.error.hidden = !errorText;
    let note = running ? job.note || '' : '';
    if (status === 'complete') note = 'Ready: listed under Available.';
    setText(view.note, note);
    view.note.hidden = !note;
  }
}

/** A loaded model's VRAM: the driver's figure per GPU, else Ollama's own size_vram. */
export function vramText(model) {
  if (model.vram_source === 'driver' && model.gpus && model.gpus.length) {
    return model.gpus.map((gpu) => `GPU ${gpu.index}: ${formatMiB(gpu.used_mb)}`).join(' · ') + ' (driver)';
  }
  return model.size_vram_bytes ? `${formatBytes(model.size_vram_bytes)} in VRAM (Ollama)` : '';
}

/** One labelled detail of a model ("Family: llama" to a screen reader, "llama" on screen). */
function detail(label, value) {
  return h('span', {}, h('span', {class: 'visually-hidden'}, `${label}: `), value || '—');
}

// The Usage page: proxied requests grouped by user, model or day, and requests per day as bars.
// The bars are plain CSS (widths set through the CSSOM, which the page's CSP allows).
import {get} from './api.js';
import {$, fillTable, h, setText} from './dom.js';
import {seesEveryonesUsage} from './roles.js';

const COLUMNS = 6;
const GROUP_TEXT = {user: 'User', model: 'Model', day: 'Day'};

export class UsagePage {
  constructor() {
    this.rows = $('usage-rows');
    this.status = $('usage-status');
    this.chart = $('usage-chart');
    this.group = $('usage-group');
    this.days = $('usage-days');
    $('usage-form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.refresh();
    });
    this.group.addEventListener('change', () => this.refresh());
    this.days.addEventListener('change', () => this.refresh());
  }

  setRole(role) {
    setText($('usage-scope'), seesEveryonesUsage(role) ? 'Everyone\'s requests through /ollama' : 'Your requests through /ollama');
  }

  show() {
    this.refresh();
  }

  reset() {
    fillTable(this.rows, [], COLUMNS, 'Loading…');
    this.chart.replaceChildren();
    setText(this.status, '');
  }

  range() {
    const until = new Date();
    const since = new Date(until.getTime() - Number(this.days.value) * 86400 * 1000);
    return {since: since.toISOString(), until: until.toISOString()};
  }

  async refresh() {
    const run = this.run = (this.run || 0) + 1;  // only the latest request's answer is shown
    const groupBy = this.group.value;
    const {since, until} = this.range();
    try {
      const [grouped, daily] = await Promise.all([
        get(`/api/usage?${new URLSearchParams({since, until, group_by: groupBy})}`),
        groupBy === 'day' ? null : get(`/api/usage?${new URLSearchParams({since, until, group_by: 'day'})}`),
      ]);
      if (run !== this.run) return;
      setText($('usage-group-head'), GROUP_TEXT[groupBy]);
      this.renderTable(grouped.rows || [], groupBy);
      this.renderChart((daily || grouped).rows || [], since, until);
      setText(this.status, '');
    } catch (error) {
      if (error.status === 401 || run !== this.run) return;
      setText(this.status, `Could not read usage: ${error.message}`);
    }
  }

  renderTable(rows, groupBy) {
    const body = rows.map((row) => h('tr', {dataset: {group: row[groupBy]}},
      h('th', {scope: 'row'}, row[groupBy] || '(unknown)'),
      h('td', {class: 'num'}, String(row.requests)),
      h('td', {class: 'num'}, String(row.errors)),
      h('td', {class: 'num'}, String(row.prompt_tokens)),
      h('td', {class: 'num'}, String(row.completion_tokens)),
      h('td', {class: 'num'}, row.duration_s.toFixed(1))));
    fillTable(this.rows, body, COLUMNS, 'No requests through /ollama in this period.');
  }

  /** One bar per day of the period (UTC days, as the server groups them), empty days included. */
  renderChart(rows, since, until) {
    const byDay = new Map(rows.map((row) => [row.day, row]));
    const days = [];
    const end = until.slice(0, 10);
    for (let day = new Date(`${since.slice(0, 10)}T00:00:00Z`); ; day = new Date(day.getTime() + 86400 * 1000)) {
      const name = day.toISOString().slice(0, 10);
      days.push(name);
      if (name >= end || days.length > 400) break;
    }
    const most = Math.max(1, ...rows.map((row) => row.requests));
    const bars = days.map((day) => {
      const row = byDay.get(day);
      const requests = row ? row.requests : 0;
      const fill = h('span', {class: 'bar-chart-fill'});
      fill.style.height = `${(requests / most) * 100}%`;
      const label = `${day}: ${requests} request${requests === 1 ? '' : 's'}${row && row.errors ? `, ${row.errors} errors` : ''}`;
      return h('div', {class: 'bar-chart-col', role: 'listitem', title: label, 'aria-label': label, dataset: {day}},
        h('span', {class: 'bar-chart-track'}, fill),
        h('span', {class: 'bar-chart-label', 'aria-hidden': 'true'}, day.slice(5)));
    });
    this.chart.replaceChildren(...bars);
  }
}

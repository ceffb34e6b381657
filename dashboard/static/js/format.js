// Formatting of sizes, percentages and times, as the dashboard shows them.

const DECIMAL_UNITS = ['KB', 'MB', 'GB', 'TB', 'PB'];
const numberFormat = new Intl.NumberFormat('en-US');

/** Bytes as `ollama list` prints them: decimal units, "4.7 GB", "42 MB", "512 B". */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes) || bytes < 0) return '—';
  if (bytes < 1000) return `${Math.round(bytes)} B`;
  let value = bytes;
  let unit = 'B';
  for (const next of DECIMAL_UNITS) {
    if (value < 1000) break;
    value /= 1000;
    unit = next;
  }
  if (value >= 10 || Number.isInteger(value)) return `${Math.floor(value)} ${unit}`;
  return `${value.toFixed(1)} ${unit}`;
}

/** MiB with thousands separators: "24,564 MiB". */
export function formatMiB(mib) {
  if (mib === null || mib === undefined) return 'n/a';
  return `${numberFormat.format(Math.round(mib))} MiB`;
}

/** A short MiB/GiB figure for chart axes: "512 MiB", "12 GiB", "1.5 GiB". */
export function formatMiBShort(mib) {
  if (mib === null || mib === undefined) return '';
  if (Math.abs(mib) < 1024) return `${Math.round(mib)} MiB`;
  const gib = mib / 1024;
  return `${Number.isInteger(gib) || gib >= 10 ? Math.round(gib) : gib.toFixed(1)} GiB`;
}

export function percentOf(part, whole) {
  if (part === null || part === undefined || !whole) return null;
  return (part / whole) * 100;
}

/** "37%"; null (not supported by this GPU) stays visibly "n/a", never 0. */
export function formatPercent(value, digits = 0) {
  if (value === null || value === undefined || !Number.isFinite(value)) return 'n/a';
  return `${value.toFixed(digits)}%`;
}

export function formatTemperature(celsius) {
  return celsius === null || celsius === undefined ? 'n/a' : `${Math.round(celsius)} °C`;
}

export function formatPower(watts) {
  return watts === null || watts === undefined ? "n/a" : `${watts.toFixed(1)} W`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit', second: '2-digit'});
const dateTimeFormat = new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'short'});
const relativeFormat = new Intl.RelativeTimeFormat(undefined, {numeric: 'auto'});

export function formatClock(date) {
  return timeFormat.format(date);
}

/** An ISO time as "3 days ago" (the full date in the tooltip). */
export function formatRelative(iso, now = Date.now()) {
  const time = Date.parse(iso);
  if (!Number.isFinite(time)) return '—';
  let seconds = (time - now) / 1000;
  const steps = [[60, 'second'], [60, 'minute'], [24, 'hour'], [30, 'day'], [12, 'month'], [Infinity, 'year']];
  for (const [size, unit] of steps) {
    if (Math.abs(seconds) < size) return relativeFormat.format(Math.round(seconds), unit);
    seconds /= size;
  }
  return dateTimeFormat.format(time);
}

export function formatDateTime(iso) {
  const time = Date.parse(iso);
  return Number.isFinite(time) ? dateTimeFormat.format(time) : '—';
}

/** When a loaded model will be unloaded; keep_alive -1 makes Ollama answer a far-future date. */
export function formatUntil(iso, now = Date.now()) {
  const time = Date.parse(iso);
  if (!Number.isFinite(time)) return '—';
  if (time - now > 10 * 365 * 24 * 3600 * 1000) return 'until unloaded';
  return formatRelative(iso, now);
}

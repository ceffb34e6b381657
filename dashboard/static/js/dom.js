// Tiny DOM helpers. Text always goes in through textContent, never innerHTML: model names and
// process names come from outside and must never be parsed as markup.

/** Create an element: h('button', {class: 'x', type: 'button', onclick: fn}, 'text', child). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if ((typeof value === 'boolean' || typeof value === 'number') && key in el) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (id) => document.getElementById(id);

/** Set text only when it changed (keeps screen readers and layout calm on frequent updates). */
export function setText(el, text) {
  const value = text ?? '';
  if (el.textContent !== value) el.textContent = value;
}

/** Replace a table body with rows, or one full-width "empty" row with a message. */
export function fillTable(tbody, rows, columns, emptyText) {
  if (rows.length) {
    tbody.replaceChildren(...rows);
  } else {
    tbody.replaceChildren(h('tr', {class: 'empty'}, h('td', {colspan: String(columns)}, emptyText)));
  }
}

/** Announce a short message to screen readers through the page's polite live region. */
export function announce(message) {
  const region = $('announcer');
  if (!region) return;
  region.textContent = '';
  // A fresh text node after clearing makes repeated identical messages announced again.
  window.setTimeout(() => { region.textContent = message; }, 50);
}

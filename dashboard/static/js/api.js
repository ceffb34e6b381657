// The one place the page speaks HTTP to the server: bearer token, JSON, errors as ApiError.

const TOKEN_KEY = 'vram-dashboard.token';

/** An error answer (or no answer) from the server; `message` is the server's `error` text. */
export class ApiError extends Error {
  constructor(status, message, body = null, response = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.body = body;
    this.retryAfter = response?.headers.get('Retry-After') ?? null;
  }
}

let unauthorizedHandler = () => {};

/** Called once, with the server's message, whenever a request with a token answers 401. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

export function getToken() {
  try {
    return window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;  // storage disabled: the user logs in again on each page load
  }
}

export function setToken(token) {
  try {
    if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
    else window.sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: the token lives only in this page (see currentToken).
  }
  currentToken = token || null;
}

let currentToken = getToken();

export function token() {
  return currentToken;
}

/**
 * Send a request; resolve with the JSON body of a 2xx answer, else reject with ApiError.
 * `keepSession`: a 401 here means something else than an ended session (a wrong current password).
 */
export async function api(path, {method = 'GET', body, signal, keepSession = false} = {}) {
  const headers = {Accept: 'application/json'};
  const sentToken = currentToken;
  if (sentToken) headers.Authorization = `Bearer ${sentToken}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, cache: 'no-store', credentials: 'omit',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'The dashboard server cannot be reached. Is it still running?');
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.ok) return data;
  const message = (data && typeof data.error === 'string' && data.error)
    || `The server answered ${response.status} ${response.statusText}`.trim();
  if (response.status === 401 && !keepSession && sentToken && sentToken === currentToken) {
    unauthorizedHandler(message);
  }
  throw new ApiError(response.status, message, data, response);
}

export const get = (path, options) => api(path, {...options, method: 'GET'});
export const post = (path, body, options) => api(path, {...options, method: 'POST', body: body ?? {}});
export const patch = (path, body, options) => api(path, {...options, method: 'PATCH', body: body ?? {}});
export const del = (path, options) => api(path, {...options, method: 'DELETE'});

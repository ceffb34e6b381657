// What each role may do, as the server's roles table says (auth/permissions.py), so the page shows
// only the controls a role may use. The server still decides: this only hides what would be a 403.

export const ROLES = ['viewer', 'user', 'operator', 'admin'];
export const SCOPES = ['read', 'models', 'proxy', 'metrics'];
// The least role each key scope needs.
const SCOPE_ROLE = {read: 'viewer', models: 'operator', proxy: 'user', metrics: 'viewer'};
export const DEFAULT_SCOPES = ['read', 'proxy'];
export const SCOPE_TEXT = {
  read: 'read (GPU, models, usage)', models: 'models (load, unload, download, delete)',
  proxy: 'proxy (/ollama inference)', metrics: 'metrics (/metrics)',
};

const rank = (role) => ROLES.indexOf(role);

export const atLeast = (role, needed) => rank(role) >= rank(needed);
export const canManageModels = (role) => atLeast(role, 'operator');
export const seesEveryonesUsage = (role) => atLeast(role, 'operator');
export const isAdmin = (role) => role === 'admin';
export const scopesFor = (role) => SCOPES.filter((scope) => atLeast(role, SCOPE_ROLE[scope]));

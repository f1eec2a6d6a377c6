// coatcheck web console: plain ES module, no framework, no build step, no external assets.
//
// Security rules for this file:
// - Server data is rendered with text nodes only (el() below); never innerHTML. Audit
//   records, approval summaries and agent names can carry attacker-chosen text.
// - The admin key lives in sessionStorage only (never localStorage, never a cookie), and
//   travels as `Authorization: Bearer`, so there is no ambient credential to forge (CSRF).

const KEY_STORE = 'coatcheck.adminKey';
const AUDIT_PAGE = 50;
const AUDIT_CHUNK = 500;
const AUDIT_SCAN_MAX = 5000;
const REFRESH_MS = 5000;
/** A workflow tree changes while its subtasks run: read it again this often. */
const WORKFLOW_REFRESH_MS = 2000;

// ---------------------------------------------------------------------------
// DOM helpers

/**
 * Build an element. Children that are strings or numbers become text nodes; null and
 * false are skipped. Attributes starting with `on` are event listeners.
 */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
    else if (name === 'class') node.className = value;
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const $ = (selector) => document.querySelector(selector);

function show(...children) {
  const main = $('#main');
  main.replaceChildren();
  append(main, children);
}

function announce(text, kind = 'info') {
  const status = $('#status');
  status.dataset.kind = kind;
  status.textContent = text;
}

let uid = 0;
const nextId = (prefix) => `${prefix}-${++uid}`;

/** `2026-01-02 03:04:05Z` from an ISO string or epoch milliseconds. */
function when(value) {
  if (value === null || value === undefined || value === '') return el('span', { class: 'muted' }, '—');
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const iso = date.toISOString();
  return el('time', { datetime: iso }, `${iso.slice(0, 10)} ${iso.slice(11, 19)}Z`);
}

const dash = () => el('span', { class: 'muted' }, '—');
const orDash = (value) => (value === null || value === undefined || value === '' ? dash() : String(value));
const list = (values) => (values && values.length > 0 ? values.join(', ') : dash());
const badge = (status) =>
  el('span', { class: `badge badge-${String(status).replace(/[^a-z-]/g, '')}` }, status);
const code = (text) => el('code', {}, text);
/** Ids and event types: kept on one line. */
const ident = (text) => el('code', { class: 'nowrap' }, text);

/**
 * A data table. columns: [{ label, cell(row) → node|string }]. Headers get scope=col;
 * the first column is the row header.
 */
function table(caption, columns, rows, empty = 'Nothing here yet.') {
  if (rows.length === 0) return el('p', { class: 'empty' }, empty);
  return el(
    'div',
    { class: 'table-wrap' },
    el(
      'table',
      {},
      el('caption', {}, caption),
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          columns.map((c) => el('th', { scope: 'col' }, c.label)),
        ),
      ),
      el(
        'tbody',
        {},
        rows.map((row) =>
          el(
            'tr',
            {},
            columns.map((c, i) => el(i === 0 ? 'th' : 'td', i === 0 ? { scope: 'row' } : {}, c.cell(row))),
          ),
        ),
      ),
    ),
  );
}

/** A definition list from [label, value] pairs. */
function facts(pairs) {
  return el(
    'dl',
    { class: 'facts' },
    pairs.map(([label, value]) => [el('dt', {}, label), el('dd', {}, value)]),
  );
}

function heading(text, ...extra) {
  return el('div', { class: 'page-head' }, el('h1', { tabindex: '-1' }, text), extra);
}

/** Key/value text of a JSON object, for details that have no fixed shape. */
function kv(data) {
  if (data === null || data === undefined) return dash();
  const entries = Object.entries(data).filter(([, v]) => v !== undefined);
  if (entries.length === 0) return dash();
  return el(
    'ul',
    { class: 'kv' },
    entries.map(([k, v]) => el('li', {}, el('span', { class: 'k' }, k), ' ', code(flat(v)))),
  );
}

function flat(value) {
  if (value === null) return 'null';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** Hide a password that someone put in a connection URL. */
function safeUrl(text) {
  try {
    const url = new URL(text);
    if (url.password !== '') url.password = '***';
    return url.toString();
  } catch {
    return text;
  }
}

// ---------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const adminKey = () => sessionStorage.getItem(KEY_STORE);

async function api(method, path, body) {
  const key = adminKey();
  if (key === null) throw new ApiError(401, 'CC_ERR_ADMIN_UNAUTHORIZED', 'not logged in');
  const init = {
    method,
    headers: { authorization: `Bearer ${key}` },
    cache: 'no-store',
    credentials: 'omit',
  };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'CC_ERR_UNAVAILABLE', 'the gateway did not answer (is coatcheck serve running?)');
  }
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const error = payload?.error ?? {};
    throw new ApiError(
      response.status,
      error.code ?? 'CC_ERR_INTERNAL',
      error.message ?? `request failed (${response.status})`,
    );
  }
  return payload;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------
// Login

function loggedIn(yes) {
  $('#nav').hidden = !yes;
  $('#logout').hidden = !yes;
}

function loginPage(message) {
  loggedIn(false);
  document.title = 'Log in · coatcheck console';
  const errorId = 'login-error';
  const input = el('input', {
    id: 'admin-key',
    name: 'admin-key',
    type: 'password',
    autocomplete: 'off',
    spellcheck: 'false',
    required: true,
    'aria-describedby': message ? `${errorId} key-help` : 'key-help',
  });
  const error = el('p', { id: errorId, class: 'error', role: 'alert' }, message ?? '');
  error.hidden = !message;
  const form = el(
    'form',
    { class: 'login', 'aria-labelledby': 'login-title' },
    el('h1', { id: 'login-title', tabindex: '-1' }, 'Log in'),
    error,
    el('label', { for: 'admin-key' }, 'Admin key'),
    input,
    el(
      'p',
      { id: 'key-help', class: 'help' },
      'The key printed by coatcheck init (also in the home directory, file admin.key). ',
      'It is kept in this tab only (sessionStorage) and sent to this gateway as a bearer header.',
    ),
    el('button', { type: 'submit' }, 'Log in'),
  );
  // Single sign-on, when the gateway has an OIDC issuer for the console.
  fetch('/console/oidc/config', { headers: { accept: 'application/json' } })
    .then((r) => (r.ok ? r.json() : { enabled: false }))
    .then((config) => {
      if (config.enabled !== true) return;
      form.append(
        el(
          'p',
          { class: 'help' },
          'Or ',
          el('a', { id: 'sso', href: '/console/oidc/login' }, 'sign in with single sign-on'),
          '.',
        ),
      );
    })
    .catch(() => undefined);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (key === '') return;
    sessionStorage.setItem(KEY_STORE, key);
    try {
      await api('GET', '/v1/status');
    } catch (e) {
      sessionStorage.removeItem(KEY_STORE);
      const text =
        e instanceof ApiError && e.status === 401
          ? 'That admin key was not accepted. Check it and try again.'
          : `Could not log in: ${e.message}`;
      error.textContent = text;
      error.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.setAttribute('aria-describedby', `${errorId} key-help`);
      input.focus();
      return;
    }
    input.value = '';
    announce('Logged in.');
    if (location.hash === '' || location.hash === '#/login') location.hash = '#/approvals';
    else route();
  });
  show(form);
  input.focus();
}

function logout(message) {
  sessionStorage.removeItem(KEY_STORE);
  stopRefresh();
  $('#foot').replaceChildren();
  announce(message ?? 'Logged out.');
  history.replaceState(null, '', '#/login');
  loginPage();
}

// ---------------------------------------------------------------------------
// Pages

const pages = {
  approvals: approvalsPage,
  approval: approvalPage,
  audit: auditPage,
  sessions: sessionsPage,
  session: sessionPage,
  workflows: workflowsPage,
  workflow: workflowPage,
  tickets: ticketsPage,
  secrets: secretsPage,
  agents: agentsPage,
  connections: connectionsPage,
  relays: relaysPage,
};

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const [path, query = ''] = hash.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

let refreshTimer = null;
function stopRefresh() {
  if (refreshTimer !== null) clearInterval(refreshTimer);
  refreshTimer = null;
}

let routeSerial = 0;
async function route() {
  stopRefresh();
  // Back from single sign-on: the console session token arrives in the fragment (never
  // in a URL a server logs). Keep it like an admin key, and take it out of the address.
  const arrived = parseHash();
  if (arrived.parts[0] === 'login' && arrived.query.get('session')?.startsWith('ccu_')) {
    sessionStorage.setItem(KEY_STORE, arrived.query.get('session'));
    history.replaceState(null, '', '#/approvals');
  }
  if (adminKey() === null) {
    loginPage();
    return;
  }
  loggedIn(true);
  const { parts, query } = parseHash();
  let [section = 'approvals', id] = parts;
  if (section === 'login') section = 'approvals';
  const name =
    id !== undefined && (section === 'approvals' || section === 'sessions' || section === 'workflows')
      ? section.slice(0, -1)
      : section;
  const page = pages[name];
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.page === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const serial = ++routeSerial;
  if (page === undefined) {
    show(
      heading('Not found'),
      el('p', {}, 'There is no such page. ', el('a', { href: '#/approvals' }, 'Go to approvals')),
    );
    return;
  }
  $('#main').setAttribute('aria-busy', 'true');
  try {
    const view = await page({ id, query, serial });
    if (serial !== routeSerial) return; // the user moved on meanwhile
    show(view);
    document.title = `${$('#main h1')?.textContent ?? 'coatcheck'} · coatcheck console`;
    $('#main h1')?.focus({ preventScroll: true });
    footer();
  } catch (error) {
    if (serial !== routeSerial) return;
    failed(error);
  } finally {
    $('#main').removeAttribute('aria-busy');
  }
}

/** Errors from an action or a page: a 401 sends the user back to the login page. */
function failed(error) {
  if (error instanceof ApiError && error.status === 401) {
    sessionStorage.removeItem(KEY_STORE);
    stopRefresh();
    announce('');
    loginPage('Your admin key was not accepted (it may have been changed). Log in again.');
    return true;
  }
  const text =
    error instanceof ApiError ? `${error.code}: ${error.message}` : String(error?.message ?? error);
  announce(text, 'error');
  if ($('#main').childElementCount === 0 || $('#main noscript')) {
    show(heading('Something went wrong'), el('p', { class: 'error' }, text));
  }
  return false;
}

async function footer() {
  try {
    const status = await api('GET', '/v1/status');
    $('#foot').replaceChildren(
      el(
        'p',
        {},
        `Store ${status.store} · master key ${status.masterKey} · audit head #${status.auditHead} · `,
        el('a', { href: '/v1/openapi.json' }, 'API (OpenAPI)'),
      ),
    );
  } catch {
    // The footer is informational; page errors are reported by the page.
  }
}

/**
 * Run an action from a button: disable it, report the outcome, and show the page as it
 * now is (also after a refusal: the request may have been decided elsewhere meanwhile).
 */
async function act(button, work, success) {
  button.disabled = true;
  try {
    await work();
    announce(success);
  } catch (error) {
    if (failed(error)) return; // back at the login page
  }
  await route();
}

// --- approvals ---------------------------------------------------------------

function signer() {
  const as = sessionStorage.getItem('coatcheck.as') ?? '';
  const groups = (sessionStorage.getItem('coatcheck.groups') ?? '')
    .split(',')
    .map((g) => g.trim())
    .filter(Boolean);
  return { ...(as ? { as } : {}), ...(groups.length > 0 ? { groups } : {}) };
}

function signerForm() {
  const as = el('input', {
    id: 'sign-as',
    type: 'text',
    autocomplete: 'name',
    value: sessionStorage.getItem('coatcheck.as') ?? '',
  });
  const groups = el('input', {
    id: 'sign-groups',
    type: 'text',
    autocomplete: 'off',
    'aria-describedby': 'sign-help',
    value: sessionStorage.getItem('coatcheck.groups') ?? '',
  });
  const save = () => {
    sessionStorage.setItem('coatcheck.as', as.value.trim());
    sessionStorage.setItem('coatcheck.groups', groups.value.trim());
  };
  as.addEventListener('change', save);
  groups.addEventListener('change', save);
  return el(
    'details',
    { class: 'signer' },
    el('summary', {}, 'Sign decisions as…'),
    el(
      'div',
      { class: 'row' },
      el('div', {}, el('label', { for: 'sign-as' }, 'Name'), as),
      el('div', {}, el('label', { for: 'sign-groups' }, 'Groups (comma-separated)'), groups),
    ),
    el(
      'p',
      { id: 'sign-help', class: 'help' },
      'The admin key may decide as a named person in named groups, for requests that need approvers from a group. Left empty, decisions are recorded as admin:api.',
    ),
  );
}

function decisionControls(approval, { compact }) {
  const reasonId = nextId('reason');
  const reason = el('input', {
    id: reasonId,
    type: 'text',
    maxlength: '500',
    autocomplete: 'off',
    class: 'reason',
    placeholder: 'Reason (optional)',
  });
  const approve = el('button', { type: 'button', class: 'approve' }, 'Approve');
  const deny = el('button', { type: 'button', class: 'deny' }, 'Deny');
  const label = compact ? `Reason for denying ${approval.id} (optional)` : 'Reason for denying (optional)';
  approve.setAttribute('aria-label', compact ? `Approve ${approval.id}` : 'Approve');
  deny.setAttribute('aria-label', compact ? `Deny ${approval.id}` : 'Deny');
  approve.addEventListener('click', () =>
    act(
      approve,
      () => api('POST', `/v1/approvals/${enc(approval.id)}/approve`, signer()),
      `Approved ${approval.id}.`,
    ),
  );
  deny.addEventListener('click', () =>
    act(
      deny,
      () =>
        api('POST', `/v1/approvals/${enc(approval.id)}/deny`, {
          ...signer(),
          groups: undefined,
          ...(reason.value.trim() ? { reason: reason.value.trim() } : {}),
        }),
      `Denied ${approval.id}.`,
    ),
  );
  return el(
    'div',
    { class: 'decide' },
    el('label', { for: reasonId, class: compact ? 'visually-hidden' : undefined }, label),
    reason,
    el('div', { class: 'buttons' }, approve, deny),
  );
}

function operationText(approval) {
  const op = approval.operation ?? {};
  return el(
    'div',
    { class: 'op' },
    el('span', { class: 'muted' }, `${op.action ?? '?'} on ${op.connection ?? '?'}`),
    // A SQL preview is the summary with its parameters laid out: show it once.
    op.kind === 'sql' && typeof approval.preview === 'string' ? null : code(op.summary ?? ''),
    previewShort(approval),
  );
}

/**
 * The cleaned preview of the exact operation (tickets by id, secrets masked by the
 * gateway). Attacker-influenced text: a text node in a <pre>, never markup.
 */
function previewShort(approval) {
  if (typeof approval.preview !== 'string') return null;
  const short = el('pre', { class: 'preview', 'aria-label': `Preview of ${approval.id}` }, approval.preview);
  if (!approval.previewTruncated) return short;
  const full = el('pre', { class: 'preview preview-full' }, 'Loading…');
  const more = el('details', { class: 'preview-more' }, el('summary', {}, 'Whole operation'), full);
  let loaded = false;
  more.addEventListener('toggle', async () => {
    if (!more.open || loaded) return;
    loaded = true;
    try {
      const whole = await api('GET', `/v1/approvals/${enc(approval.id)}`);
      full.textContent = whole.preview ?? '';
      if (whole.previewTruncated) full.after(previewCutNote());
    } catch (error) {
      loaded = false;
      full.textContent = 'Could not load the whole operation.';
      failed(error);
    }
  });
  return [short, more];
}

const previewCutNote = () =>
  el('p', { class: 'muted' }, 'The gateway kept the first 64 KiB of this operation; the rest is not shown.');

function previewFull(approval) {
  if (typeof approval.preview !== 'string') return dash();
  return [
    el('pre', { class: 'preview preview-full', 'aria-label': `Preview of ${approval.id}` }, approval.preview),
    approval.previewTruncated ? previewCutNote() : null,
    el(
      'p',
      { class: 'help' },
      'Cleaned by the gateway: tickets appear by id, vault secrets and detected secrets are masked. ',
      'Display only: the approval is bound to the exact operation below, not to this text.',
    ),
  ];
}

async function approvalsPage({ serial }) {
  const all = await api('GET', '/v1/approvals');
  const pending = all.filter((a) => a.status === 'pending');
  const decided = all.filter((a) => a.status !== 'pending').slice(0, 25);
  const refresh = el('button', { type: 'button', class: 'secondary' }, 'Refresh');
  refresh.addEventListener('click', () => route());
  // New requests show up on their own, unless the user is typing a reason.
  const seen = pending.map((a) => a.id).join(',');
  if (serial !== routeSerial) return [];
  refreshTimer = setInterval(async () => {
    const typing = [...document.querySelectorAll('#main input')].some(
      (i) => i.value !== '' || i === document.activeElement,
    );
    // Nor while the user reads a whole operation.
    const reading = document.querySelector('#main details[open]') !== null;
    if (typing || reading || document.hidden) return;
    try {
      const now = (await api('GET', '/v1/approvals?status=pending')).map((a) => a.id).join(',');
      if (now !== seen) route();
    } catch (error) {
      failed(error);
    }
  }, REFRESH_MS);
  return [
    heading('Approvals', refresh),
    el(
      'section',
      { 'aria-labelledby': 'pending-title' },
      el('h2', { id: 'pending-title' }, `Pending (${pending.length})`),
      signerForm(),
      table(
        'Operations waiting for a human decision, newest first',
        [
          { label: 'Request', cell: (a) => el('a', { href: `#/approvals/${enc(a.id)}` }, a.id) },
          { label: 'Requester', cell: (a) => a.requesterName },
          { label: 'Operation', cell: operationText },
          {
            label: 'Needs',
            cell: (a) =>
              `${a.quorum} approver${a.quorum === 1 ? '' : 's'}${a.approvers.length ? ` from ${a.approvers.join(', ')}` : ''}`,
          },
          { label: 'Requested', cell: (a) => when(a.createdAt) },
          { label: 'Expires', cell: (a) => when(a.expiresAt) },
          { label: 'Decision', cell: (a) => decisionControls(a, { compact: true }) },
        ],
        pending,
        'No operation is waiting for approval.',
      ),
    ),
    el(
      'section',
      { 'aria-labelledby': 'decided-title' },
      el('h2', { id: 'decided-title' }, 'Recently decided'),
      table(
        'The latest decided, expired and used requests',
        [
          { label: 'Request', cell: (a) => el('a', { href: `#/approvals/${enc(a.id)}` }, a.id) },
          { label: 'Status', cell: (a) => badge(a.status) },
          { label: 'Requester', cell: (a) => a.requesterName },
          { label: 'Operation', cell: operationText },
          { label: 'Decided by', cell: (a) => list(a.decisions.map((d) => `${d.name} (${d.decision})`)) },
          { label: 'Requested', cell: (a) => when(a.createdAt) },
        ],
        decided,
        'No decisions yet.',
      ),
    ),
  ];
}

async function approvalPage({ id }) {
  const a = await api('GET', `/v1/approvals/${enc(id)}`);
  const op = a.operation ?? {};
  return [
    el('p', { class: 'crumbs' }, el('a', { href: '#/approvals' }, '← Approvals')),
    heading(`Approval ${a.id}`),
    facts([
      ['Status', badge(a.status)],
      ['Requester', [a.requesterName, ' ', el('span', { class: 'muted' }, `(${a.requester})`)]],
      ['Kind', op.kind ?? dash()],
      ['Connection', op.connection ?? dash()],
      ['Action', op.action ?? dash()],
      ['Operation', el('pre', {}, op.summary ?? '')],
      ['Preview', previewFull(a)],
      ['Bound to', kv(op.detail)],
      ['Approvers', a.approvers.length ? `${a.quorum} from ${a.approvers.join(', ')}` : `${a.quorum} (any)`],
      ['Use', a.singleUse ? 'single use' : 'time-boxed'],
      ['Requested', when(a.createdAt)],
      ...(a.status === 'pending' ? [['Expires', when(a.expiresAt)]] : []),
      ...(a.status === 'approved' ? [['Valid until', when(a.expiresAt)]] : []),
    ]),
    el('h2', {}, 'Decisions'),
    table(
      `Decisions on ${a.id}`,
      [
        { label: 'By', cell: (d) => d.name },
        { label: 'Decision', cell: (d) => badge(d.decision) },
        { label: 'At', cell: (d) => when(d.at) },
        { label: 'Reason', cell: (d) => orDash(d.reason) },
      ],
      a.decisions,
      'No decision yet.',
    ),
    a.status === 'pending'
      ? [el('h2', {}, 'Decide'), signerForm(), decisionControls(a, { compact: false })]
      : null,
  ];
}

// --- agent names -------------------------------------------------------------

/** agt_… id -> name, read from /v1/agents when a page that shows principals renders. */
let agentNames = new Map();

async function loadAgentNames() {
  try {
    const agents = await api('GET', '/v1/agents');
    agentNames = new Map(agents.map((a) => [a.id, a.name]));
  } catch {
    // Names are a convenience: the ids are still shown.
  }
}

/** `agent:agt_…` (or a bare id) as `agent:<name>`; the full reference in the hover title. */
function principalName(ref) {
  if (typeof ref !== 'string') return ref;
  return ref.replace(/agt_[0-9A-Za-z]+/g, (id) => agentNames.get(id) ?? id);
}

function who(ref) {
  if (ref === null || ref === undefined || ref === '') return el('span', { class: 'muted' }, '—');
  const name = principalName(ref);
  return el('span', { class: 'who', title: ref }, name);
}

// --- audit -------------------------------------------------------------------

function auditMatches(record, filter) {
  if (filter.type && !record.type.startsWith(filter.type)) return false;
  if (
    filter.actor &&
    !`${record.actor} ${principalName(record.actor)}`.toLowerCase().includes(filter.actor.toLowerCase())
  )
    return false;
  if (filter.text && !JSON.stringify(record).toLowerCase().includes(filter.text.toLowerCase())) return false;
  return true;
}

/**
 * Newest first, AUDIT_PAGE matches per page: reads /v1/audit/records backwards in
 * chunks (after = a lower bound) from `before` (exclusive) until the page is full.
 */
async function auditPage({ query }) {
  const filter = {
    type: query.get('type') ?? '',
    actor: query.get('actor') ?? '',
    text: query.get('text') ?? '',
  };
  await loadAgentNames();
  const head = (await api('GET', '/v1/status')).auditHead;
  const requested = Number(query.get('before'));
  let upper = Number.isInteger(requested) && requested > 0 ? Math.min(requested, head + 1) : head + 1;
  const start = upper;
  const shown = [];
  let scanned = 0;
  while (upper > 1 && shown.length < AUDIT_PAGE && scanned < AUDIT_SCAN_MAX) {
    const lower = Math.max(0, upper - 1 - AUDIT_CHUNK);
    const chunk = (await api('GET', `/v1/audit/records?after=${lower}&limit=${AUDIT_CHUNK}`)).filter(
      (r) => r.seq < upper,
    );
    scanned += chunk.length;
    let next = lower + 1;
    for (let i = chunk.length - 1; i >= 0; i--) {
      const record = chunk[i];
      if (auditMatches(record, filter)) shown.push(record);
      if (shown.length === AUDIT_PAGE) {
        next = record.seq;
        break;
      }
    }
    upper = next;
  }

  const field = (name, label, help) => {
    const id = `audit-${name}`;
    return el(
      'div',
      {},
      el('label', { for: id }, label),
      el('input', {
        id,
        name,
        type: 'search',
        value: filter[name],
        autocomplete: 'off',
        'aria-describedby': `${id}-help`,
      }),
      el('p', { id: `${id}-help`, class: 'help' }, help),
    );
  };
  const form = el(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter audit records' },
    field('type', 'Type starts with', 'e.g. approval. or token.exchange'),
    field('actor', 'Actor contains', 'e.g. agent:, an agent name or human:ada'),
    field('text', 'Text contains', 'searched in the whole record'),
    el(
      'div',
      { class: 'buttons' },
      el('button', { type: 'submit' }, 'Filter'),
      el('a', { href: '#/audit', class: 'button secondary' }, 'Clear'),
    ),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const name of ['type', 'actor', 'text']) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    const text = params.toString();
    location.hash = `#/audit${text ? `?${text}` : ''}`;
  });
  const pageLink = (before, label) => {
    const params = new URLSearchParams();
    for (const name of ['type', 'actor', 'text']) if (filter[name]) params.set(name, filter[name]);
    if (before !== null) params.set('before', String(before));
    const text = params.toString();
    return el('a', { href: `#/audit${text ? `?${text}` : ''}`, class: 'button secondary' }, label);
  };
  const filtered = filter.type || filter.actor || filter.text;
  const range =
    shown.length > 0
      ? `Showing ${shown.length} record${shown.length === 1 ? '' : 's'}, #${shown[0].seq} to #${shown.at(-1).seq}, of ${head}.`
      : `No record matches${upper > 1 ? ` in the ${scanned} records searched` : ''}.`;
  return [
    heading('Audit log'),
    form,
    el(
      'p',
      { class: 'muted', id: 'audit-range' },
      range,
      upper > 1 && shown.length < AUDIT_PAGE && filtered ? ` Searched back to #${upper}.` : '',
    ),
    table(
      'Audit records, newest first',
      [
        { label: '#', cell: (r) => String(r.seq) },
        { label: 'Time', cell: (r) => when(r.ts) },
        { label: 'Type', cell: (r) => ident(r.type) },
        { label: 'Actor', cell: (r) => who(r.actor) },
        {
          label: 'Data',
          cell: (r) => {
            const text = JSON.stringify(r.data);
            if (text.length <= 120) return code(text);
            return el(
              'details',
              {},
              el('summary', {}, code(`${text.slice(0, 100)}…`)),
              el('pre', {}, JSON.stringify(r.data, null, 2)),
            );
          },
        },
      ],
      shown,
      'No audit records.',
    ),
    el(
      'nav',
      { class: 'pager', 'aria-label': 'Audit pages' },
      start <= head ? pageLink(null, 'Newest') : null,
      upper > 1 ? pageLink(upper, 'Older') : null,
    ),
  ];
}

// --- sessions ------------------------------------------------------------------

const SESSION_FILTERS = ['agent', 'connection', 'ticket', 'text', 'since', 'until'];

async function sessionsPage({ query }) {
  const before = Number(query.get('before'));
  await loadAgentNames();
  const filter = Object.fromEntries(SESSION_FILTERS.map((name) => [name, query.get(name) ?? '']));
  const params = new URLSearchParams({ limit: '50' });
  for (const name of ['agent', 'connection', 'ticket', 'text'])
    if (filter[name]) params.set(name, filter[name]);
  for (const name of ['since', 'until']) {
    const ms = Date.parse(filter[name]);
    if (filter[name] && Number.isFinite(ms)) params.set(name, String(ms));
  }
  if (Number.isInteger(before) && before > 0) params.set('before', String(before));
  const rows = await api('GET', `/v1/sessions?${params}`);
  const field = (name, label, help, type = 'search') => {
    const id = nextId(`session-${name}`);
    return el(
      'div',
      {},
      el('label', { for: id }, label),
      el('input', {
        id,
        name,
        type,
        value: filter[name],
        autocomplete: 'off',
        'aria-describedby': `${id}-help`,
      }),
      el('p', { id: `${id}-help`, class: 'help' }, help),
    );
  };
  const form = el(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter sessions' },
    field('agent', 'Agent', 'an agent name'),
    field('connection', 'Connection', 'full recordings of this connection'),
    field('ticket', 'Ticket', 'a ticket id (tkt_…) it used or was handed'),
    field('text', 'Statement or URL contains', 'searched in full recordings'),
    field('since', 'Started after', 'e.g. 2026-12-04T10:00Z', 'text'),
    field('until', 'Started before', 'e.g. 2026-12-04T12:00Z', 'text'),
    el(
      'div',
      { class: 'buttons' },
      el('button', { type: 'submit' }, 'Filter'),
      el('a', { href: '#/sessions', class: 'button secondary' }, 'Clear'),
    ),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const name of SESSION_FILTERS) {
      const value = form.elements[name].value.trim();
      if (value) next.set(name, value);
    }
    const text = next.toString();
    location.hash = `#/sessions${text ? `?${text}` : ''}`;
  });
  const older = new URLSearchParams();
  for (const name of SESSION_FILTERS) if (filter[name]) older.set(name, filter[name]);
  if (rows.length > 0) older.set('before', String(rows.at(-1).startedAt));
  return [
    heading('Sessions'),
    el(
      'p',
      { class: 'muted' },
      'Recorded data-path sessions, newest first. Full recordings hold what the client sent and received, with tickets in place of secrets.',
    ),
    form,
    table(
      'Recorded sessions',
      [
        { label: 'Session', cell: (s) => el('a', { href: `#/sessions/${enc(s.id)}` }, s.id) },
        { label: 'Front-end', cell: (s) => s.frontend },
        { label: 'Principal', cell: (s) => who(s.principal) },
        { label: 'Connection', cell: (s) => orDash(s.connection) },
        {
          label: 'Request',
          cell: (s) => (s.method || s.path ? code(`${s.method ?? ''} ${s.path ?? ''}`.trim()) : dash()),
        },
        { label: 'Status', cell: (s) => orDash(s.status) },
        { label: 'Outcome', cell: (s) => badge(s.outcome === 'ok' ? 'ok' : 'error') },
        { label: 'Recorded', cell: (s) => s.recorded ?? 'metadata' },
        { label: 'Started', cell: (s) => when(s.startedAt) },
        { label: 'Duration', cell: (s) => `${Math.max(0, s.endedAt - s.startedAt)} ms` },
      ],
      rows,
      'No recorded sessions.',
    ),
    rows.length === 50
      ? el(
          'nav',
          { class: 'pager', 'aria-label': 'Session pages' },
          el('a', { href: `#/sessions?${older}`, class: 'button secondary' }, 'Older'),
        )
      : null,
  ];
}

// --- the session player --------------------------------------------------------

/** Terminal and bidi controls shown as escapes (the agent or the upstream wrote this text). */
const visible = (text) =>
  String(text).replace(
    /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`,
  );

function payloadText(p) {
  if (p === null || typeof p !== 'object') return '';
  const body =
    p.text !== undefined
      ? p.text
      : p.base64 !== undefined
        ? `[binary, ${p.bytes} bytes; base64] ${p.base64}`
        : '';
  return p.truncated ? `${body}\n[… not all ${p.bytes} bytes were recorded]` : body;
}

/** One event as a person would have seen it (the same shapes as `coatcheck sessions replay`). */
function recordedText(e) {
  const d = e.data ?? {};
  const headers = (prefix) =>
    Array.isArray(d.headers) ? d.headers.map(([n, v]) => `${prefix} ${n}: ${v}`) : [];
  switch (e.kind) {
    case 'pg.query':
      return `=> ${d.sql}`;
    case 'pg.parse':
      return `=> [prepare] ${d.sql}`;
    case 'pg.bind':
      return `   [bind ${(d.params ?? []).map((p, i) => `$${i + 1} = ${p === null ? 'NULL' : payloadText(p)}`).join(', ')}]`;
    case 'pg.result': {
      if (!Array.isArray(d.columns)) return d.tag || null;
      const rows = (d.rows ?? []).map((r) => r.map((c) => (c === null ? '' : payloadText(c))).join(' | '));
      const n = d.rowCount ?? rows.length;
      return [d.columns.join(' | '), ...rows, `(${n} ${n === 1 ? 'row' : 'rows'})`].join('\n');
    }
    case 'pg.error':
      return `${d.severity ?? 'ERROR'}:  ${d.message ?? ''}`;
    case 'pg.notice':
      return `${d.severity ?? 'NOTICE'}:  ${d.message ?? ''}`;
    case 'http.request':
      return [`> ${d.method} ${d.url}`, ...headers('>'), ...(d.body ? ['>', payloadText(d.body)] : [])].join(
        '\n',
      );
    case 'http.response':
      return [`< HTTP ${d.status}`, ...headers('<')].join('\n');
    case 'http.body':
      return payloadText(d.body);
    case 'sse.data':
      return payloadText(d.data);
    case 'ws.message':
    case 'mcp.message':
      return `${e.dir === 'in' ? '>' : '<'} ${payloadText(d.data ?? d.message)}`;
    case 'gateway.refused':
      return `-- coatcheck refused: ${d.code}`;
    case 'session.terminated':
      return `-- coatcheck ended the session: ${d.code}`;
    case 'recording.truncated':
      return '-- recording truncated: later events were counted, not kept';
    case 'session.end':
      return `-- session ended: ${d.outcome}`;
    case 'pg.ready':
    case 'pg.parameter':
    case 'pg.execute':
      return null;
    default:
      return `-- ${e.kind}`;
  }
}

function player(recording) {
  const items = recording.events
    .map((e) => ({ at: e.at, kind: e.kind, text: recordedText(e) }))
    .filter((e) => e.text !== null);
  let cursor = -1;
  let timer = null;
  const status = el('p', { class: 'muted', role: 'status', 'aria-live': 'polite' });
  const list = el('ol', { class: 'timeline', 'aria-label': 'Recorded events' });
  const rows = items.map((item, i) => {
    const li = el(
      'li',
      { class: 'pending', 'data-kind': item.kind },
      el('span', { class: 'at' }, `+${item.at} ms`),
      el('pre', {}, visible(item.text)),
    );
    li.addEventListener('click', () => goTo(i));
    return li;
  });
  append(list, rows);
  const speed = el(
    'select',
    { id: nextId('speed'), 'aria-label': 'Speed' },
    ...[1, 10, 100].map((n) => el('option', { value: String(n), selected: n === 10 }, `${n}×`)),
  );
  const search = el('input', { type: 'search', id: nextId('find'), autocomplete: 'off' });
  const play = el('button', { type: 'button' }, 'Play');
  const pause = el('button', { type: 'button', class: 'secondary', disabled: true }, 'Pause');
  const step = el('button', { type: 'button', class: 'secondary' }, 'Step');
  const stop = () => {
    clearTimeout(timer);
    timer = null;
    play.disabled = false;
    pause.disabled = true;
  };
  const goTo = (i) => {
    cursor = Math.max(-1, Math.min(i, items.length - 1));
    rows.forEach((row, j) => {
      row.classList.toggle('pending', j > cursor);
      if (j === cursor) row.setAttribute('aria-current', 'step');
      else row.removeAttribute('aria-current');
    });
    rows[cursor]?.scrollIntoView({ block: 'nearest' });
    status.textContent = `Event ${cursor + 1} of ${items.length}`;
    step.disabled = cursor >= items.length - 1;
  };
  const tick = () => {
    if (cursor >= items.length - 1) return stop();
    goTo(cursor + 1);
    const next = items[cursor + 1];
    if (next === undefined) return stop();
    const wait = Math.min(5000, Math.max(0, (next.at - items[cursor].at) / Number(speed.value)));
    timer = setTimeout(tick, wait);
  };
  play.addEventListener('click', () => {
    if (timer !== null) return;
    if (cursor >= items.length - 1) goTo(-1);
    play.disabled = true;
    pause.disabled = false;
    tick();
  });
  pause.addEventListener('click', stop);
  step.addEventListener('click', () => {
    stop();
    goTo(cursor + 1);
  });
  search.addEventListener('input', () => {
    const needle = search.value.trim().toLowerCase();
    let found = 0;
    rows.forEach((row, j) => {
      const hit = needle !== '' && items[j].text.toLowerCase().includes(needle);
      row.classList.toggle('match', hit);
      if (hit) found++;
    });
    const first = rows.findIndex((row) => row.classList.contains('match'));
    if (first >= 0) {
      stop();
      goTo(first);
    }
    status.textContent =
      needle === '' ? `Event ${cursor + 1} of ${items.length}` : `${found} matching events`;
  });
  goTo(-1);
  return el(
    'section',
    { class: 'player', 'aria-label': 'Session player' },
    el('h2', {}, 'Recording'),
    el(
      'p',
      { class: 'muted' },
      `Sealed recording ${recording.hash.slice(0, 16)}…, verified against the audit log. What the client sent and received; tickets stand for secrets.`,
    ),
    el(
      'div',
      { class: 'controls' },
      play,
      pause,
      step,
      el('label', { for: speed.id }, 'Speed'),
      speed,
      el('label', { for: search.id }, 'Search'),
      search,
    ),
    status,
    list,
  );
}

async function sessionPage({ id }) {
  await loadAgentNames();
  const s = await api('GET', `/v1/sessions/${enc(id)}`);
  // A full recording, when there is one (metadata-only sessions have none).
  const recording = await api('GET', `/v1/sessions/${enc(id)}/recording`).catch(() => null);
  const summary = s.summary ?? {};
  const { events = [], tickets = [], secrets = [], droppedEvents = 0, ...rest } = summary;
  return [
    el('p', { class: 'crumbs' }, el('a', { href: '#/sessions' }, '← Sessions')),
    heading(`Session ${s.id}`),
    facts([
      ['Front-end', s.frontend],
      ['Principal', who(s.principal)],
      ['Connection', orDash(s.connection)],
      ['Outcome', [badge(s.outcome === 'ok' ? 'ok' : 'error'), ' ', code(s.outcome)]],
      ['Started', when(s.startedAt)],
      ['Ended', when(s.endedAt)],
      ['Duration', `${Math.max(0, s.endedAt - s.startedAt)} ms`],
      ['Tickets used', list(tickets)],
      ['Secrets touched', list(secrets)],
      ['Summary', kv(rest)],
    ]),
    el('h2', {}, 'Statements and requests'),
    table(
      `Events of ${s.id}`,
      [
        { label: 'At', cell: (e) => `+${e.at} ms` },
        { label: 'Event', cell: (e) => ident(e.type) },
        { label: 'Details', cell: (e) => kv(e.data) },
      ],
      events,
      'No events recorded.',
    ),
    droppedEvents > 0
      ? el('p', { class: 'muted' }, `${droppedEvents} later events were counted, not kept.`)
      : null,
    recording === null ? null : player(recording),
  ];
}

// --- workflows -----------------------------------------------------------------

/** Poll `read` every `ms` while this page is shown; call `changed` when its JSON differs. */
function watch(serial, ms, read, first, changed) {
  if (serial !== routeSerial) return;
  let last = JSON.stringify(first);
  refreshTimer = setInterval(async () => {
    if (document.hidden) return;
    try {
      const now = await read();
      if (serial !== routeSerial) return;
      const text = JSON.stringify(now);
      if (text === last) return;
      last = text;
      changed(now);
    } catch (error) {
      failed(error);
    }
  }, ms);
}

const workflowLink = (node) => el('a', { href: `#/workflows/${enc(node.id)}` }, node.name);

async function workflowsPage({ serial }) {
  await loadAgentNames();
  const runs = await api('GET', '/v1/workflows');
  const columns = [
    { label: 'Run', cell: (w) => workflowLink(w) },
    { label: 'Id', cell: (w) => ident(w.id) },
    { label: 'Status', cell: (w) => badge(w.status) },
    { label: 'Started by', cell: (w) => who(w.startedBy) },
    { label: 'Started', cell: (w) => when(w.createdAt) },
    { label: 'Deadline', cell: (w) => when(w.expiresAt) },
  ];
  const holder = el('div', {}, table('Workflow runs, newest first', columns, runs, 'No workflow runs.'));
  watch(
    serial,
    REFRESH_MS,
    () => api('GET', '/v1/workflows'),
    runs,
    (now) => {
      holder.replaceChildren(table('Workflow runs, newest first', columns, now, 'No workflow runs.'));
    },
  );
  return [
    heading('Workflows'),
    el(
      'p',
      { class: 'muted' },
      'Workflow runs and their subtasks (coatcheck workflow show): each node has its own key and tickets narrowed from its parent’s.',
    ),
    holder,
  ];
}

function eventText(e, node) {
  const what =
    e.kind === 'exchange'
      ? `exchanged ${e.secret ?? '?'}${e.ticket ? ` (${e.ticket})` : ''}`
      : e.kind === 'credential'
        ? `credential ${e.secret ?? '?'} injected`
        : e.kind === 'reissued'
          ? `new ticket ${e.ticket ?? '-'} for a secret found (${e.secret ?? '?'})`
          : e.kind === 'denied'
            ? 'denied by policy'
            : `refused ${e.code ?? '?'}${e.ticket ? ` (${e.ticket}${e.ticketOwner ? ` of ${e.ticketOwner}` : ''})` : ''}`;
  const where = [e.target, e.operation].filter((x) => x !== null && x !== undefined).join(': ');
  return [
    what,
    e.actor !== node.principal ? [' by ', who(e.actor)] : null,
    where ? [' at ', code(where)] : null,
  ];
}

function workflowNode(node, children) {
  const kind = node.parentId === null ? 'workflow' : 'subtask';
  const refusals = node.events.filter((e) => e.kind === 'refused' || e.kind === 'denied').length;
  return el(
    'li',
    { class: 'wf-node', 'data-node': node.id },
    el(
      'section',
      { class: 'wf-card', 'aria-label': `${kind} ${node.name}` },
      el(
        'h3',
        {},
        el('span', { class: 'muted' }, `${kind} `),
        node.name,
        ' ',
        badge(node.status),
        refusals > 0 ? [' ', el('span', { class: 'badge badge-refused' }, `${refusals} refused`)] : null,
      ),
      el(
        'p',
        { class: 'muted wf-meta' },
        ident(node.id),
        node.expiresAt ? [' · deadline ', when(node.expiresAt)] : null,
        node.parentId === null ? [' · started by ', who(node.startedBy)] : null,
      ),
      node.tickets.length > 0
        ? table(
            `Tickets of ${node.name}`,
            [
              { label: 'Ticket id', cell: (t) => ident(t.id) },
              { label: 'Secret', cell: (t) => t.secret ?? '(erased)' },
              { label: 'Destinations', cell: (t) => list(t.destinations) },
              { label: 'Uses', cell: (t) => `${t.uses}\u00a0/\u00a0${t.maxUses ?? '∞'}` },
              { label: 'Status', cell: (t) => badge(t.status) },
              { label: 'From', cell: (t) => orDash(t.parentId) },
            ],
            node.tickets,
          )
        : el('p', { class: 'empty' }, 'No tickets.'),
      node.events.length > 0
        ? el(
            'ol',
            { class: 'wf-events', 'aria-label': `Events of ${node.name}` },
            node.events.map((e) =>
              el(
                'li',
                { class: e.kind === 'refused' || e.kind === 'denied' ? 'wf-refused' : undefined },
                when(e.at),
                ' ',
                badge(e.kind),
                ' ',
                eventText(e, node),
              ),
            ),
          )
        : el('p', { class: 'empty' }, 'Nothing exchanged or refused yet.'),
    ),
    children.length > 0 ? el('ul', { class: 'wf-tree' }, children) : null,
  );
}

function workflowTree(tree) {
  const byParent = new Map();
  for (const node of tree.nodes.slice(1)) {
    const siblings = byParent.get(node.parentId) ?? [];
    siblings.push(node);
    byParent.set(node.parentId, siblings);
  }
  const build = (node) => workflowNode(node, (byParent.get(node.id) ?? []).map(build));
  const top = tree.nodes[0];
  const subtasks = tree.nodes.length - 1;
  return [
    el(
      'p',
      { class: 'muted', id: 'wf-count' },
      `${subtasks} subtask${subtasks === 1 ? '' : 's'} below ${top.name}. Updated live.`,
    ),
    el('ul', { class: 'wf-tree wf-root', 'aria-label': `Tree of ${top.name}` }, build(top)),
  ];
}

async function workflowPage({ id, serial }) {
  await loadAgentNames();
  const tree = await api('GET', `/v1/workflows/${enc(id)}`);
  const top = tree.nodes[0];
  const holder = el('div', { class: 'wf' }, workflowTree(tree));
  watch(
    serial,
    WORKFLOW_REFRESH_MS,
    () => api('GET', `/v1/workflows/${enc(id)}`),
    tree,
    (now) => {
      holder.replaceChildren(...workflowTree(now));
    },
  );
  return [
    el('p', { class: 'crumbs' }, el('a', { href: '#/workflows' }, '← Workflows')),
    heading(`${top.parentId === null ? 'Workflow' : 'Subtask'} ${top.name}`),
    facts([
      ['Id', ident(top.id)],
      ['Status', badge(top.status)],
      ['Run', top.parentId === null ? 'this node is the run' : workflowLink(tree.root)],
      ['Started by', who(top.startedBy)],
      ['Groups', list(top.groups)],
      ['Started', when(top.createdAt)],
      ['Deadline', when(top.expiresAt)],
      ['Ended', when(top.endedAt)],
    ]),
    el('h2', {}, 'Tree'),
    holder,
  ];
}

// --- tickets, secrets, agents, connections -----------------------------------

function confirmed(text) {
  return window.confirm(text);
}

async function ticketsPage({ query }) {
  const all = query.get('all') === '1';
  await loadAgentNames();
  const rows = await api('GET', `/v1/tokens${all ? '?all=true' : ''}`);
  const toggle = el(
    'a',
    { href: all ? '#/tickets' : '#/tickets?all=1', class: 'button secondary' },
    all ? 'Show active only' : 'Show all',
  );
  return [
    heading('Tickets', toggle),
    el(
      'p',
      { class: 'muted' },
      'Ids and scopes only: a ticket itself is shown once, when it is issued, and never stored.',
    ),
    table(
      all ? 'All tickets' : 'Active tickets',
      [
        { label: 'Ticket id', cell: (t) => ident(t.id) },
        { label: 'Secret', cell: (t) => orDash(t.secret) },
        { label: 'Bound to', cell: (t) => who(t.principal) },
        { label: 'Destinations', cell: (t) => list(t.destinations) },
        { label: 'Uses', cell: (t) => `${t.uses}${t.maxUses === null ? '' : `\u00a0/\u00a0${t.maxUses}`}` },
        { label: 'Expires', cell: (t) => when(t.expiresAt) },
        { label: 'Parent', cell: (t) => orDash(t.parentId) },
        { label: 'Status', cell: (t) => badge(t.status) },
        {
          label: 'Actions',
          cell: (t) => {
            if (t.status !== 'active') return dash();
            const button = el(
              'button',
              { type: 'button', class: 'deny', 'aria-label': `Revoke ticket ${t.id}` },
              'Revoke',
            );
            button.addEventListener('click', () => {
              if (!confirmed(`Revoke ticket ${t.id} and every ticket narrowed from it?`)) return;
              act(
                button,
                () => api('POST', '/v1/tokens/revoke', { ticket: t.id }),
                `Revoked ticket ${t.id}.`,
              );
            });
            return button;
          },
        },
      ],
      rows,
      all ? 'No tickets.' : 'No active tickets.',
    ),
  ];
}

async function secretsPage() {
  const rows = await api('GET', '/v1/secrets');
  return [
    heading('Secrets'),
    el(
      'p',
      { class: 'muted' },
      'Metadata and fingerprints only: values never leave the vault through the admin API.',
    ),
    table(
      'Secrets in the vault',
      [
        { label: 'Name', cell: (s) => s.name },
        { label: 'Id', cell: (s) => ident(s.id) },
        { label: 'Kind', cell: (s) => s.kind },
        { label: 'Allowed destinations', cell: (s) => list(s.allow) },
        { label: 'Fingerprint', cell: (s) => code(s.fingerprint) },
        { label: 'Created', cell: (s) => when(s.createdAt) },
      ],
      rows,
      'No secrets.',
    ),
  ];
}

async function agentsPage() {
  const rows = await api('GET', '/v1/agents');
  return [
    heading('Agents'),
    table(
      'Agent identities',
      [
        { label: 'Name', cell: (a) => a.name },
        { label: 'Id', cell: (a) => ident(a.id) },
        { label: 'Groups', cell: (a) => list(a.groups) },
        { label: 'Status', cell: (a) => badge(a.status) },
        { label: 'Created', cell: (a) => when(a.createdAt) },
        { label: 'Expires', cell: (a) => when(a.expiresAt) },
        { label: 'Revoked', cell: (a) => when(a.revokedAt) },
        {
          label: 'Actions',
          cell: (a) => {
            if (a.status !== 'active') return dash();
            const button = el(
              'button',
              { type: 'button', class: 'deny', 'aria-label': `Revoke agent ${a.name}` },
              'Revoke',
            );
            button.addEventListener('click', () => {
              if (!confirmed(`Revoke agent ${a.name}? Its key stops working at once.`)) return;
              act(
                button,
                () => api('POST', `/v1/agents/${enc(a.name)}/revoke`, {}),
                `Revoked agent ${a.name}.`,
              );
            });
            return button;
          },
        },
      ],
      rows,
      'No agents.',
    ),
  ];
}

async function connectionsPage() {
  const rows = await api('GET', '/v1/connections');
  return [
    heading('Connections'),
    table(
      'Registered connections',
      [
        { label: 'Name', cell: (c) => c.name },
        { label: 'Type', cell: (c) => c.type },
        { label: 'URL', cell: (c) => code(safeUrl(c.url)) },
        { label: 'Credential (secret)', cell: (c) => orDash(c.credential) },
        { label: 'Injected headers', cell: (c) => list(Object.keys(c.injectHeaders ?? {})) },
        {
          label: 'Via relay',
          cell: (c) =>
            c.via ? el('a', { href: '#/relays' }, c.via) : el('span', { class: 'muted' }, 'direct'),
        },
        { label: 'Declared in', cell: (c) => (c.source === 'config' ? 'config file' : 'store') },
      ],
      rows,
      'No connections.',
    ),
  ];
}

/** A relay's status as words a reader (and a screen reader) takes in at once. */
const RELAY_STATUS = {
  connected: 'connected',
  offline: 'disconnected',
  'never-connected': 'never connected',
  revoked: 'revoked',
};

function relayColumns() {
  return [
    // The id on hover, as agents' are elsewhere: the table keeps to a 1280 px window.
    { label: 'Name', cell: (r) => el('span', { title: r.id }, r.name) },
    {
      label: 'Status',
      cell: (r) =>
        el(
          'span',
          { class: `badge badge-relay-${String(r.status).replace(/[^a-z-]/g, '')}` },
          RELAY_STATUS[r.status] ?? String(r.status),
        ),
    },
    {
      label: 'Sessions here',
      cell: (r) => (r.sessions === undefined ? dash() : String(r.sessions)),
    },
    { label: 'Last seen', cell: (r) => when(r.lastSeenAt) },
    { label: 'From', cell: (r) => (r.lastAddress ? code(r.lastAddress) : dash()) },
    { label: 'Replica', cell: (r) => (r.lastReplica ? code(r.lastReplica) : dash()) },
    { label: 'Created', cell: (r) => when(r.createdAt) },
    { label: 'Revoked', cell: (r) => when(r.revokedAt) },
    {
      label: 'Actions',
      cell: (r) => {
        if (r.status === 'revoked') return dash();
        const button = el(
          'button',
          { type: 'button', class: 'deny', 'aria-label': `Revoke relay ${r.name}` },
          'Revoke',
        );
        button.addEventListener('click', () => {
          if (!confirmed(`Revoke relay ${r.name}? Its sessions drop at once and its key is refused.`)) return;
          act(button, () => api('POST', `/v1/relays/${enc(r.name)}/revoke`, {}), `Revoked relay ${r.name}.`);
        });
        return button;
      },
    },
  ];
}

async function relaysPage({ serial }) {
  const rows = await api('GET', '/v1/relays');
  const render = (now) =>
    table('Relays near the targets (coatcheck relay list)', relayColumns(), now, 'No relays.');
  const holder = el('div', {}, render(rows));
  watch(
    serial,
    REFRESH_MS,
    () => api('GET', '/v1/relays'),
    rows,
    (now) => holder.replaceChildren(render(now)),
  );
  return [
    heading('Relays'),
    el(
      'p',
      { class: 'muted' },
      'Relays dial out from private networks and carry the upstream connections of connections added with --via. ' +
        'Connected: a session was seen within 30 s on any replica. Sessions here: on the replica that answered. ' +
        'Replica: the gateway (host/process) the last session was on.',
    ),
    holder,
  ];
}

// ---------------------------------------------------------------------------
// Start

$('#logout').addEventListener('click', () => logout());
window.addEventListener('hashchange', () => {
  announce('');
  route();
});
route();

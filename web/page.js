// The built-in page's shared state and its DOM: the elements, the session hints in
// localStorage, the stream of messages, the online list, the first history load and
// the composer's helpers. app.js (screens, forms, boot) and connection.js (the
// socket, through skiff-client) build on these.


const MAX_CHARS = 300;
const STORAGE_KEY = 'skiff.key';
// The session cookie is HttpOnly, so the page cannot see whether it has one. This
// flag records that a login happened in this browser; without it GET /api/user/@me
// could only answer 422, which the browser logs as an error on every first visit.
const SESSION_HINT_KEY = 'skiff.session';
const FETCH_TIMEOUT_MS = 15000;
const MAX_STREAM_ENTRIES = 1000;
const MAX_FRAME_BYTES = 16 * 1024;   // the server closes the socket (1009) past this
const HISTORY_LIMIT = 50;
const encoder = new TextEncoder();

const $ = (id) => document.getElementById(id);
const el = {
  status: $('status'), reconnectNow: $('reconnect-now'), me: $('me'), logout: $('logout'),
  bootView: $('boot-view'), authView: $('auth-view'), chatView: $('chat-view'),
  authNotice: $('auth-notice'),
  registerForm: $('register-form'), registerUsername: $('register-username'),
  registerSubmit: $('register-submit'), registerError: $('register-error'),
  keyBox: $('key-box'), keyOutput: $('key-output'), keyUsername: $('key-username'),
  keyCopy: $('key-copy'), keyCopyStatus: $('key-copy-status'), keyLogin: $('key-login'),
  loginForm: $('login-form'), loginKey: $('login-key'), loginRemember: $('login-remember'),
  loginSubmit: $('login-submit'), loginError: $('login-error'),
  onlineList: $('online-list'), onlineCount: $('online-count'),
  messages: $('messages'),
  composer: $('composer'), input: $('composer-input'), send: $('composer-send'),
  composerError: $('composer-error'), charCount: $('char-count'), charWarning: $('char-warning'),
};

const state = {
  me: null,               // username while logged in
  client: null,           // the SkiffClient of this login, if any
  gen: 0,                 // bumped on every connect / logout, to drop stale callbacks
  wantConnected: false,   // false after logout or when the session is gone
  retryReason: null,      // why the page is waiting to reconnect, in words
  retryAt: 0,             // when the scheduled reconnect happens (ms since epoch)
  online: [],             // usernames, in connect order
  onlineSyncing: false,
  onlineBuffer: [],       // join/leave events seen while /api/online is in flight
  storedKeyTried: false,  // auto-login with the remembered key at most once per loss
  lastRetryReason: null,  // last reconnect reason noted in the stream
  proto: 2,               // 1 once the server turned out not to speak v2
  epoch: null,            // v2: the history the ids below belong to
  lastId: null,           // v2: highest message id shown (or known to be past)
  helloLastId: null,      // v2: last_id of the current socket's hello
  historyTried: false,    // the recent history is fetched once per login
  historyLoad: null,      // the history request in flight, shared by concurrent connects
  quietResync: false,     // a resync that cannot mean "missed while away" (see loadHistory)
  reloading: null,        // live id messages held while the history reloads after a resync
  unconfirmed: [],        // li of own messages whose ack was lost with the socket
  unread: 0,
};

// ---------------------------------------------------------------- small helpers

const codePoints = (s) => [...s].length;

function storedKey() {
  try { return localStorage.getItem(STORAGE_KEY); } catch { return null; }
}
function rememberKey(key) {
  try { localStorage.setItem(STORAGE_KEY, key); } catch { /* storage disabled */ }
}
function forgetKey() {
  try { localStorage.removeItem(STORAGE_KEY); } catch { /* storage disabled */ }
}
// True when a session may exist. Without storage nothing can be known, so probe.
function maybeSession() {
  try { return localStorage.getItem(SESSION_HINT_KEY) === '1'; } catch { return true; }
}
function noteSession(on) {
  try {
    if (on) localStorage.setItem(SESSION_HINT_KEY, '1');
    else localStorage.removeItem(SESSION_HINT_KEY);
  } catch { /* storage disabled */ }
}

class NetworkError extends Error {}

// JSON request to the same origin. Resolves {status, data, headers}; rejects with
// NetworkError when the server cannot be reached (or does not answer in time).
async function api(method, path, body) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  const init = { method, credentials: 'same-origin', cache: 'no-store', signal: ctrl.signal, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new NetworkError(String(e && e.message || e));
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try { data = await res.json(); } catch { data = null; }
  return { status: res.status, data: data && typeof data === 'object' ? data : null, headers: res.headers };
}

function retryAfterText(headers) {
  const v = headers && headers.get('Retry-After');
  const n = v && /^\d+$/.test(v.trim()) ? Number(v) : null;
  return n !== null ? `Try again in ${n} second${n === 1 ? '' : 's'}.` : 'Try again in a minute.';
}

function setStatus(stateName, text) {
  el.status.dataset.state = stateName;
  el.status.textContent = text;
}

function setView(name) {
  document.body.dataset.view = name;
  el.bootView.hidden = name !== 'boot';
  el.authView.hidden = name !== 'auth';
  el.chatView.hidden = name !== 'chat';
  el.me.hidden = name !== 'chat';
  el.logout.hidden = name !== 'chat';
  if (name !== 'chat') el.reconnectNow.hidden = true;
}

function showFormError(node, text) {
  node.textContent = text || '';
}

// An error belongs to the attempt that caused it: once something else has happened
// (a registration, a login, a logout) it no longer describes the page.
function clearAuthMessages() {
  showFormError(el.loginError, '');
  showFormError(el.registerError, '');
  el.authNotice.textContent = '';
  el.authNotice.hidden = true;
}

function showKeyBox(on) {
  el.keyBox.hidden = !on;
  // The form is done once the key is shown; hiding it keeps the key, the warning
  // and the log-in button together on one screen.
  el.registerForm.hidden = on;
}

// ---------------------------------------------------------------- the stream

// `when` is the server's time for messages that carry one (v2), else now.
function timeNode(when = new Date()) {
  const t = document.createElement('time');
  t.className = 'msg-time';
  t.dateTime = when.toISOString();
  t.title = when.toLocaleString();
  t.textContent = whenText(when);
  return t;
}

// The time for today's messages; older ones say their day too (and the year, if
// another one). `seconds` for ban ends, which are minutes away as often as days.
function whenText(when, seconds = false) {
  const now = new Date();
  const time = when.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', ...(seconds ? { second: '2-digit' } : {}) });
  if (when.toDateString() === now.toDateString()) return time;
  const day = when.toLocaleDateString([], { day: 'numeric', month: 'short',
    ...(when.getFullYear() !== now.getFullYear() ? { year: 'numeric' } : {}) });
  return `${day}, ${time}`;
}

function span(cls, text) {
  const s = document.createElement('span');
  s.className = cls;
  s.textContent = text;
  return s;
}

// A stable colour class per author name (8-colour palette in style.css).
function authorColour(name) {
  let h = 0;
  for (const ch of name.toLowerCase()) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `c${h % 8}`;
}

function appendEntry(li, { forceScroll = false } = {}) {
  const box = el.messages;
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
  box.appendChild(li);
  while (box.childElementCount > MAX_STREAM_ENTRIES) box.firstElementChild.remove();
  if (nearBottom || forceScroll) box.scrollTop = box.scrollHeight;
  if (document.hidden && li.classList.contains('msg')) {
    state.unread += 1;
    document.title = `(${state.unread}) skiff chat`;
  }
}

function addMessage(author, text, { own = false, unconfirmed = false, id = null, ts = null } = {}) {
  const li = document.createElement('li');
  li.className = 'msg';
  if (own) li.classList.add('msg-own');
  if (unconfirmed) li.classList.add('msg-unconfirmed');
  li.dataset.author = author;
  if (id !== null) li.dataset.id = String(id);
  const a = span(`msg-author ${own ? 'self' : authorColour(author)}`, author);
  const body = span('msg-text', text);   // textContent: never parsed as HTML
  const when = typeof ts === 'number' && Number.isFinite(ts) ? new Date(ts) : new Date();
  li.append(timeNode(when), ' ', a, ' ', body);
  if (unconfirmed) {
    li.append(' ', span('msg-flag', '(not confirmed: the connection dropped before the server acknowledged it)'));
    state.unconfirmed.push(li);
  }
  appendEntry(li, { forceScroll: own });
}

// A message with a v2 id, live, replayed or from the history. Ids only grow within an
// epoch and arrive in order, so one at or below the last id shown is a duplicate.
function addIdMessage(m) {
  if (state.lastId !== null && m.id <= state.lastId) return;
  state.lastId = m.id;
  const own = state.me !== null && sameName(m.author, state.me);
  if (own && confirmOwn(m.message, m.id)) return;
  addMessage(m.author, m.message, { own, id: m.id, ts: m.ts });
}

// A replayed own message that was shown as unconfirmed (its ack was lost with the
// socket) did reach the room: mark that line confirmed instead of showing it twice.
function confirmOwn(text, id) {
  const i = state.unconfirmed.findIndex((li) => li.isConnected &&
    li.querySelector('.msg-text').textContent === text);
  if (i < 0) return false;
  const [li] = state.unconfirmed.splice(0, i + 1).slice(-1);
  li.classList.remove('msg-unconfirmed');
  const flag = li.querySelector('.msg-flag');
  if (flag) flag.remove();
  li.dataset.id = String(id);
  return true;
}

const isIdMessage = (m) => Number.isSafeInteger(m.id) && typeof m.message === 'string' &&
  typeof m.author === 'string';

function addEvent(kind, username) {
  const li = document.createElement('li');
  li.className = 'evt';
  li.dataset.event = kind;
  li.dataset.username = username;
  li.append(timeNode(), ' ', span('evt-text', kind === 'join' ? `${username} joined` : `${username} left`));
  appendEntry(li);
}

// {"event":"delete","id":N} (protocol v2): an operator removed message N (`skiff ctl
// delete-message`); it leaves the page as it left the server's history.
function removeMessage(id) {
  const li = el.messages.querySelector(`li.msg[data-id="${id}"]`);
  if (li) li.remove();
}

function addNote(text, kind = 'info') {
  const li = document.createElement('li');
  li.className = 'note';
  li.dataset.kind = kind;
  li.append(timeNode(), ' ', span('note-text', text));
  appendEntry(li);
}

function addError(code, text) {
  const li = document.createElement('li');
  li.className = 'err';
  li.dataset.code = code;
  li.append(timeNode(), ' ', span('err-text', text));
  appendEntry(li, { forceScroll: true });
}

// ---------------------------------------------------------------- online list

const sameName = (a, b) => a.toLowerCase() === b.toLowerCase();

function renderOnline() {
  const items = state.online.map((name) => {
    const li = document.createElement('li');
    li.dataset.username = name;
    li.textContent = name;
    if (state.me && sameName(name, state.me)) {
      li.classList.add('self');
      li.append(span('you', ' (you)'));
    } else {
      li.classList.add(authorColour(name));
    }
    return li;
  });
  el.onlineList.replaceChildren(...items);
  el.onlineCount.textContent = String(state.online.length);
}

function applyPresence(kind, username) {
  const i = state.online.findIndex((n) => sameName(n, username));
  if (kind === 'join' && i < 0) state.online.push(username);
  if (kind === 'leave' && i >= 0) state.online.splice(i, 1);
}

function ensureSelfOnline() {
  if (state.me && !state.online.some((n) => sameName(n, state.me))) state.online.push(state.me);
}

async function loadOnline(gen) {
  state.onlineSyncing = true;
  state.onlineBuffer = [];
  try {
    const r = await api('GET', '/api/online');
    if (gen !== state.gen) return;
    if (r.status === 200 && r.data && Array.isArray(r.data.online_clients)) {
      state.online = r.data.online_clients.filter((n) => typeof n === 'string');
      // Events that raced the snapshot: replaying them in order converges on the
      // right set whichever side of the snapshot they happened on.
      for (const [kind, name] of state.onlineBuffer) applyPresence(kind, name);
    }
  } catch {
    // keep the list built from events; it is still mostly right
  } finally {
    if (gen === state.gen) {
      state.onlineSyncing = false;
      state.onlineBuffer = [];
      ensureSelfOnline();
      renderOnline();
    }
  }
}

// ---------------------------------------------------------------- history (v2)

// Once per login, before the first socket: the last messages, so a new tab does not
// start on an empty room. Their last id becomes the socket's `since`, which makes the
// server replay anything sent between this answer and the socket's open.
async function loadHistory() {
  const me = state.me;
  state.historyTried = true;
  let r;
  try {
    r = await api('GET', `/api/history?limit=${HISTORY_LIMIT}`);
  } catch {
    return;   // the socket will meet the same trouble and explain it
  }
  if (state.me !== me) return;
  if (r.status === 404) {
    state.proto = 1;   // a server from before protocol v2
    return;
  }
  const d = r.data;
  if (r.status !== 200 || !d || typeof d.epoch !== 'string' || !Array.isArray(d.messages)) return;
  if (state.epoch !== null && state.epoch !== d.epoch) state.lastId = null;
  state.epoch = d.epoch;
  for (const m of d.messages) if (m && typeof m === 'object' && isIdMessage(m)) addIdMessage(m);
  if (state.lastId === null) {
    // An empty history: since=0 still closes the gap up to the socket. If the server
    // keeps no history it answers resync, which then does not mean "missed while away".
    state.lastId = 0;
    state.quietResync = true;
  }
}

function setComposerEnabled(on) {
  el.send.disabled = !on;
  el.input.placeholder = on ? 'Type a message…' : 'Not connected…';
}

function ackErrorText(code, sent) {
  switch (code) {
    case 'message_too_long':
      return sent !== undefined
        ? `Not sent: your message is ${codePoints(sent)} characters long; the limit is ${MAX_CHARS}.`
        : `Not sent: messages can be at most ${MAX_CHARS} characters long.`;
    case 'message_empty':
      return 'Not sent: the message is empty.';
    case 'invalid_message':
      return 'Not sent: the server could not read the message.';
    case 'rate_limited':
      return 'Not sent: you are sending messages too fast. Wait a moment and try again.';
    case 'unavailable':
      return 'Not saved: the server could not store this message right now. Try again in a moment.';
    default:
      return `Not sent: the server refused the message (${code}).`;
  }
}

function ackError(code, sent) {
  const text = ackErrorText(code, sent);
  addError(code, text);
  showComposerError(text);
  // Give a refused text back so it can be fixed, unless a new draft is under way.
  if (sent && code !== 'message_empty' && el.input.value === '') {
    el.input.value = sent;
    updateCounter();
  }
}

function showComposerError(text) {
  el.composerError.textContent = text;
  el.composerError.hidden = false;
}
function clearComposerError() {
  el.composerError.hidden = true;
  el.composerError.textContent = '';
}

// ---------------------------------------------------------------- composer helpers

function updateCounter() {
  const n = codePoints(el.input.value);
  const over = n > MAX_CHARS;
  el.charCount.textContent = `${n}/${MAX_CHARS}`;
  el.charCount.dataset.over = String(over);
  const warn = over ? `${n - MAX_CHARS} over the ${MAX_CHARS}-character limit: the server will refuse it.` : '';
  if (el.charWarning.textContent !== warn) el.charWarning.textContent = warn;
  // Grow with explicit lines (CSS field-sizing does the rest where supported).
  const lines = el.input.value.split('\n').length;
  el.input.rows = Math.min(Math.max(lines, 1), 6);
}


export {
  MAX_FRAME_BYTES, HISTORY_LIMIT, encoder, el, state, storedKey, rememberKey, forgetKey,
  maybeSession, noteSession, api, retryAfterText, setStatus, setView, showFormError,
  clearAuthMessages, showKeyBox, whenText, addMessage, addIdMessage, isIdMessage, addEvent,
  removeMessage, addNote, addError, sameName, renderOnline, applyPresence, ensureSelfOnline,
  loadOnline, loadHistory, setComposerEnabled, ackErrorText, ackError, showComposerError,
  clearComposerError, updateCounter,
};

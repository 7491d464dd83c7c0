/*
 * skiff web client: plain ES2020, no framework, no build step. Served as /app.js under
 * a strict CSP (script-src 'self', style-src 'self', no inline anything), so this file
 * never writes HTML strings or style attributes: every piece of text from the server
 * or the user goes in through textContent / value, and state is shown with classes,
 * data attributes and the `hidden` attribute.
 *
 * Stable hooks (used by tests/browser/e2e.mjs; keep them when restyling):
 *   body[data-view]                 "boot" | "auth" | "chat": which screen is showing
 *   #status[data-state]             status line (role=status): "idle" | "connecting" |
 *                                   "open" | "waiting" (reconnect scheduled) | "error"
 *   #reconnect-now                  button shown while a reconnect is scheduled
 *   #me                             the logged-in username (chat screen)
 *   #logout                         log out button
 *   #auth-notice                    notice on the auth screen (role=alert), e.g. "session expired"
 *   #register-form is hidden while #key-box is shown, so the key and its log-in button
 *   fit on one screen
 *   #register-form, #register-username, #register-submit, #register-error
 *   #key-box                        shown after registering; #key-output (readonly input
 *                                   holding the key), #key-username, #key-copy,
 *                                   #key-copy-status, #key-login
 *   #login-form, #login-key, #login-remember (checkbox), #login-submit, #login-error
 *   #online-list li[data-username]  online users, in connect order; own entry has .self
 *   #online-count                   number of online users
 *   #messages                       the stream (ol, role=log, aria-live=polite); entries:
 *     li.msg[data-author]           a chat message; .msg-own for your own (shown when the
 *                                   server acks it, or from the history/replay when the
 *                                   author is you); .msg-unconfirmed if the socket dropped
 *                                   before the ack; data-id = the server's message id
 *                                   (protocol v2; removed on a "delete" event); children .msg-time (time element: the
 *                                   server's time when it sent one, else time of receipt),
 *                                   .msg-author, .msg-text
 *     li.evt[data-event][data-username]   join / leave line
 *     li.err[data-code]             an error ack (message_too_long, message_empty,
 *                                   invalid_message, rate_limited, or any other code)
 *     li.note[data-kind]            client notices: "connected", "disconnected", "info",
 *                                   "resync" (messages missed while away are lost)
 *   #composer, #composer-input (textarea), #composer-send, #composer-error (role=alert)
 *   #char-count[data-over]          live "N/300" counter, counting Unicode code points
 *   #char-warning                   live text shown while the draft is over 300
 *
 * Protocol notes: see shared/CONTRACT.md. The wire protocol is skiff-client's
 * (clients/js/skiff-client.js, served as /skiff-client.js): acks come back as promises in
 * send order, so an own message is shown (or reported as refused) when its ack arrives;
 * reconnects wait a full-jitter backoff; close reasons come parsed (banned until when,
 * kicked, logged out, session expired) and the page says them in words, without
 * retrying where a retry cannot help. Several tabs or devices of one user may be
 * connected at once (v2); a refused one is told why (too many devices, or another
 * connection that allows no second one).
 *
 * Protocol v2 ("Protocol v2 (opt-in)" in the contract): the page first shows the last 50
 * messages (GET /api/history), then opens /ws?v=2&since=<last id>&epoch=<epoch> so that
 * nothing between the two is lost; a dropped socket reconnects the same way and the
 * server replays what was missed. Every message carries an id that only grows within an
 * epoch, so "id <= the last id shown" is a duplicate. The online list comes from the
 * hello frame. A server without v2 (no /api/history, no hello, or 400
 * unsupported_version) gets the v1 page: plain /ws and GET /api/online.
 */
import { SkiffClient } from '/skiff-client.js';

(() => {

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

  // ---------------------------------------------------------------- the connection
  // The protocol itself (hello, resume with since/epoch, acks, reconnect with full-jitter
  // backoff, close reasons) is skiff-client's (/skiff-client.js); this page shows what it
  // reports and decides what a close means for the person in front of it.

  function onHello(h) {
    state.proto = 2;
    state.onlineSyncing = false;
    state.onlineBuffer = [];
    state.online = h.online.slice();
    ensureSelfOnline();
    renderOnline();
    // A new epoch means the history was lost and ids start over: the ids shown so far
    // say nothing about the new ones (the server follows with a resync).
    if (state.epoch !== null && state.epoch !== h.epoch) state.lastId = null;
    state.epoch = h.epoch;
    state.helloLastId = h.lastId;
    // Without a `since` there is no replay: live messages start after last_id.
    if (state.lastId === null && state.helloLastId !== null) state.lastId = state.helloLastId;
  }

  function onResync() {
    // Live messages follow with ids above the hello's last_id; what lies between the
    // last id shown and that is gone.
    if (state.helloLastId !== null) state.lastId = Math.max(state.lastId ?? 0, state.helloLastId);
    if (state.quietResync) return;
    addNote('Some messages while you were away could not be recovered.', 'resync');
    reloadHistory();
  }

  // After a resync what the page shows may not be the server's history any more (lost
  // in a crash, or a new epoch whose ids start over): drop the messages shown and show
  // the history afresh, so that no new message is taken for a duplicate of an old one
  // with the same id. Live messages arriving meanwhile wait and follow it, deduped.
  async function reloadHistory() {
    const me = state.me;
    state.reloading = [];
    for (const li of [...el.messages.querySelectorAll('li.msg:not(.msg-unconfirmed)')]) li.remove();
    state.lastId = null;
    let d = null;
    try {
      const r = await api('GET', `/api/history?limit=${HISTORY_LIMIT}`);
      if (r.status === 200 && r.data && Array.isArray(r.data.messages)) d = r.data;
    } catch { /* the held live messages still show */ }
    const held = state.reloading || [];
    state.reloading = null;
    if (state.me !== me) return;
    if (d !== null && typeof d.epoch === 'string') state.epoch = d.epoch;
    if (d !== null) for (const m of d.messages) if (m && typeof m === 'object' && isIdMessage(m)) addIdMessage(m);
    for (const m of held) addIdMessage(m);
    if (state.lastId === null) state.lastId = state.helloLastId ?? 0;
  }

  function setComposerEnabled(on) {
    el.send.disabled = !on;
    el.input.placeholder = on ? 'Type a message…' : 'Not connected…';
  }

  async function connect() {
    if (!state.wantConnected) return;
    if (state.client) {
      state.client.reconnectNow();
      return;
    }
    const gen = ++state.gen;
    setStatus('connecting', 'Connecting…');
    if (state.proto === 2 && !state.historyTried) {
      if (!state.historyLoad) state.historyLoad = loadHistory().finally(() => { state.historyLoad = null; });
      await state.historyLoad;
    }
    if (gen !== state.gen || !state.wantConnected || state.client) return;
    const client = new SkiffClient({ protocol: state.proto, since: state.lastId, epoch: state.epoch });
    state.client = client;
    wire(client, gen);
    client.connect();
  }

  function wire(client, gen) {
    const live = () => state.client === client && gen === state.gen;
    client.on('open', (e) => {
      if (!live()) return;
      state.retryReason = null;
      state.lastRetryReason = null;
      state.storedKeyTried = false;
      state.online = [state.me];
      renderOnline();
      el.reconnectNow.hidden = true;
      setStatus('open', `Connected as ${state.me}`);
      setComposerEnabled(true);
      addNote('Connected.', 'connected');
      if (e.protocol === 1) loadOnline(gen);
    });
    client.on('hello', (h) => { if (live()) onHello(h); });
    client.on('fallback', () => {
      if (!live()) return;
      state.proto = 1;
      loadOnline(gen);
    });
    client.on('resync', () => { if (live()) onResync(); });
    client.on('delete', (e) => { if (live()) removeMessage(e.id); });
    const presence = (kind, name) => {
      applyPresence(kind, name);
      if (state.onlineSyncing) state.onlineBuffer.push([kind, name]);
    };
    for (const kind of ['join', 'leave']) {
      client.on(kind, (e) => {
        if (!live()) return;
        presence(kind, e.username);
        renderOnline();
        addEvent(kind, e.username);
      });
    }
    client.on('presence', (p) => {
      if (!live()) return;
      for (const n of p.join) presence('join', n);
      for (const n of p.leave) presence('leave', n);
      renderOnline();
    });
    client.on('message', (m) => {
      if (!live()) return;
      if (m.id === null) addMessage(m.author, m.message);
      else if (state.reloading) state.reloading.push(m);
      else addIdMessage(m);
    });
    client.on('reconnecting', (e) => {
      if (!live()) return;
      state.retryAt = Date.now() + e.delay;
      showWaiting();
    });
    client.on('close', (e) => { if (live()) onSocketClosed(e, gen); });
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

  // Said when the socket closes with a code but no reason this page knows.
  const CLOSE_CODES = {
    1000: 'The server ended the connection.',
    1001: 'The server is restarting.',
    1003: 'The server refused data it could not accept.',
    1006: 'The connection was lost.',
    1008: 'The server dropped this connection.',
    1009: 'The server closed the connection: a message was too large.',
    1011: 'The server hit an internal error.',
  };
  const CLOSE_KINDS = {
    kicked: 'An operator removed you from the chat.',
    shutting_down: 'The server is restarting.',
    going_away: 'The server is restarting.',
    silent_peer: 'The connection went quiet.',
    too_slow: 'The connection fell behind the chat.',
    message_too_big: 'The server closed the connection: a message was too large.',
  };
  const ELSEWHERE = 'You are connected in another window or on another device that allows only one connection. Close that one to chat here.';
  const TOO_MANY = 'You are connected on as many devices as the server allows. Close one of them to chat here.';

  // "until 15:04" today, "until 6 Dec 2026, 15:04" another day.
  function untilText(until) {
    if (!(until instanceof Date) || Number.isNaN(until.getTime())) return '';
    return ` until ${whenText(until, true)}`;
  }

  function bannedText(until, reason) {
    return `You are banned from this chat${untilText(until)}.${reason ? ` Reason: ${reason}` : ''}`;
  }

  function showWaiting() {
    const reason = state.retryReason;
    if (!reason || !state.client || state.client.state !== 'waiting') return;
    if (reason !== state.lastRetryReason) {
      state.lastRetryReason = reason;   // say it once in the stream, not on every retry
      const how = reason === CLOSE_KINDS.kicked ? 'Coming back after a pause.' : 'Retrying with increasing delays (up to 30 s).';
      addNote(`${reason} ${how}`, 'disconnected');
    }
    const delay = Math.max(0, (state.retryAt || 0) - Date.now());
    const secs = Math.max(1, Math.round(delay / 1000));
    setStatus('waiting', `${reason} Reconnecting in ${delay < 1000 ? 'under a second' : `${secs} s`}…`);
    el.reconnectNow.hidden = false;
  }

  function setRetryReason(reason) {
    state.retryReason = reason;
    showWaiting();
  }

  async function onSocketClosed(e, gen) {
    setComposerEnabled(false);
    if (e.opened) state.quietResync = false;
    if (!state.wantConnected) return;   // logout in progress: nothing to recover
    if (e.final) {
      finalClose(e);
      return;
    }
    if (e.kind === 'kicked') {
      // The client comes back by itself after a pause; a kick is not a ban.
      setRetryReason(CLOSE_KINDS.kicked);
      return;
    }
    setStatus('connecting', 'Disconnected. Checking the session…');
    el.reconnectNow.hidden = true;
    // A failed handshake carries no status code to the page, and a close without a
    // known reason (an older server) does not tell "session gone" from "network
    // trouble": ask the server.
    let r;
    try {
      r = await api('GET', '/api/user/@me');
    } catch {
      if (gen !== state.gen || !state.wantConnected) return;
      setRetryReason(e.code === 1001 ? 'The server is restarting.' : 'Cannot reach the server.');
      return;
    }
    if (gen !== state.gen || !state.wantConnected) return;
    if (r.status === 401 || r.status === 422) {
      noteSession(false);
      sessionGone(e.code === 1000 && e.opened
        ? 'You were logged out (in another tab or on another device).'
        : 'Your session has expired. Please log in again.');
      return;
    }
    if (r.status !== 200 || !r.data) {
      setRetryReason(`The server answered HTTP ${r.status}.`);
      return;
    }
    if (e.opened) {
      setRetryReason(CLOSE_KINDS[e.kind] || CLOSE_CODES[e.code] || 'The connection was lost.');
      return;
    }
    // Refused before it opened. The same request without the upgrade gets the reason
    // as JSON: 409 already_connected / too_many_devices, 400 unsupported_version.
    const refusal = await refusalOf(state.proto === 2 ? '/ws?v=2' : '/ws');
    if (gen !== state.gen || !state.wantConnected) return;
    if (refusal === 'unsupported_version') {
      state.proto = 1;
      dropClient();
      connect();
      return;
    }
    if (refusal === 'too_many_devices' || refusal === 'already_connected' || r.data.online === true) {
      // The session itself is fine, so the online list can still be shown.
      loadOnline(gen);
      setRetryReason(refusal === 'too_many_devices' ? TOO_MANY : ELSEWHERE);
      return;
    }
    setRetryReason('The chat connection was refused.');
  }

  async function refusalOf(path) {
    try {
      const r = await api('GET', path);
      return r.data && typeof r.data.error === 'string' ? r.data.error : null;
    } catch {
      return null;
    }
  }

  // A close after which a new connection would meet the same answer: say what
  // happened, in words, and do not retry.
  async function finalClose(e) {
    switch (e.kind) {
      case 'banned':
        noteSession(false);
        showAuth(bannedText(e.until, e.text));
        break;
      case 'logged_out': {
        // Logging out anywhere closes every socket of the user; this browser's own
        // session may have been another one, still valid.
        let r = null;
        try { r = await api('GET', '/api/user/@me'); } catch { r = null; }
        if (!state.wantConnected) return;
        if (r && r.status === 200) {
          addNote('You were logged out on another device; this one is still logged in.', 'info');
          dropClient();
          connect();
        } else {
          noteSession(false);
          showAuth('You were logged out (in another tab or on another device).');
        }
        break;
      }
      case 'session_expired':
        noteSession(false);
        sessionGone('Your session has expired. Please log in again.');
        break;
      case 'key_reset':
        forgetKey();
        noteSession(false);
        showAuth('An operator reset your key: the old one no longer works. Log in with the new key the operator gives you.');
        break;
      case 'user_deleted':
        forgetKey();
        noteSession(false);
        showAuth('An operator deleted your account.');
        break;
      case 'replaced':
        noteSession(false);
        showAuth('You logged in on more devices than the server allows, so this older session was ended. Log in again to chat here.');
        break;
      default:
        noteSession(false);
        showAuth('The server ended the connection.');
    }
  }

  function dropClient() {
    const c = state.client;
    state.client = null;
    state.gen += 1;
    if (c) c.close(1000, 'logout');
  }

  function disconnect() {
    state.wantConnected = false;
    dropClient();
    state.retryReason = null;
    state.lastRetryReason = null;
    el.reconnectNow.hidden = true;
    setComposerEnabled(false);
  }

  // ---------------------------------------------------------------- screens

  function resetChat() {
    state.epoch = null;
    state.lastId = null;
    state.historyTried = false;
    state.quietResync = false;
    state.unconfirmed = [];
    state.online = [];
    renderOnline();
    el.messages.replaceChildren();
    el.input.value = '';
    updateCounter();
    clearComposerError();
  }

  function showAuth(notice) {
    disconnect();
    state.me = null;
    resetChat();
    el.me.textContent = '';
    setView('auth');
    setStatus('idle', 'Not logged in.');
    clearAuthMessages();
    el.authNotice.textContent = notice || '';
    el.authNotice.hidden = !notice;
    el.loginKey.focus();
  }

  function enterChat(username) {
    const sameUser = state.me !== null && sameName(state.me, username);
    state.me = username;
    if (!sameUser) resetChat();
    el.me.textContent = username;
    el.authNotice.hidden = true;
    setView('chat');
    state.wantConnected = true;
    setComposerEnabled(false);
    connect();
    el.input.focus();
  }

  async function sessionGone(why) {
    disconnect();
    const key = storedKey();
    if (key && !state.storedKeyTried) {
      state.storedKeyTried = true;
      setStatus('connecting', 'Session ended; logging in again with your saved key…');
      const ok = await login(key, true, { auto: true });
      if (ok) {
        addNote('The session had ended; logged in again with your saved key.', 'info');
        return;
      }
      if (document.body.dataset.view === 'auth') return;   // login() already explained
    }
    showAuth(why);
  }

  // ---------------------------------------------------------------- register / login

  async function register(ev) {
    ev.preventDefault();
    const name = el.registerUsername.value.trim();
    clearAuthMessages();
    if (!/^[A-Za-z0-9]{1,32}$/.test(name)) {
      showFormError(el.registerError, 'Usernames are 1–32 letters or digits (A–Z, a–z, 0–9), nothing else.');
      el.registerUsername.focus();
      return;
    }
    el.registerSubmit.disabled = true;
    try {
      const r = await api('POST', '/api/register', { username: name });
      if (r.status === 201 && r.data && typeof r.data.key === 'string') {
        el.keyUsername.textContent = name;
        el.keyOutput.value = r.data.key;
        el.keyCopyStatus.textContent = '';
        clearAuthMessages();
        showKeyBox(true);
        el.registerUsername.value = '';
        el.keyOutput.focus();
        el.keyOutput.select();
      } else if (r.status === 400) {
        showFormError(el.registerError, 'Usernames are 1–32 letters or digits (A–Z, a–z, 0–9), nothing else.');
      } else if (r.status === 409) {
        showFormError(el.registerError, `The name “${name}” is taken (names are compared ignoring case). Pick another.`);
      } else if (r.status === 429) {
        showFormError(el.registerError, `Too many registrations from your address. ${retryAfterText(r.headers)}`);
      } else if (r.status === 422) {
        showFormError(el.registerError, 'The server could not read the request.');
      } else {
        showFormError(el.registerError, `Registration failed (HTTP ${r.status}).`);
      }
    } catch {
      showFormError(el.registerError, 'Cannot reach the server. Check your connection and try again.');
    } finally {
      el.registerSubmit.disabled = false;
    }
  }

  // Returns true when logged in. `auto` is a login with the remembered key.
  async function login(key, remember, { auto = false } = {}) {
    clearAuthMessages();
    el.loginSubmit.disabled = true;
    el.keyLogin.disabled = true;
    try {
      const r = await api('POST', '/api/login', { key });
      if (r.status === 200 && r.data && typeof r.data.username === 'string') {
        if (remember) rememberKey(key); else forgetKey();
        noteSession(true);
        el.loginKey.value = '';
        el.keyOutput.value = '';
        showKeyBox(false);
        clearAuthMessages();
        enterChat(r.data.username);
        return true;
      }
      let msg;
      if (r.status === 401) {
        msg = auto ? 'Your saved key was not accepted, so it has been forgotten. Log in with your key.'
                   : 'That key is not valid. Check it and try again.';
        if (auto) forgetKey();
      } else if (r.status === 403 && r.data && r.data.error === 'banned') {
        const until = typeof r.data.until === 'string' ? new Date(r.data.until) : null;
        msg = bannedText(until, typeof r.data.reason === 'string' ? r.data.reason : '');
      } else if (r.status === 429) {
        msg = `Too many failed logins from your address. ${retryAfterText(r.headers)}`;
      } else if (r.status === 422) {
        msg = 'The server could not read the request.';
      } else {
        msg = `Login failed (HTTP ${r.status}).`;
      }
      if (auto) showAuth(msg); else showFormError(el.loginError, msg);
      return false;
    } catch {
      const msg = 'Cannot reach the server. Check your connection and try again.';
      if (auto) showAuth(msg); else showFormError(el.loginError, msg);
      return false;
    } finally {
      el.loginSubmit.disabled = false;
      el.keyLogin.disabled = false;
    }
  }

  function onLoginSubmit(ev) {
    ev.preventDefault();
    const key = el.loginKey.value.trim();
    if (!key) {
      showFormError(el.loginError, 'Enter the key you got when you registered.');
      el.loginKey.focus();
      return;
    }
    login(key, el.loginRemember.checked);
  }

  async function copyKey() {
    const key = el.keyOutput.value;
    let ok = false;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(key);
        ok = true;
      }
    } catch { ok = false; }
    if (!ok) {
      el.keyOutput.focus();
      el.keyOutput.select();
      try { ok = document.execCommand('copy'); } catch { ok = false; }
    }
    el.keyCopyStatus.textContent = ok
      ? 'Copied to the clipboard. Paste it somewhere safe.'
      : 'Could not copy automatically: the key is selected, press Ctrl+C (or ⌘C).';
  }

  async function logout() {
    forgetKey();          // logging out means "don't log me in again by yourself"
    noteSession(false);
    disconnect();
    el.logout.disabled = true;
    try {
      let r = await api('POST', '/api/logout');
      if (r.status === 404 || r.status === 405) r = await api('GET', '/api/logout');
    } catch {
      // the session cookie stays until it expires; nothing else to do offline
    } finally {
      el.logout.disabled = false;
    }
    showAuth('You have logged out.');
  }

  // ---------------------------------------------------------------- composer

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

  function sendDraft() {
    const text = el.input.value;
    if (text === '') return;
    const client = state.client;
    if (!client || client.state !== 'open') {
      showComposerError('Not connected right now; your message is kept here. Send it once reconnected.');
      return;
    }
    // Over-long drafts are sent on purpose: the server is the judge, and its
    // message_too_long answer is shown like any other refusal. Only a frame the
    // server would answer by closing the socket (over 16 KiB, close 1009) is kept back.
    const frame = JSON.stringify({ message: text });
    if (encoder.encode(frame).length > MAX_FRAME_BYTES) {
      const msg = ackErrorText('message_too_long', text);
      addError('message_too_long', msg);
      showComposerError(msg);
      return;
    }
    client.send(text).then((id) => {
      if (state.client !== client) return;
      if (id !== null) state.lastId = Math.max(state.lastId ?? 0, id);
      addMessage(state.me, text, { own: true, id });
    }, (e) => {
      if (state.client !== client || !state.wantConnected) return;
      // Lost with the socket: it may have reached the room; a replay will tell.
      if (e.code === 'disconnected') addMessage(state.me, text, { own: true, unconfirmed: true });
      else if (e.code === 'not_connected') showComposerError('Not connected right now. Send it again once reconnected.');
      else ackError(e.code, text);
    });
    el.input.value = '';
    updateCounter();
    clearComposerError();
    el.input.focus();
  }

  // ---------------------------------------------------------------- wiring

  el.registerForm.addEventListener('submit', register);
  el.loginForm.addEventListener('submit', onLoginSubmit);
  el.keyCopy.addEventListener('click', copyKey);
  el.keyOutput.addEventListener('focus', () => el.keyOutput.select());
  el.keyLogin.addEventListener('click', () => {
    if (el.keyOutput.value) login(el.keyOutput.value, el.loginRemember.checked);
  });
  el.logout.addEventListener('click', logout);
  el.reconnectNow.addEventListener('click', () => connect());
  el.composer.addEventListener('submit', (ev) => {
    ev.preventDefault();
    sendDraft();
  });
  el.input.addEventListener('input', () => {
    updateCounter();
    if (!el.composerError.hidden) clearComposerError();
  });
  el.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      sendDraft();
    }
  });
  window.addEventListener('online', () => {
    if (state.wantConnected && state.client && state.client.state === 'waiting') connect();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && state.unread) {
      state.unread = 0;
      document.title = 'skiff chat';
    }
  });

  // ---------------------------------------------------------------- boot

  async function boot() {
    setView('boot');
    updateCounter();
    setComposerEnabled(false);
    let r = null;
    let unreachable = false;
    if (maybeSession()) {
      setStatus('connecting', 'Checking your session…');
      try {
        r = await api('GET', '/api/user/@me');
      } catch {
        unreachable = true;
      }
      if (r && r.status === 200 && r.data && typeof r.data.username === 'string') {
        enterChat(r.data.username);
        return;
      }
      if (r && (r.status === 401 || r.status === 422)) noteSession(false);
    }
    const key = storedKey();
    if (key) {
      state.storedKeyTried = true;
      setStatus('connecting', 'Logging in with your saved key…');
      if (await login(key, true, { auto: true })) return;
      if (document.body.dataset.view === 'auth') return;
    }
    showAuth(unreachable ? 'Cannot reach the server. Check your connection and reload.' : '');
  }

  boot();
})();

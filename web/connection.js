// The chat connection: skiff-client (/skiff-client.js) speaks the protocol (hello,
// resume with since/epoch, acks, full-jitter reconnects, close reasons); this module
// shows what it reports and decides what a close means for the person at the page:
// said in words, and no retry where a retry cannot help.

import { SkiffClient } from '/skiff-client.js';
import {
  HISTORY_LIMIT, el, state, forgetKey, noteSession, api, setStatus, whenText, addMessage,
  addIdMessage, isIdMessage, addEvent, removeMessage, addNote, renderOnline, applyPresence,
  ensureSelfOnline, loadOnline, loadHistory, setComposerEnabled,
} from '/page.js';
import { showAuth, sessionGone } from '/app.js';

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


export { connect, bannedText, disconnect };

/*
 * skiff web client: plain ES2020 modules, no framework, no build step: app.js (screens,
 * forms, boot), page.js (state, the stream, the online list, the composer's helpers),
 * connection.js (the socket, through /skiff-client.js, and what a close means). Served
 * under a strict CSP (script-src 'self', style-src 'self', no inline anything), so they
 * never write HTML strings or style attributes: every piece of text from the server
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
import {
  MAX_FRAME_BYTES, encoder, el, state, storedKey, rememberKey, forgetKey, maybeSession,
  noteSession, api, retryAfterText, setStatus, setView, showFormError, clearAuthMessages,
  showKeyBox, addMessage, addNote, addError, sameName, renderOnline, setComposerEnabled,
  ackErrorText, ackError, showComposerError, clearComposerError, updateCounter,
} from '/page.js';
import { connect, bannedText, disconnect } from '/connection.js';

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

export { showAuth, sessionGone };

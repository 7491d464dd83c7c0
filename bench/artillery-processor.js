// Artillery processor for bench/artillery.yml: what its WebSocket engine cannot say in
// YAML. The engine opens the socket before the first step, with fixed headers, so the
// register -> login -> cookie dance runs in the `connect` hook; and its `send`/`match`
// reads only the next frame, which under load is as likely another user's message or
// join as this user's ack, so the chat steps wait for their own ack among the traffic.
//
// Every failure rejects, which Artillery counts as an error and a failed virtual user:
// a broken scenario fails the run instead of printing a warning.

'use strict';

const crypto = require('node:crypto');

const HTTP_TIMEOUT_MS = 10_000;
const ACK_TIMEOUT_MS = 10_000;

// ws://HOST:PORT/ws -> http://HOST:PORT/api/...: the API is on the WebSocket's port.
function apiUrl(target, path) {
  const url = new URL(target);
  url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
  url.pathname = path;
  url.search = '';
  return url.toString();
}

async function postJson(url, body) {
  const started = performance.now();
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(HTTP_TIMEOUT_MS)
  });
  const text = await res.text();
  return { res, text, ms: performance.now() - started };
}

// `connect.function`: registers a fresh user, logs in, and puts the session cookie on
// the upgrade request. Usernames must be unique (a taken one is 409), so each virtual
// user draws 60 random bits: `^[A-Za-z0-9]{1,32}$` holds.
async function registerAndLogIn(wsArgs, context, done) {
  try {
    const username = `art${crypto.randomBytes(8).toString('hex')}`;
    const reg = await postJson(apiUrl(wsArgs.target, '/api/register'), { username });
    if (reg.res.status !== 201) {
      throw new Error(`register answered ${reg.res.status} ${reg.text.trim()}`);
    }
    const { key } = JSON.parse(reg.text);
    const login = await postJson(apiUrl(wsArgs.target, '/api/login'), { key });
    if (login.res.status !== 200) {
      throw new Error(`login answered ${login.res.status} ${login.text.trim()}`);
    }
    const cookie = /(?:^|[\s,])(session=[A-Za-z0-9]+)/.exec(login.res.headers.get('set-cookie') || '');
    if (!cookie) {
      throw new Error('login set no session cookie');
    }
    wsArgs.options = { ...wsArgs.options, headers: { ...(wsArgs.options || {}).headers, Cookie: cookie[1] } };
    context.vars.username = username;
    context.vars.httpMs = [reg.ms, login.ms];
    done(null);
  } catch (err) {
    done(err);
  }
}

// First step on the open socket: reports the HTTP half (the connect hook has no event
// emitter) and starts reading every frame for the rest of the scenario.
async function listen(context, events) {
  const [registerMs, loginMs] = context.vars.httpMs;
  events.emit('counter', 'skiff.registered', 1);
  events.emit('counter', 'skiff.logged_in', 1);
  events.emit('histogram', 'skiff.register_ms', registerMs);
  events.emit('histogram', 'skiff.login_ms', loginMs);
  // Closures live beside `vars`, which Artillery templates and may copy.
  context.skiff = { waiting: [], badFrame: null };
  context.ws.on('message', (data, isBinary) => {
    let frame;
    try {
      frame = isBinary ? null : JSON.parse(data.toString());
    } catch (_) {
      frame = null;
    }
    if (frame && typeof frame.status === 'boolean') {
      const waiter = context.skiff.waiting.shift();
      if (waiter) {
        waiter(frame);
      } else {
        context.skiff.badFrame = `an ack nobody waited for: ${data}`;
      }
    } else if (frame && typeof frame.message === 'string' && typeof frame.author === 'string') {
      events.emit('counter', 'skiff.messages_received', 1);
    } else if (frame && (frame.event === 'join' || frame.event === 'leave')) {
      events.emit('counter', `skiff.${frame.event}s_received`, 1);
    } else {
      context.skiff.badFrame = `a frame README does not describe: ${data}`;
    }
  });
}

// Sends one chat message and waits for this socket's ack, `{"status": true}`.
async function sayAndAwaitAck(context, events) {
  if (context.skiff.badFrame) {
    throw new Error(context.skiff.badFrame);
  }
  // Artillery counts loops from 0; the messages are numbered 1 to 5, like Tsung's.
  const message = `message ${Number(context.vars.$loopCount) + 1} from ${context.vars.username}`;
  const started = performance.now();
  const ack = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ack within ${ACK_TIMEOUT_MS} ms`)), ACK_TIMEOUT_MS);
    context.skiff.waiting.push((frame) => {
      clearTimeout(timer);
      resolve(frame);
    });
    context.ws.send(JSON.stringify({ message }), (err) => {
      if (err) {
        clearTimeout(timer);
        reject(err);
      }
    });
  });
  if (ack.status !== true) {
    throw new Error(`ack ${JSON.stringify(ack)}`);
  }
  events.emit('counter', 'skiff.messages_sent', 1);
  events.emit('counter', 'skiff.acks', 1);
  events.emit('histogram', 'skiff.ack_ms', performance.now() - started);
}

// Last step: a frame that arrived after the last ack still fails the virtual user.
async function finish(context) {
  if (context.skiff.badFrame) {
    throw new Error(context.skiff.badFrame);
  }
}

module.exports = { registerAndLogIn, listen, sayAndAwaitAck, finish };

// skiff-client: a small client for the skiff chat server, for browsers and Node.
// ES module, no dependencies. Protocol v2 (message ids, resume with since/epoch,
// resync), acks as promises in send order, reconnect with full-jitter exponential
// backoff, and close frames read into words (banned until when, kicked, logged out...).
//
//   import { SkiffClient } from 'skiff-client';
//   const chat = new SkiffClient({ url: 'https://chat.example' });
//   chat.on('message', (m) => console.log(m.author, m.message));
//   chat.connect();
//   const id = await chat.send('hello');

export const DEFAULT_BACKOFF = Object.freeze({ base: 500, cap: 30000, stable: 10000 });
const DEFAULT_KICK_DELAY = 30000;
// A v2 server sends the hello first; a v1 server ignores ?v=2 and stays silent, so this
// long without a hello after the open means v1.
const DEFAULT_HELLO_WAIT = 3000;

/** An ack refusal, a send without a connection, or a socket lost before the ack. */
export class SkiffError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'SkiffError';
    this.code = code;
  }
}

/**
 * The delay before reconnect attempt `attempt` (0 first): full jitter, uniformly
 * random in [0, min(cap, base * 2^attempt)), so that clients cut off together do not
 * come back together.
 */
export function backoffDelay(attempt, { base, cap } = DEFAULT_BACKOFF, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

// Close reasons after which a new socket would meet the same answer: the session is
// gone or the user may not chat. The app has to log in again (or give up).
const FINAL = {
  'logged out': 'logged_out',
  'session expired': 'session_expired',
  'key reset': 'key_reset',
  'user deleted': 'user_deleted',
  'replaced': 'replaced',
};
const TRANSIENT = {
  'shutting down': 'shutting_down',
  'going away': 'going_away',
  'silent peer': 'silent_peer',
  'too slow': 'too_slow',
  'too many frames': 'too_many_frames',
  'memory budget': 'memory_budget',
  'message too big': 'message_too_big',
  'binary frames are not accepted': 'binary_refused',
};

/**
 * Reads a close frame: {code, reason, kind, final, until?, text?}. `kind` names what
 * happened ('banned', 'kicked', 'logged_out', 'session_expired', ..., 'lost' for a
 * close without a known reason); `final` is true where reconnecting cannot help.
 * A ban carries `until` (a Date) when timed and `text` when the operator gave a reason.
 */
export function parseClose(code, reason = '') {
  const r = typeof reason === 'string' ? reason : '';
  const out = { code, reason: r, kind: 'lost', final: false };
  const ban = /^banned(?: until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ))?(?:: (.*))?$/s.exec(r);
  if (code === 1008 && ban) {
    out.kind = 'banned';
    out.final = true;
    if (ban[1]) {
      const until = new Date(ban[1]);
      if (!Number.isNaN(until.getTime())) out.until = until;
    }
    if (ban[2] !== undefined) out.text = ban[2];
  } else if (code === 1000 && r === 'kicked') {
    out.kind = 'kicked';
  } else if (FINAL[r]) {
    out.kind = FINAL[r];
    out.final = true;
  } else if (TRANSIENT[r]) {
    out.kind = TRANSIENT[r];
  }
  return out;
}

const isId = (n) => Number.isSafeInteger(n) && n >= 0;
const isIdMessage = (m) => isId(m.id) && typeof m.message === 'string' && typeof m.author === 'string';
const names = (a) => (Array.isArray(a) ? a.filter((n) => typeof n === 'string') : []);

export class SkiffClient {
  /**
   * options:
   *   url        the server, http(s):// or ws(s):// (browser default: this page's origin)
   *   WebSocket  constructor (default globalThis.WebSocket; in Node 20 pass `ws`'s)
   *   cookie     Node: the session cookie, e.g. 'skiff_session=...' (browsers send theirs)
   *   headers    Node: extra handshake headers
   *   protocol   2 (default) or 1 (plain /ws: no ids, no hello, no resume)
   *   presence   'batch' or 'count' (v2 presence options), default: one event per join/leave
   *   since, epoch  resume point, e.g. the last id and epoch of a /api/history answer
   *   reconnect  false to stay down after a close
   *   backoff    {base, cap, stable} ms (default 500, 30000, 10000): a socket open for
   *              `stable` ms resets the attempt count
   *   kickDelay  ms to wait after a kick before coming back (default 30000)
   *   helloWait  ms without a hello after which the server is taken for v1 (default 3000)
   *   random, setTimeout, clearTimeout  injectable for tests
   */
  constructor(options = {}) {
    this.options = options;
    this.url = baseUrl(options.url);
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (typeof this.WebSocket !== 'function') {
      throw new SkiffError('no_websocket', 'no WebSocket: pass options.WebSocket (e.g. the `ws` package in Node < 22)');
    }
    this.protocol = options.protocol === 1 ? 1 : 2;
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
    this.random = options.random || Math.random;
    this.setTimer = options.setTimeout || ((fn, ms) => setTimeout(fn, ms));
    this.clearTimer = options.clearTimeout || ((t) => clearTimeout(t));
    this.epoch = typeof options.epoch === 'string' ? options.epoch : null;
    this.lastId = isId(options.since) ? options.since : null;
    this.online = [];
    this.attempt = 0;
    this.state = 'idle';          // idle | connecting | open | waiting | closed
    this.ws = null;
    this.pending = [];            // {resolve, reject} per send on the current socket
    this.listeners = new Map();
    this.timers = { retry: null, stable: null, hello: null };
    this.helloLastId = null;
    this.helloSeen = false;
    this.wanted = false;
  }

  /** Subscribes; returns a function that unsubscribes. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this.listeners.get(event);
    if (set) set.delete(fn);
  }

  emit(event, data) {
    const set = this.listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(data);
      } catch (e) {
        // A throwing listener must not break the protocol state; tell 'error' listeners.
        if (event !== 'error') this.emit('error', e);
      }
    }
  }

  /** Opens the socket (and keeps it open, reconnecting, until close()). */
  connect() {
    this.wanted = true;
    this.cancel('retry');
    if (this.ws) return;
    this.open();
  }

  /** Skips the wait of a scheduled reconnect, with the backoff reset. */
  reconnectNow() {
    this.attempt = 0;
    if (!this.wanted || this.ws) return;
    this.connect();
  }

  /** Closes for good: no reconnect; sends still waiting for an ack reject. */
  close(code = 1000, reason = '') {
    this.wanted = false;
    for (const k of Object.keys(this.timers)) this.cancel(k);
    const ws = this.ws;
    this.ws = null;
    this.failPending('disconnected');
    this.setState('closed');
    if (ws && ws.readyState <= 1) {
      try { ws.close(code, reason); } catch { /* already closing */ }
    }
  }

  /** Where to resume from: the next socket asks for every message after `lastId`. */
  resumeFrom(epoch, lastId) {
    this.epoch = typeof epoch === 'string' ? epoch : null;
    this.lastId = isId(lastId) ? lastId : null;
  }

  /**
   * Sends a chat message. Resolves with its id (v2; null from a v1 server) once the
   * server acks it; rejects with a SkiffError: the refusal's code (message_too_long,
   * rate_limited, ...), 'not_connected', or 'disconnected' if the socket went first.
   */
  send(text) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1 || this.state !== 'open') {
      return Promise.reject(new SkiffError('not_connected'));
    }
    return new Promise((resolve, reject) => {
      try {
        ws.send(JSON.stringify({ message: String(text) }));
      } catch (e) {
        reject(new SkiffError('disconnected', String(e && e.message || e)));
        return;
      }
      this.pending.push({ resolve, reject });
    });
  }

  /** GET /api/history (same origin and cookie as the socket): {epoch, messages}. */
  async history({ limit, before } = {}) {
    const q = new URLSearchParams();
    if (limit !== undefined) q.set('limit', String(limit));
    if (before !== undefined) q.set('before', String(before));
    const s = q.toString();
    const res = await fetch(`${this.url}/api/history${s ? `?${s}` : ''}`, {
      credentials: 'same-origin',
      cache: 'no-store',
      headers: this.handshakeHeaders(),
    });
    let body = null;
    try { body = await res.json(); } catch { body = null; }
    if (res.status !== 200 || !body || typeof body.epoch !== 'string' || !Array.isArray(body.messages)) {
      throw new SkiffError(body && typeof body.error === 'string' ? body.error : `http_${res.status}`);
    }
    return { epoch: body.epoch, messages: body.messages.filter((m) => m && isIdMessage(m)) };
  }

  // ------------------------------------------------------------------ internals

  handshakeHeaders() {
    const h = { ...(this.options.headers || {}) };
    if (this.options.cookie) h.Cookie = this.options.cookie;
    return h;
  }

  socketUrl() {
    const ws = this.url.replace(/^http/, 'ws');
    if (this.protocol === 1) return `${ws}/ws`;
    const q = new URLSearchParams({ v: '2' });
    if (this.epoch !== null && this.lastId !== null) {
      q.set('since', String(this.lastId));
      q.set('epoch', this.epoch);
    }
    if (this.options.presence) q.set('presence', String(this.options.presence));
    return `${ws}/ws?${q}`;
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  cancel(name) {
    if (this.timers[name] !== null) this.clearTimer(this.timers[name]);
    this.timers[name] = null;
  }

  open() {
    const headers = this.handshakeHeaders();
    const url = this.socketUrl();
    let ws;
    try {
      // Both `ws` (Node) and Node 22's built-in WebSocket take {headers} here; a
      // browser gets no second argument and sends its own cookie.
      ws = Object.keys(headers).length ? new this.WebSocket(url, { headers }) : new this.WebSocket(url);
    } catch (e) {
      this.emit('error', e);
      this.afterClose(parseClose(1006, ''), false);
      return;
    }
    this.ws = ws;
    this.setState('connecting');
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.pending = [];
      this.helloSeen = false;
      this.helloLastId = null;
      this.setState('open');
      this.timers.stable = this.setTimer(() => {
        this.timers.stable = null;
        this.attempt = 0;
      }, this.backoff.stable);
      if (this.protocol === 2) {
        const wait = this.options.helloWait ?? DEFAULT_HELLO_WAIT;
        this.timers.hello = this.setTimer(() => {
          this.timers.hello = null;
          if (this.ws === ws && !this.helloSeen) this.fallBack();
        }, wait);
      }
      this.emit('open', { url, protocol: this.protocol });
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws || typeof ev.data !== 'string') return;
      this.frame(ev.data);
    };
    ws.onerror = () => { /* always followed by close, handled there */ };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.cancel('hello');
      this.cancel('stable');
      this.failPending('disconnected');
      this.afterClose(parseClose(ev.code, ev.reason), opened);
    };
  }

  failPending(code) {
    const p = this.pending;
    this.pending = [];
    for (const { reject } of p) reject(new SkiffError(code));
  }

  afterClose(info, opened) {
    const event = { ...info, opened, willReconnect: false, delay: null };
    if (!this.wanted || info.final || this.options.reconnect === false) {
      if (info.final) this.wanted = false;
      this.setState('closed');
      this.emit('close', event);
      return;
    }
    let delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    if (info.kind === 'kicked') delay = Math.max(delay, this.options.kickDelay ?? DEFAULT_KICK_DELAY);
    event.willReconnect = true;
    event.delay = delay;
    this.setState('waiting');
    this.emit('close', event);
    // A listener may have called close() or connect() meanwhile.
    if (!this.wanted || this.ws || this.timers.retry !== null) return;
    this.emit('reconnecting', { attempt: this.attempt, delay });
    this.timers.retry = this.setTimer(() => {
      this.timers.retry = null;
      if (this.wanted && !this.ws) this.open();
    }, delay);
  }

  // The server did not greet ?v=2: it is a v1 server. This socket works as a v1 one.
  fallBack() {
    this.cancel('hello');
    this.protocol = 1;
    this.emit('fallback', { protocol: 1 });
  }

  frame(text) {
    let m;
    try { m = JSON.parse(text); } catch { return; }
    if (!m || typeof m !== 'object') return;
    if (m.event === 'hello' && typeof m.epoch === 'string') {
      this.hello(m);
      return;
    }
    if (this.protocol === 2 && !this.helloSeen) this.fallBack();
    if (typeof m.status === 'boolean') {
      this.ack(m);
    } else if (m.event === 'resync') {
      // What lies between the resume point and the hello's last_id is gone; live
      // messages follow above last_id. The app refetches the history.
      this.lastId = this.helloLastId;
      this.emit('resync', { epoch: this.epoch, lastId: this.lastId });
    } else if (m.event === 'delete' && isId(m.id)) {
      this.emit('delete', { id: m.id });
    } else if ((m.event === 'join' || m.event === 'leave') && typeof m.username === 'string') {
      this.presence(m.event === 'join' ? [m.username] : [], m.event === 'leave' ? [m.username] : []);
      this.emit(m.event, { username: m.username });
    } else if (m.event === 'presence' || m.event === 'count') {
      if (Array.isArray(m.join) || Array.isArray(m.leave)) {
        this.presence(names(m.join), names(m.leave));
        this.emit('presence', { join: names(m.join), leave: names(m.leave), online: [...this.online] });
      }
      const count = Number.isSafeInteger(m.count) ? m.count : Number.isSafeInteger(m.online) ? m.online : null;
      if (count !== null) this.emit('count', { count });
    } else if (isIdMessage(m)) {
      // Ids only grow within an epoch: one at or below the last seen is a replayed duplicate.
      if (this.lastId !== null && m.id <= this.lastId) return;
      this.lastId = m.id;
      this.emit('message', { id: m.id, ts: typeof m.ts === 'number' ? m.ts : null, message: m.message, author: m.author });
    } else if (typeof m.message === 'string' && typeof m.author === 'string') {
      this.emit('message', { id: null, ts: null, message: m.message, author: m.author });
    }
  }

  hello(m) {
    this.cancel('hello');
    // Only a v2 server greets: one late past helloWait undoes the fallback.
    this.protocol = 2;
    this.helloSeen = true;
    // A new epoch means the history was lost: ids start over (the server follows with resync).
    if (this.epoch !== null && this.epoch !== m.epoch) this.lastId = null;
    this.epoch = m.epoch;
    this.helloLastId = isId(m.last_id) ? m.last_id : null;
    // Without a resume point there is no replay: live messages start after last_id.
    if (this.lastId === null) this.lastId = this.helloLastId;
    this.online = names(m.online);
    this.emit('hello', { epoch: m.epoch, lastId: this.helloLastId, online: [...this.online] });
  }

  ack(m) {
    const p = this.pending.shift();
    if (m.status) {
      const id = isId(m.id) ? m.id : null;
      if (id !== null) this.lastId = Math.max(this.lastId ?? 0, id);
      if (p) p.resolve(id);
    } else if (p) {
      p.reject(new SkiffError(typeof m.code === 'string' ? m.code : 'unknown'));
    }
  }

  presence(join, leave) {
    for (const u of join) if (!this.online.some((n) => n.toLowerCase() === u.toLowerCase())) this.online.push(u);
    for (const u of leave) {
      const i = this.online.findIndex((n) => n.toLowerCase() === u.toLowerCase());
      if (i >= 0) this.online.splice(i, 1);
    }
  }
}

function baseUrl(url) {
  if (typeof url === 'string' && url) return url.replace(/\/+$/, '').replace(/^ws(s?):/, 'http$1:');
  if (typeof location !== 'undefined' && location.origin) return location.origin;
  throw new SkiffError('no_url', 'options.url is required outside a browser page');
}

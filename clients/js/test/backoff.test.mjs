// Unit tests with an injected random and timer: no real sockets, no sleeping.
import test from 'node:test';
import assert from 'node:assert/strict';
import { SkiffClient, backoffDelay, parseClose, DEFAULT_BACKOFF } from '../skiff-client.js';

// A WebSocket stand-in that the test opens and closes by hand.
function fakeSockets() {
  const made = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      made.push(this);
    }
    send(s) { this.sent.push(s); }
    close() { this.readyState = 3; }
    open() { this.readyState = 1; this.onopen({}); }
    receive(obj) { this.onmessage({ data: JSON.stringify(obj) }); }
    drop(code = 1006, reason = '') { this.readyState = 3; this.onclose({ code, reason }); }
  }
  return { FakeWS, made };
}

function fakeTimers() {
  const timers = new Map();
  let next = 1;
  return {
    timers,
    setTimeout: (fn, ms) => { const id = next++; timers.set(id, { fn, ms }); return id; },
    clearTimeout: (id) => { timers.delete(id); },
    // Fires the one pending timer with this delay class (the retry or the stable timer).
    fire(pred) {
      for (const [id, t] of timers) {
        if (pred(t)) { timers.delete(id); t.fn(); return t; }
      }
      throw new Error(`no such timer among ${JSON.stringify([...timers.values()].map((t) => t.ms))}`);
    },
  };
}

test('backoffDelay stays within the full-jitter bounds and is capped', () => {
  const b = { base: 500, cap: 30000 };
  for (let attempt = 0; attempt < 40; attempt += 1) {
    const ceiling = Math.min(b.cap, b.base * 2 ** attempt);
    assert.equal(backoffDelay(attempt, b, () => 0), 0);
    const top = backoffDelay(attempt, b, () => 0.999999);
    assert.ok(top < ceiling && top >= ceiling * 0.99, `attempt ${attempt}: ${top} vs ceiling ${ceiling}`);
    assert.equal(backoffDelay(attempt, b, () => 0.5), Math.floor(ceiling / 2));
  }
  assert.equal(backoffDelay(1000, b, () => 0.999999), 29999);
  assert.deepEqual({ ...DEFAULT_BACKOFF }, { base: 500, cap: 30000, stable: 10000 });
});

test('close reasons are read into kinds; final ones say so', () => {
  assert.deepEqual(parseClose(1008, 'banned'), { code: 1008, reason: 'banned', kind: 'banned', final: true });
  const timed = parseClose(1008, 'banned until 2026-12-06T15:04:05Z: link spam: again');
  assert.equal(timed.kind, 'banned');
  assert.equal(timed.until.toISOString(), '2026-12-06T15:04:05.000Z');
  assert.equal(timed.text, 'link spam: again');
  assert.equal(parseClose(1008, 'banned: spam').text, 'spam');
  assert.equal(parseClose(1008, 'banned: spam').until, undefined);
  for (const [code, reason, kind, final] of [
    [1000, 'logged out', 'logged_out', true],
    [1000, 'kicked', 'kicked', false],
    [1001, 'shutting down', 'shutting_down', false],
    [1008, 'session expired', 'session_expired', true],
    [1008, 'key reset', 'key_reset', true],
    [1008, 'user deleted', 'user_deleted', true],
    [1008, 'replaced', 'replaced', true],
    [1008, 'too slow', 'too_slow', false],
    [1009, 'message too big', 'message_too_big', false],
    [1006, '', 'lost', false],
    [1008, '', 'lost', false],
  ]) {
    const c = parseClose(code, reason);
    assert.equal(c.kind, kind, `${code} ${reason}`);
    assert.equal(c.final, final, `${code} ${reason}`);
  }
});

test('reconnects use full-jitter delays that grow, reset after a stable connection', () => {
  const { FakeWS, made } = fakeSockets();
  const t = fakeTimers();
  let r = 0.999999;
  const c = new SkiffClient({ url: 'http://chat.test', WebSocket: FakeWS, random: () => r,
    setTimeout: t.setTimeout, clearTimeout: t.clearTimeout, backoff: { base: 100, cap: 1000, stable: 5000 } });
  const delays = [];
  c.on('reconnecting', (e) => delays.push(e.delay));
  c.connect();
  for (let i = 0; i < 6; i += 1) {
    made.at(-1).drop(1006);                  // refused before opening
    t.fire((x) => x.ms === delays.at(-1));
  }
  assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
  // Open, stay up for `stable`: the next drop starts again from the base.
  made.at(-1).open();
  made.at(-1).receive({ event: 'hello', epoch: 'e1', last_id: 0, online: [] });
  t.fire((x) => x.ms === 5000);
  r = 0.5;
  made.at(-1).drop(1001, 'shutting down');
  assert.equal(delays.at(-1), 50);
  // A socket that drops before it is stable does not reset the count.
  t.fire((x) => x.ms === 50);
  made.at(-1).open();
  made.at(-1).drop(1006);
  assert.equal(delays.at(-1), 100);
});

test('no reconnect where it cannot help; a kick waits kickDelay; sends reject on disconnect', async () => {
  const { FakeWS, made } = fakeSockets();
  const t = fakeTimers();
  const c = new SkiffClient({ url: 'http://chat.test', WebSocket: FakeWS, random: () => 0,
    setTimeout: t.setTimeout, clearTimeout: t.clearTimeout, kickDelay: 7000 });
  const closes = [];
  c.on('close', (e) => closes.push(e));
  c.connect();
  made[0].open();
  made[0].receive({ event: 'hello', epoch: 'e1', last_id: 5, online: ['ann'] });
  const p1 = c.send('one');
  const p2 = c.send('two');
  const p3 = c.send('three');
  made[0].receive({ status: true, id: 6 });
  made[0].receive({ status: false, code: 'message_too_long' });
  assert.equal(await p1, 6);
  await assert.rejects(p2, (e) => e.code === 'message_too_long');
  made[0].drop(1000, 'kicked');
  await assert.rejects(p3, (e) => e.code === 'disconnected');
  assert.equal(closes[0].kind, 'kicked');
  assert.equal(closes[0].delay, 7000);
  t.fire((x) => x.ms === 7000);
  assert.equal(made.length, 2);
  assert.match(made[1].url, /since=6&epoch=e1/);
  made[1].open();
  made[1].drop(1008, 'banned until 2030-01-02T03:04:05Z: spam');
  assert.equal(closes[1].kind, 'banned');
  assert.equal(closes[1].text, 'spam');
  assert.equal(closes[1].willReconnect, false);
  assert.equal(c.state, 'closed');
  assert.equal([...t.timers.values()].length, 0, 'no timer left behind');
  await assert.rejects(c.send('late'), (e) => e.code === 'not_connected');
});

test('resume state: replay duplicates dropped, resync moves to the hello last_id, a new epoch restarts ids', () => {
  const { FakeWS, made } = fakeSockets();
  const t = fakeTimers();
  const c = new SkiffClient({ url: 'https://chat.test/', WebSocket: FakeWS, since: 8, epoch: 'ep1',
    setTimeout: t.setTimeout, clearTimeout: t.clearTimeout, presence: 'batch' });
  const got = [];
  const resyncs = [];
  c.on('message', (m) => got.push(m.id));
  c.on('resync', (e) => resyncs.push(e));
  c.connect();
  assert.equal(made[0].url, 'wss://chat.test/ws?v=2&since=8&epoch=ep1&presence=batch');
  made[0].open();
  made[0].receive({ event: 'hello', epoch: 'ep1', last_id: 40, online: ['zed'] });
  made[0].receive({ id: 8, ts: 1, message: 'dup', author: 'zed' });
  made[0].receive({ event: 'resync' });
  made[0].receive({ id: 41, ts: 1, message: 'live', author: 'zed' });
  assert.deepEqual(got, [41]);
  assert.deepEqual(resyncs, [{ epoch: 'ep1', lastId: 40 }]);
  made[0].receive({ event: 'hello', epoch: 'ep2', last_id: 9, online: ['zed'] });
  made[0].receive({ event: 'resync' });
  made[0].receive({ id: 10, ts: 1, message: 'ten in ep2', author: 'zed' });
  assert.deepEqual(got, [41, 10]);
  const ev = [];
  c.on('presence', (p) => ev.push(p));
  made[0].receive({ event: 'presence', join: ['amy', 'bo'], leave: ['zed'] });
  assert.deepEqual(ev, [{ join: ['amy', 'bo'], leave: ['zed'], online: ['amy', 'bo'] }]);
  c.close();
});

test('a server that does not greet ?v=2 is taken for v1', () => {
  const { FakeWS, made } = fakeSockets();
  const t = fakeTimers();
  const c = new SkiffClient({ url: 'http://chat.test', WebSocket: FakeWS, setTimeout: t.setTimeout, clearTimeout: t.clearTimeout });
  let fell = 0;
  c.on('fallback', () => { fell += 1; });
  c.connect();
  made[0].open();
  t.fire((x) => x.ms === 3000);
  assert.equal(fell, 1);
  assert.equal(c.protocol, 1);
  made[0].drop(1006);
  t.fire((x) => x.ms < 3000 && x.ms !== 10000);
  assert.equal(made[1].url, 'ws://chat.test/ws');
  c.close();
});

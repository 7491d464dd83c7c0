// The client against a real skiff (target/debug/skiff, or SKIFF_BIN) on loopback.
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import WebSocket from 'ws';
import { SkiffClient } from '../skiff-client.js';
import { startSkiff, user, login, next } from '../testlib/skiff.mjs';

const tag = Date.now().toString(36).slice(-5) + Math.floor(Math.random() * 1e4).toString(36);
let srv;
const clients = [];

before(async () => { srv = await startSkiff(); });
after(async () => {
  for (const c of clients) c.close();
  await srv.stop();
});

function client(u, extra = {}) {
  const c = new SkiffClient({ url: srv.url, WebSocket, cookie: u.cookie, ...extra });
  clients.push(c);
  return c;
}

// Timers the test fires by hand, so a reconnect happens exactly when the test says.
function manualTimers() {
  const timers = new Map();
  let id = 0;
  return {
    setTimeout: (fn, ms) => { id += 1; timers.set(id, { fn, ms }); return id; },
    clearTimeout: (i) => timers.delete(i),
    fireRetry() {
      const hit = [...timers].find(([, t]) => t.ms < 3000);   // not the stable/hello timers
      assert.ok(hit, `no retry timer scheduled: ${JSON.stringify([...timers.values()].map((t) => t.ms))}`);
      timers.delete(hit[0]);
      hit[1].fn();
    },
  };
}

// The status of a bare v2 handshake with this cookie: 101, or the refusal's status.
function handshake(cookie) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${srv.url.replace('http', 'ws')}/ws?v=2`, { headers: { Cookie: cookie } });
    ws.on('open', () => { ws.close(); resolve(101); });
    ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode); res.resume(); });
    ws.on('error', () => resolve(0));
  });
}

test('the server serves this very module as /skiff-client.js (the built-in page imports it)', async () => {
  const res = await fetch(`${srv.url}/skiff-client.js`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/javascript/);
  const mine = fs.readFileSync(new URL('../skiff-client.js', import.meta.url), 'utf8');
  assert.equal(await res.text(), mine, 'the binary embeds another version: rebuild skiff');
});

test('connect, send with an ack promise, another client receives it with the same id', async () => {
  const a = client(await user(srv.url, `ann${tag}`));
  const b = client(await user(srv.url, `bob${tag}`));
  const helloA = next(a, 'hello');
  a.connect();
  assert.ok((await helloA).online.includes(`ann${tag}`));
  const joined = next(a, 'join', (e) => e.username === `bob${tag}`);
  const helloB = next(b, 'hello');
  b.connect();
  const hb = await helloB;
  assert.deepEqual(hb.online.slice(-2), [`ann${tag}`, `bob${tag}`]);
  await joined;
  const got = next(b, 'message', (m) => m.message === 'hi from ann');
  const ids = await Promise.all([a.send('hi from ann'), a.send('and again')]);
  assert.ok(Number.isSafeInteger(ids[0]) && ids[1] === ids[0] + 1, `ids in send order: ${ids}`);
  const m = await got;
  assert.equal(m.id, ids[0]);
  assert.equal(m.author, `ann${tag}`);
  assert.ok(m.ts > 1.6e12, `ts is Unix ms: ${m.ts}`);
  await assert.rejects(a.send('x'.repeat(301)), (e) => e.code === 'message_too_long');
  assert.equal(typeof (await a.send('still fine')), 'number');
  const hist = await a.history({ limit: 3 });
  assert.deepEqual(hist.messages.map((x) => x.message), ['hi from ann', 'and again', 'still fine']);
  a.close();
  b.close();
});

test('after a dropped connection the client resumes with since: every missed message once, in order', async () => {
  const a = client(await user(srv.url, `cat${tag}`));
  const timers = manualTimers();
  const urls = [];
  class Recording extends WebSocket {
    constructor(url, opts) { super(url, opts); urls.push(url); }
  }
  const b = client(await user(srv.url, `dan${tag}`), { WebSocket: Recording, ...timers });
  const seen = [];
  b.on('message', (m) => seen.push(m));
  let h = next(a, 'hello');
  a.connect();
  await h;
  h = next(b, 'hello');
  b.connect();
  await h;
  // The broadcast does not wait for the disk, the ack does: listen before sending.
  const before = next(b, 'message', (m) => m.message === 'before the cut');
  await a.send('before the cut');
  await before;
  const lastBefore = b.lastId;
  const pending = b.send('lost with the socket');
  const closed = next(b, 'close');
  b.ws.terminate();                                    // no close frame: a network cut
  await assert.rejects(pending, (e) => e.code === 'disconnected');
  const c = await closed;
  assert.equal(c.kind, 'lost');
  assert.equal(c.willReconnect, true);
  const missed = ['missed 1', 'missed 2', 'missed 3'];
  for (const t of missed) await a.send(t);
  const back = next(b, 'message', (m) => m.message === 'missed 3');
  timers.fireRetry();
  await back;
  assert.match(urls.at(-1), new RegExp(`since=${lastBefore}&epoch=`));
  const texts = seen.map((m) => m.message).filter((t) => t !== 'lost with the socket');
  assert.deepEqual(texts.slice(-3), missed);
  assert.equal(new Set(seen.map((m) => m.id)).size, seen.length, 'an id delivered twice');
  a.close();
  b.close();
});

test('a resume point from another epoch gets resync, and live messages follow', async () => {
  const a = client(await user(srv.url, `eve${tag}`));
  const b = client(await user(srv.url, `fay${tag}`), { epoch: 'not-this-epoch', since: 1 });
  let h = next(a, 'hello');
  a.connect();
  await h;
  const hello = next(b, 'hello');
  const resync = next(b, 'resync');
  b.connect();
  const hb = await hello;
  const r = await resync;
  assert.notEqual(hb.epoch, 'not-this-epoch');
  assert.deepEqual(r, { epoch: hb.epoch, lastId: hb.lastId });
  const live = next(b, 'message', (m) => m.message === 'after resync');
  const id = await a.send('after resync');
  assert.equal((await live).id, id);
  a.close();
  b.close();
});

test('two devices of one user both chat (needs several v2 devices on the server)', async (t) => {
  const u = await user(srv.url, `gus${tag}`);
  const other = await login(srv.url, u.key);
  const one = client(u);
  let h = next(one, 'hello');
  one.connect();
  await h;
  const status = await handshake(other);
  if (status === 409) {
    t.skip('SKIPPED (server lacks several devices: a second v2 socket got 409)');
    one.close();
    return;
  }
  const two = client({ cookie: other });
  h = next(two, 'hello');
  two.connect();
  const h2 = await h;
  assert.equal(h2.online.filter((n) => n === u.name).length, 1, `listed once: ${h2.online}`);
  const got = next(two, 'message', (m) => m.message === 'from device one');
  const id = await one.send('from device one');
  assert.equal((await got).id, id);
  one.close();
  two.close();
});

test('a ban closes with its reason: no reconnect, and login answers 403 banned with the reason', async (t) => {
  const u = await user(srv.url, `hal${tag}`);
  const c = client(u, { random: () => 0 });
  const h = next(c, 'hello');
  c.connect();
  await h;
  const closed = next(c, 'close');
  const r = srv.ctl('ban', u.name, '--reason', 'link spam');
  assert.equal(r.status, 0, r.out);
  const e = await closed;
  assert.equal(e.code, 1008);
  if (e.reason === '') {
    t.skip('SKIPPED (server lacks close reasons: the ban closed with an empty reason)');
    c.close();
    return;
  }
  assert.equal(e.kind, 'banned');
  assert.equal(e.text, 'link spam');
  assert.equal(e.willReconnect, false);
  assert.equal(c.state, 'closed');
  const again = await login(srv.url, u.key);
  assert.equal(again.status, 403);
  assert.deepEqual(JSON.parse(again.body), { error: 'banned', reason: 'link spam' });
});

test('kick --for is a timed ban: the close says until when (needs kick --for on the server)', async (t) => {
  const u = await user(srv.url, `ivy${tag}`);
  const c = client(u);
  const h = next(c, 'hello');
  c.connect();
  await h;
  // spawnSync holds the event loop, so a listener added after it still sees the close.
  const r = srv.ctl('kick', u.name, '--for', '1h');
  if (r.status !== 0 && /unknown flag|does not take/.test(r.out)) {
    t.skip(`SKIPPED (server lacks kick --for: ${r.out.trim().split('\n')[0]})`);
    c.close();
    return;
  }
  const closed = next(c, 'close');
  assert.equal(r.status, 0, r.out);
  const e = await closed;
  assert.equal(e.kind, 'banned');
  assert.ok(e.until instanceof Date && e.until > Date.now() + 3500e3 && e.until < Date.now() + 3700e3, `until ${e.until}`);
  assert.equal(e.willReconnect, false);
});

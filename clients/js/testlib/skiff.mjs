// A real skiff for the Node tests: started on 127.0.0.1:0 in a fresh directory, its
// address read from the "listening on" line, stopped (SIGTERM, then SIGKILL) at the end.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export function skiffBin() {
  if (process.env.SKIFF_BIN) return process.env.SKIFF_BIN;
  const target = process.env.CARGO_TARGET_DIR || path.join(repo, 'target');
  return path.join(target, 'debug', 'skiff');
}

export async function startSkiff(args = []) {
  const bin = skiffBin();
  if (!fs.existsSync(bin)) throw new Error(`no skiff binary at ${bin}: run \`cargo build\` or set SKIFF_BIN`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'skiff-js-'));
  const db = path.join(dir, 'chat.db');
  const child = spawn(bin, ['--listen', '127.0.0.1:0', '--db', db, ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  const url = await new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error('skiff did not print "listening on" within 10 s')), 10000);
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`skiff exited (${code}) before listening`)); });
    child.stdout.on('data', (d) => {
      buf += d;
      const m = /listening on (http:\/\/\S+)/.exec(buf);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
  });
  child.stdout.resume();
  const control = `${db}.ctl`;
  return {
    url,
    // `skiff ctl ARGS` against this server: {status, out}.
    ctl(...ctlArgs) {
      const r = spawnSync(bin, ['ctl', '--control', control, ...ctlArgs], { encoding: 'utf8', timeout: 10000 });
      return { status: r.status, out: `${r.stdout || ''}${r.stderr || ''}` };
    },
    async stop() {
      if (child.exitCode === null) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await gone;
        clearTimeout(t);
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Registers NAME and logs in: the session cookie, ready for the client's `cookie` option.
export async function user(url, name) {
  const reg = await fetch(`${url}/api/register`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: name }) });
  if (reg.status !== 201) throw new Error(`register ${name}: HTTP ${reg.status}`);
  const { key } = await reg.json();
  return { name, key, cookie: await login(url, key) };
}

export async function login(url, key) {
  const res = await fetch(`${url}/api/login`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ key }) });
  const text = await res.text();
  if (res.status !== 200) return { status: res.status, body: text };
  return res.headers.get('set-cookie').split(';')[0];
}

// Resolves with the first event `name` for which `pred` holds; rejects after `ms`.
export function next(client, name, pred = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${name} event within ${ms} ms`)); }, ms);
    const off = client.on(name, (e) => {
      if (!pred(e)) return;
      clearTimeout(timer);
      off();
      resolve(e);
    });
  });
}

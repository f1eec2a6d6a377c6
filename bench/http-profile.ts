// Where one HTTP request's time goes: the gateway (SQLite store, one ticket in a header, a 4
// KB JSON response scanned, as bench:http's reference case) under wrk load, after a
// warm-up, with a CPU profile of the gateway's thread taken over the measured window only.
// Prints req/s, CPU per request (the whole process: V8's collector threads included), store
// transactions per request, and the profile's self and inclusive time by function, as µs
// per request. BENCH_PROFILE_OUT=<file.cpuprofile> keeps the raw profile for a viewer.
//
// Run: node --import tsx bench/http-profile.ts   (BENCH_SECONDS=5 BENCH_WARMUP=3
// BENCH_CONNECTIONS=16 BENCH_TOP=40; needs wrk: apt-get install -y wrk)
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { initHome, openContext } from '../src/server/context.js';
import { startHttpFrontend } from '../src/server/frontends.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const TOP = Number(process.env.BENCH_TOP ?? 40);
const run = promisify(execFile);

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

async function wrk(url: string, headers: Record<string, string>, seconds: number): Promise<number> {
  const args = ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  const { stdout } = await run('wrk', [...args, url]);
  const match = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (match === null) throw new Error(`wrk printed no rate:\n${stdout}`);
  return Number(match[1]);
}

/** A function's label: name, file (the part after src/ or node_modules/) and line. */
function label(node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame;
  const file = url.replace(/^.*\/node_modules\//, '').replace(/^.*\/(src|bench)\//, '$1/');
  return `${functionName || '(anonymous)'} ${file}${file === '' ? '' : `:${lineNumber + 1}`}`;
}

function summarize(profile: Profile, requests: number) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const timeOf = new Map<number, number>();
  let total = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i] ?? 0;
    timeOf.set(profile.samples[i]!, (timeOf.get(profile.samples[i]!) ?? 0) + dt);
    total += dt;
  }
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  for (const [id, t] of timeOf) {
    const node = byId.get(id)!;
    self.set(label(node), (self.get(label(node)) ?? 0) + t);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const l = label(byId.get(cur)!);
      if (seen.has(l)) continue;
      seen.add(l);
      inclusive.set(l, (inclusive.get(l) ?? 0) + t);
    }
  }
  const print = (title: string, table: Map<string, number>) => {
    console.log(`\n${title} (µs per request, % of the thread's time)`);
    for (const [name, t] of [...table].sort((a, b) => b[1] - a[1]).slice(0, TOP)) {
      console.log(
        `${(t / requests).toFixed(1).padStart(8)} ${((100 * t) / total).toFixed(1).padStart(5)}%  ${name}`,
      );
    }
  };
  print('self time', self);
  print('inclusive time', inclusive);
}

async function main() {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT')
      throw new Error('wrk is needed: apt-get install -y wrk');
  }
  const upstream = spawn(
    process.execPath,
    ['--import', 'tsx', new URL('./http-upstream.ts', import.meta.url).pathname],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  // Killed on any exit (an output pipe closed early included), not only after a clean run.
  process.on('exit', () => upstream.kill());
  const port = await new Promise<number>((resolve) =>
    upstream.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
  );
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-profile-'));
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, 'log:\n  level: warn\n');
  const ctx = await openContext(home, { env: {} });
  const gateway = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'warn' }));
  const session = new Session();
  try {
    const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
    await ctx.vault.addSecret(
      { name: 's0', value: Buffer.from('bench-secret-value-0-0123456789abcdef'), allow: ['up'] },
      'admin:bench',
    );
    const { ticket } = await ctx.vault.issueTicket(
      { secret: 's0', principal: agentRef(agent.id) },
      'admin:bench',
    );
    await ctx.connections.add({ name: 'up', type: 'http', url: `http://127.0.0.1:${port}` }, 'admin:bench');
    const url = `${gateway.url}/c/up/json4k`;
    const headers = { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` };

    // Count store transactions (each is a BEGIN IMMEDIATE and a COMMIT on SQLite).
    let transactions = 0;
    const transaction = ctx.store.transaction.bind(ctx.store);
    ctx.store.transaction = ((fn, options) => {
      transactions += 1;
      return transaction(fn, options);
    }) as typeof ctx.store.transaction;

    await wrk(url, headers, WARMUP);
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: 100 });
    const before = { tx: transactions, cpu: process.cpuUsage(), audit: ctx.audit.batchesCommitted };
    await session.post('Profiler.start');
    const rps = await wrk(url, headers, SECONDS);
    const { profile } = await session.post('Profiler.stop');
    const cpu = process.cpuUsage(before.cpu);
    const requests = rps * SECONDS;
    console.log(
      `HTTP request profile: one ticket, 4 KB JSON response, SQLite store, wrk -c${CONNECTIONS} ${SECONDS}s after ${WARMUP}s warm-up; load average ${(
        await import('node:os')
      )
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    );
    console.log(
      `${rps.toFixed(0)} req/s; process CPU ${((cpu.user + cpu.system) / requests).toFixed(0)} µs/request; store transactions ${((transactions - before.tx) / requests).toFixed(3)}/request (audit batches ${((ctx.audit.batchesCommitted - before.audit) / requests).toFixed(3)})`,
    );
    if (process.env.BENCH_PROFILE_OUT) writeFileSync(process.env.BENCH_PROFILE_OUT, JSON.stringify(profile));
    summarize(profile as Profile, requests);
  } finally {
    session.disconnect();
    await gateway.close();
    await ctx.close();
    upstream.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

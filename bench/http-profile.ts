// Where one HTTP request's time goes: the gateway (SQLite store, one ticket in a header, a 4
// KB JSON response scanned, as bench:http's reference case) under wrk load, after a
// warm-up, with a CPU profile of the gateway's thread taken over the measured window only.
// Prints req/s, CPU per request (the whole process: V8's collector threads included), store
// transactions per request, and the profile's self and inclusive time by function, as µs
// per request. BENCH_PROFILE_OUT=<file.cpuprofile> keeps the raw profile for a viewer.
//
// Run: node --import tsx bench/http-profile.ts   (BENCH_SECONDS=5 BENCH_WARMUP=3
// BENCH_CONNECTIONS=16 BENCH_TOP=40; needs wrk: apt-get install -y wrk). BENCH_HEAP=1 samples
// allocations instead of CPU: bytes allocated per request by function (what the collector's
// share of the profile comes from); with BENCH_HEAP_SURVIVORS=1 only what outlived a young-
// generation collection (what each scavenge copies, and may promote to the old generation).
import { execFile, execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { promisify } from 'node:util';
import pino from 'pino';
import { startHttpFrontend } from '../src/server/frontends.js';
import { heapProfiled, printHeapProfile, printProfile, profiled } from './cpu-profile.js';
import { openReferenceHome, startUpstream } from './reference-case.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const TOP = Number(process.env.BENCH_TOP ?? 40);
const run = promisify(execFile);

async function wrk(url: string, headers: Record<string, string>, seconds: number): Promise<number> {
  const args = ['-t1', `-c${CONNECTIONS}`, `-d${seconds}s`];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  const { stdout } = await run('wrk', [...args, url]);
  const match = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (match === null) throw new Error(`wrk printed no rate:\n${stdout}`);
  return Number(match[1]);
}

async function main() {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT')
      throw new Error('wrk is needed: apt-get install -y wrk');
  }
  const upstream = await startUpstream();
  const reference = await openReferenceHome(upstream.port, 'coatcheck-bench-profile-');
  const { ctx, headers } = reference;
  const gateway = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'warn' }));
  try {
    const url = `${gateway.url}${reference.path}`;

    // Count store transactions (each is a BEGIN IMMEDIATE and a COMMIT on SQLite).
    let transactions = 0;
    const transaction = ctx.store.transaction.bind(ctx.store);
    ctx.store.transaction = ((fn, options) => {
      transactions += 1;
      return transaction(fn, options);
    }) as typeof ctx.store.transaction;

    await wrk(url, headers, WARMUP);
    const before = { tx: transactions, cpu: process.cpuUsage(), audit: ctx.audit.batchesCommitted };
    const heap = process.env.BENCH_HEAP === '1';
    const measured = heap
      ? await heapProfiled(() => wrk(url, headers, SECONDS))
      : await profiled(() => wrk(url, headers, SECONDS));
    const rps = measured.result;
    const cpu = process.cpuUsage(before.cpu);
    const requests = rps * SECONDS;
    console.log(
      `HTTP request profile: one ticket, 4 KB JSON response, SQLite store, wrk -c${CONNECTIONS} ${SECONDS}s after ${WARMUP}s warm-up; load average ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    );
    console.log(
      `${rps.toFixed(0)} req/s; process CPU ${((cpu.user + cpu.system) / requests).toFixed(0)} µs/request; store transactions ${((transactions - before.tx) / requests).toFixed(3)}/request (audit batches ${((ctx.audit.batchesCommitted - before.audit) / requests).toFixed(3)})`,
    );
    if ('bytesBySite' in measured)
      printHeapProfile(measured.bytesBySite, requests, { unit: 'request', top: TOP });
    else printProfile(measured.profile, requests, { unit: 'request', top: TOP, digits: 1 });
  } finally {
    await gateway.close();
    await reference.close();
    upstream.stop();
  }
}

await main();

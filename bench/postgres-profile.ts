// Where one PostgreSQL statement's time goes: the gateway (SQLite store, audit of every
// statement on, the connection scanning output for secrets, as bench:postgres) under
// pgbench load, after a warm-up, with a CPU profile of the gateway's thread taken over the
// measured window only. Prints TPS, statements per second, CPU per statement (the whole
// process: V8's collector threads included), store transactions per statement, and the
// profile's self and inclusive time by function, as µs per statement. Each window also
// prints the event loop's delay (p99, max) and the store's COMMITs timed on the event loop
// (a commit that starts the WAL over syncs its header there: the tail of c=1).
// BENCH_PROFILE_OUT=<file.cpuprofile> keeps the raw profile for a viewer. BENCH_HEAP=1 samples
// allocations instead (bytes per statement by function; with BENCH_HEAP_SURVIVORS=1 only what
// outlived a young-generation collection).
//
// Run: node --import tsx bench/postgres-profile.ts   (BENCH_MODE=simple|prepared|tpcb
// BENCH_CLIENTS=8 BENCH_SECONDS=5 BENCH_WARMUP=3 BENCH_SCALE=10 BENCH_TOP=40; BENCH_AUDIT=0
// audits only refused statements; BENCH_ROUNDS=N measures N windows without the profiler
// first, BENCH_PROFILE=0 skips the profiled one: to compare two trees back to back by CPU per
// statement). Needs pgbench (the PostgreSQL client tools).
import { execFile } from 'node:child_process';
import { Socket } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { pgBin, startPgGateway, startThrowawayPostgres } from '../test/integration/postgres/harness.js';
import { heapProfiled, printHeapProfile, printProfile, profiled } from './cpu-profile.js';

const MODE = process.env.BENCH_MODE ?? 'simple';
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 3);
const SCALE = Number(process.env.BENCH_SCALE ?? 10);
const TOP = Number(process.env.BENCH_TOP ?? 40);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 0);
const run = promisify(execFile);

/** pgbench arguments and statements per transaction for each mode. */
const MODES: Record<string, { args: string[]; statements: number }> = {
  simple: { args: ['-S', '-M', 'simple'], statements: 1 },
  prepared: { args: ['-S', '-M', 'prepared'], statements: 1 },
  // BEGIN, three UPDATEs, a SELECT, an INSERT, END.
  tpcb: { args: ['-M', 'simple'], statements: 7 },
};

async function pgbench(port: number, user: string, password: string, db: string, seconds: number) {
  const mode = MODES[MODE];
  if (mode === undefined) throw new Error(`BENCH_MODE is one of ${Object.keys(MODES).join(', ')}`);
  const { stdout } = await run(
    pgBin('pgbench'),
    [
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-U',
      user,
      '-c',
      String(CLIENTS),
      '-j',
      String(Math.max(1, Math.min(CLIENTS, cpus().length))),
      '-T',
      String(seconds),
      '-n',
      ...mode.args,
      db,
    ],
    { env: { ...process.env, PGPASSWORD: password, PGSSLMODE: 'disable' } },
  );
  const tps = Number(/tps = ([0-9.]+)/.exec(stdout)?.[1]);
  if (!Number.isFinite(tps) || tps <= 0) throw new Error(`pgbench gave no TPS:\n${stdout}`);
  return { tps, statements: mode.statements };
}

async function main(): Promise<void> {
  const db = await startThrowawayPostgres({ fsync: true });
  const gw = await startPgGateway({ auditStatements: process.env.BENCH_AUDIT !== '0' });
  try {
    await run(
      pgBin('pgbench'),
      ['-i', '-q', '-s', String(SCALE), '-h', db.host, '-p', String(db.port), '-U', 'postgres', 'postgres'],
      { env: { ...process.env, PGPASSWORD: db.password } },
    );
    const agent = await gw.createAgent('bench');
    await gw.addSecret('dbpw', db.password, ['conn:bench']);
    await gw.addSecret('canary', 'sk_live_bench_canary_0123456789', ['conn:bench']);
    await gw.addConnection('bench', db.url, { credential: 'dbpw' });
    const ticket = await gw.issue('dbpw', agent.ref, ['conn:bench']);

    let transactions = 0;
    const store = gw.ctx.store;
    const transaction = store.transaction.bind(store);
    store.transaction = ((fn, options) => {
      transactions += 1;
      return transaction(fn, options);
    }) as typeof store.transaction;

    // Count the gateway's socket writes (each is a send(2) on a TCP socket).
    let writes = 0;
    const proto = Socket.prototype as unknown as Record<string, (...args: unknown[]) => unknown>;
    for (const method of ['_write', '_writev']) {
      const original = proto[method]!;
      proto[method] = function (this: Socket, ...args: unknown[]) {
        writes += 1;
        return original.apply(this, args);
      };
    }

    // Time the store's COMMITs, on the event loop: a commit that starts the WAL over syncs
    // its header there (docs/frontends/postgres.md, Performance).
    const commits: number[] = [];
    const database = Database.prototype as unknown as { exec(sql: string): unknown };
    const exec = database.exec;
    database.exec = function (this: unknown, sql: string) {
      if (sql !== 'COMMIT') return exec.call(this, sql);
      const started = performance.now();
      try {
        return exec.call(this, sql);
      } finally {
        commits.push(performance.now() - started);
      }
    };

    await pgbench(gw.port, 'bench', ticket, 'bench', WARMUP);
    console.log(
      `PostgreSQL statement profile: pgbench ${MODES[MODE]!.args.join(' ')} -c${CLIENTS} ${SECONDS}s after ${WARMUP}s warm-up, scale ${SCALE}, audit ${process.env.BENCH_AUDIT === '0' ? 'refusals only' : 'every statement'}`,
    );
    // Windows without the profiler first (BENCH_ROUNDS, default 0): CPU per statement alone,
    // to compare two trees; then the profiled window.
    const window = async () => {
      const before = {
        writes,
        tx: transactions,
        cpu: process.cpuUsage(),
        audit: gw.ctx.audit.batchesCommitted,
      };
      commits.length = 0;
      const delay = monitorEventLoopDelay({ resolution: 1 });
      delay.enable();
      const { tps, statements: perTx } = await pgbench(gw.port, 'bench', ticket, 'bench', SECONDS);
      delay.disable();
      const cpu = process.cpuUsage(before.cpu);
      const statements = tps * SECONDS * perTx;
      console.log(
        `${tps.toFixed(0)} TPS, ${(tps * perTx).toFixed(0)} statements/s; process CPU ${((cpu.user + cpu.system) / statements).toFixed(1)} µs/statement (user ${(cpu.user / statements).toFixed(1)}, system ${(cpu.system / statements).toFixed(1)}); socket writes ${((writes - before.writes) / statements).toFixed(2)}/statement; store transactions ${((transactions - before.tx) / statements).toFixed(4)}/statement (audit batches ${((gw.ctx.audit.batchesCommitted - before.audit) / statements).toFixed(4)}); load average ${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}`,
      );
      const sorted = [...commits].sort((a, b) => a - b);
      console.log(
        `event-loop delay (1 ms timer) p99 ${(delay.percentile(99) / 1e6).toFixed(2)} ms, max ${(delay.max / 1e6).toFixed(2)} ms; store COMMITs ${sorted.length}: p50 ${(sorted[sorted.length >> 1] ?? 0).toFixed(3)} ms, max ${(sorted.at(-1) ?? 0).toFixed(2)} ms, ${sorted.filter((t) => t > 1).length} over 1 ms`,
      );
      return statements;
    };
    for (let i = 0; i < ROUNDS; i++) await window();
    if (process.env.BENCH_PROFILE === '0') return;
    if (process.env.BENCH_HEAP === '1') {
      const { result: statements, bytesBySite } = await heapProfiled(window);
      printHeapProfile(bytesBySite, statements, { unit: 'statement', top: TOP });
      return;
    }
    const { result: statements, profile } = await profiled(window);
    printProfile(profile, statements, { unit: 'statement', top: TOP, digits: 2 });
  } finally {
    await gw.close();
    db.stop();
  }
}

await main();

// PostgreSQL front-end overhead: pgbench TPS and average latency directly to a throwaway
// PostgreSQL, through PgBouncer (session pooling, Debian's package) and through
// coatcheck, for three mixes (-S simple, -S prepared, TPC-B), with the ratio to direct;
// then MB/s for a 1,000,000-row result directly and through coatcheck with masking off,
// one column masked, and every text value scanned for known secrets.
//
// Run: npm run bench:postgres   (BENCH_SECONDS=10 BENCH_CLIENTS=8 BENCH_SCALE=10 by default;
//      BENCH_AUDIT=0 audits only refused statements, to show what per-statement audit costs)
// Needs pgbench and pgbouncer (apt-get install -y pgbouncer); not run in CI.
//
// The gateway runs in this process (one Node thread), audit of every statement on
// (group commit), SQLite store in a temp dir. pgbench, PgBouncer and PostgreSQL run
// as their own processes on the same machine: the ratio is the point, not the numbers.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decodeBackend } from '../src/frontends/postgres/protocol/decode.js';
import { encodeFrontend } from '../src/frontends/postgres/protocol/encode.js';
import { connectUpstream } from '../src/frontends/postgres/upstream/connect.js';
import {
  freePort,
  pgBin,
  startPgGateway,
  startThrowawayPostgres,
} from '../test/integration/postgres/harness.js';
import { RawClient } from '../test/integration/postgres/raw-client.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const SCALE = Number(process.env.BENCH_SCALE ?? 10);
const run = promisify(execFile);
const asRoot = process.getuid?.() === 0;

interface PgbenchResult {
  tps: number;
  latencyMs: number;
}

async function pgbench(
  target: { host: string; port: number; user: string; password: string; db: string },
  args: string[],
): Promise<PgbenchResult> {
  const { stdout } = await run(
    pgBin('pgbench'),
    [
      '-h',
      target.host,
      '-p',
      String(target.port),
      '-U',
      target.user,
      '-c',
      String(CLIENTS),
      '-j',
      String(Math.max(1, Math.min(CLIENTS, cpus().length))),
      '-T',
      String(SECONDS),
      '-n',
      ...args,
      target.db,
    ],
    {
      env: { ...process.env, PGPASSWORD: target.password, PGSSLMODE: 'disable' },
      maxBuffer: 16 * 1024 * 1024,
    },
  );
  const tps = Number(/tps = ([0-9.]+)/.exec(stdout)?.[1]);
  const latencyMs = Number(/latency average = ([0-9.]+) ms/.exec(stdout)?.[1]);
  return { tps, latencyMs };
}

function startPgBouncer(pgPort: number, password: string): Promise<{ port: number; stop: () => void }> {
  return (async () => {
    const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bouncer-'));
    const port = await freePort();
    writeFileSync(join(dir, 'users.txt'), `"postgres" "${password}"\n`);
    writeFileSync(
      join(dir, 'pgbouncer.ini'),
      [
        '[databases]',
        `bench = host=127.0.0.1 port=${pgPort} dbname=postgres`,
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${port}`,
        'unix_socket_dir =',
        'auth_type = scram-sha-256',
        `auth_file = ${join(dir, 'users.txt')}`,
        'pool_mode = session',
        `max_client_conn = ${CLIENTS * 4}`,
        `default_pool_size = ${CLIENTS * 2}`,
        `logfile = ${join(dir, 'pgbouncer.log')}`,
        '',
      ].join('\n'),
    );
    if (asRoot) execFileSync('chown', ['-R', 'postgres:postgres', dir]);
    const child = asRoot
      ? spawn('runuser', ['-u', 'postgres', '--', 'pgbouncer', join(dir, 'pgbouncer.ini')], {
          stdio: 'ignore',
        })
      : spawn('pgbouncer', [join(dir, 'pgbouncer.ini')], { stdio: 'ignore' });
    for (let i = 0; i < 50; i++) {
      try {
        execFileSync(pgBin('pg_isready'), ['-h', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    return {
      port,
      stop() {
        child.kill('SIGTERM');
        rmSync(dir, { recursive: true, force: true });
      },
    };
  })();
}

const LARGE = "SELECT g, md5(g::text) AS h, 'some text ' || g AS note FROM generate_series(1, 1000000) g";

/** Stream the large query over an already logged-in socket; returns MB/s of protocol bytes. */
async function streamLarge(
  socket: import('node:net').Socket,
  framer: import('../src/frontends/postgres/protocol/framer.js').MessageFramer,
): Promise<number> {
  const started = process.hrtime.bigint();
  let bytes = 0;
  let rows = 0;
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      bytes += chunk.length;
      framer.push(chunk);
      for (let f = framer.next(); f !== null; f = framer.next()) {
        if (f.code === 0x44) rows++;
        else if (f.code === 0x45) reject(new Error(JSON.stringify(decodeBackend(f))));
        else if (f.code === 0x5a) {
          socket.off('data', onData);
          resolve();
        }
      }
    };
    socket.on('data', onData);
    socket.write(encodeFrontend({ type: 'Query', sql: LARGE }));
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (rows !== 1_000_000) throw new Error(`expected 1000000 rows, got ${rows}`);
  return bytes / 1024 / 1024 / seconds;
}

async function main(): Promise<void> {
  const db = await startThrowawayPostgres();
  const gw = await startPgGateway({ auditStatements: process.env.BENCH_AUDIT !== '0' });
  const bouncer = await startPgBouncer(db.port, db.password);
  try {
    await run(
      pgBin('pgbench'),
      ['-i', '-q', '-s', String(SCALE), '-h', db.host, '-p', String(db.port), '-U', 'postgres', 'postgres'],
      {
        env: { ...process.env, PGPASSWORD: db.password },
      },
    );
    const agent = await gw.createAgent('bench');
    await gw.addSecret('dbpw', db.password, ['conn:bench', 'conn:plain', 'conn:masked']);
    await gw.addSecret('canary', 'sk_live_bench_canary_0123456789', ['conn:bench']);
    await gw.addConnection('bench', db.url, { credential: 'dbpw' });
    await gw.addConnection('plain', db.url, { credential: 'dbpw', rules: { scanSecrets: false } });
    await gw.addConnection('masked', db.url, {
      credential: 'dbpw',
      rules: { scanSecrets: false, maskColumns: ['note'] },
    });
    const ticket = await gw.issue('dbpw', agent.ref, ['conn:bench', 'conn:plain', 'conn:masked']);
    const targets = {
      direct: { host: db.host, port: db.port, user: 'postgres', password: db.password, db: 'postgres' },
      pgbouncer: {
        host: '127.0.0.1',
        port: bouncer.port,
        user: 'postgres',
        password: db.password,
        db: 'bench',
      },
      coatcheck: { host: '127.0.0.1', port: gw.port, user: 'bench', password: ticket, db: 'bench' },
    };
    // BENCH_ONLY=TPC-B (a substring of a mix's name) runs that mix alone, for profiling;
    // BENCH_ONLY=large runs only the 1,000,000-row result.
    const only = process.env.BENCH_ONLY;
    const mixes = (
      [
        ['-S simple', ['-S', '-M', 'simple']],
        ['-S prepared', ['-S', '-M', 'prepared']],
        ['TPC-B', ['-M', 'simple']],
      ] as Array<[string, string[]]>
    ).filter(([name]) => only === undefined || name.includes(only));
    console.log(
      `pgbench: ${CLIENTS} clients, ${SECONDS}s per run, scale ${SCALE}, ${cpus().length} CPUs, PostgreSQL ${execFileSync(pgBin('postgres'), ['--version']).toString().trim()}`,
    );
    console.log('mix           target      TPS        avg latency   ratio to direct');
    for (const [name, args] of mixes) {
      const direct = await pgbench(targets.direct, args);
      for (const [label, target] of Object.entries(targets)) {
        // The gateway runs in this process: its CPU time per transaction is the steadier
        // measure on a shared machine (TPS drifts with what else runs).
        const cpu = process.cpuUsage();
        const r = label === 'direct' ? direct : await pgbench(target, args);
        const used = process.cpuUsage(cpu);
        const perTx =
          label === 'coatcheck'
            ? `   gateway CPU ${((used.user + used.system) / (r.tps * SECONDS)).toFixed(1)} µs/tx`
            : '';
        console.log(
          `${name.padEnd(13)} ${label.padEnd(11)} ${r.tps.toFixed(0).padStart(8)}   ${r.latencyMs.toFixed(3).padStart(8)} ms   ${(r.tps / direct.tps).toFixed(2)}${perTx}`,
        );
      }
    }

    if (only !== undefined && only !== 'large') return;
    console.log('\n1,000,000-row result (3 columns, ~60 MB of DataRow), MB/s of protocol bytes received');
    const upstream = await connectUpstream(
      { host: db.host, port: db.port, user: 'postgres', database: 'postgres', sslMode: 'disable' },
      Buffer.from(db.password),
      { timeoutMs: 10_000, parameters: [] },
    );
    const direct = await streamLarge(upstream.socket, upstream.framer);
    upstream.socket.destroy();
    console.log(`direct                          ${direct.toFixed(1).padStart(7)} MB/s   1.00`);
    for (const [label, connection] of [
      ['coatcheck, masking off', 'plain'],
      ['coatcheck, one column masked', 'masked'],
      ['coatcheck, all text scanned', 'bench'],
    ] as const) {
      const c = await RawClient.open(gw.port);
      await c.login('bench', ticket, connection);
      c.socket.removeAllListeners('data');
      const mbs = await streamLarge(c.socket, c.framer);
      c.close();
      console.log(`${label.padEnd(31)} ${mbs.toFixed(1).padStart(7)} MB/s   ${(mbs / direct).toFixed(2)}`);
    }
  } finally {
    bouncer.stop();
    await gw.close();
    db.stop();
  }
}

await main();

// Replicas on one PostgreSQL store: ticket exchanges per second (HTTP reverse proxy, one
// header ticket, every exchange audited) with 1, 2 and 3 replicas, and with a third replica
// whose link to PostgreSQL answers 30 ms late — does one slow replica slow the fast ones?
//
// Run: npm run bench:replicas   (BENCH_SECONDS=8 BENCH_CONNECTIONS=8 per replica; BENCH_DELAY_MS=30)
// Needs the PostgreSQL binaries (a throwaway server is started; no fixed port is used).
//
// Each replica is its own process (bench/replica-server.ts) with its own copy of one home;
// the load generator (autocannon) runs one process per replica, all at once. On a 2-CPU
// machine the replicas compete for the same cores, so the total says little: the point is
// the fast replicas' rate beside the slowed one, against the same replicas without it.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { initHome, openContext } from '../src/server/context.js';
import { startTcpProxy } from '../test/helpers/tcp-proxy.js';
import { startThrowawayPostgres } from '../test/integration/postgres/harness.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 8);
const DELAY_MS = Number(process.env.BENCH_DELAY_MS ?? 30);
const run = promisify(execFile);
const autocannonBin = createRequire(import.meta.url).resolve('autocannon/autocannon.js');

function spawnPrintingPort(script: string, args: string[], env: NodeJS.ProcessEnv) {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', new URL(script, import.meta.url).pathname, ...args],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    },
  );
  const port = new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
  });
  return { child, port };
}

async function load(url: string, headers: Record<string, string>): Promise<{ rps: number; errors: number }> {
  const args = [autocannonBin, '-j', '-c', String(CONNECTIONS), '-d', String(SECONDS)];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}=${v}`);
  args.push(url);
  const { stdout } = await run(process.execPath, args, { maxBuffer: 16 * 1024 * 1024 });
  const r = JSON.parse(stdout) as {
    requests: { average: number };
    errors: number;
    non2xx: number;
    timeouts: number;
  };
  return { rps: r.requests.average, errors: r.errors + r.non2xx + r.timeouts };
}

async function main(): Promise<void> {
  const db = await startThrowawayPostgres();
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-replicas-'));
  const upstream = spawnPrintingPort('./http-upstream.ts', [], {});
  const proxy = await startTcpProxy(db.host, db.port);
  const children: Array<ReturnType<typeof spawn>> = [upstream.child];
  try {
    // The store's URL carries the throwaway server's password (db.url does not).
    const storeUrl = new URL(db.url);
    storeUrl.password = db.password;
    const env = {
      COATCHECK_DATABASE_URL: storeUrl.toString(),
      COATCHECK_MASTER_KEY: randomBytes(32).toString('base64'),
    };
    const first = join(dir, 'a');
    const home = resolveHome(first, env);
    await initHome(home, { env });
    writeFileSync(home.configFile, 'log:\n  level: warn\n', { mode: 0o600 });
    const ctx = await openContext(home, { env });
    const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
    await ctx.vault.addSecret(
      { name: 'token', value: Buffer.from('bench-replica-secret-0123456789abcdef'), allow: ['up'] },
      'admin:bench',
    );
    await ctx.connections.add(
      { name: 'up', type: 'http', url: `http://127.0.0.1:${await upstream.port}` },
      'admin:bench',
    );
    const ticket = (
      await ctx.vault.issueTicket({ secret: 'token', principal: agentRef(agent.id) }, 'admin:bench')
    ).ticket;
    await ctx.close();
    const headers = { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` };

    // Replicas: a, b, c on the database directly; s through the proxy that answers late.
    const ports = new Map<string, number>();
    for (const name of ['b', 'c', 's']) execFileSync('cp', ['-a', first, join(dir, name)]);
    for (const name of ['a', 'b', 'c', 's']) {
      const url = name === 's' ? proxy.via(env.COATCHECK_DATABASE_URL) : env.COATCHECK_DATABASE_URL;
      const r = spawnPrintingPort('./replica-server.ts', [join(dir, name)], {
        ...env,
        COATCHECK_DATABASE_URL: url,
      });
      children.push(r.child);
      ports.set(name, await r.port);
    }
    proxy.delay('pool', DELAY_MS);
    proxy.delay('listen', DELAY_MS);

    console.log(
      `replicas on one throwaway PostgreSQL, ${cpus().length} CPUs: ${CONNECTIONS} connections per replica, ${SECONDS}s per run, one header ticket per request, every exchange audited`,
    );
    console.log(`${'run'.padEnd(34)} ${'req/s per replica'.padEnd(40)} total   errors`);
    const runs: Array<[string, string[]]> = [
      ['1 replica', ['a']],
      ['2 replicas', ['a', 'b']],
      ['3 replicas', ['a', 'b', 'c']],
      [`2 replicas + 1 slowed by ${DELAY_MS} ms`, ['a', 'b', 's']],
    ];
    const fastRate = new Map<string, number>();
    for (const [label, names] of runs) {
      const results = await Promise.all(
        names.map((n) => load(`http://127.0.0.1:${ports.get(n)}/c/up/small`, headers)),
      );
      const per = names.map((n, i) => `${n}=${results[i]!.rps.toFixed(0)}`).join(' ');
      const total = results.reduce((sum, r) => sum + r.rps, 0);
      const errors = results.reduce((sum, r) => sum + r.errors, 0);
      console.log(`${label.padEnd(34)} ${per.padEnd(40)} ${total.toFixed(0).padStart(5)}   ${errors}`);
      // The first two replicas (a, b) are the fast ones in every run that has two.
      const first = results[0]!.rps;
      const second = results[1]?.rps;
      fastRate.set(label, second === undefined ? first : (first + second) / 2);
    }
    const without = fastRate.get('3 replicas')!;
    const withSlow = fastRate.get(`2 replicas + 1 slowed by ${DELAY_MS} ms`)!;
    console.log(
      `\nfast replicas (a, b) beside a slowed third: ${withSlow.toFixed(0)} req/s each against ${without.toFixed(0)} beside a fast third (${(withSlow / without).toFixed(2)}; goal: 1.00)`,
    );
  } finally {
    // Replicas flush their audit batches on SIGTERM: let them finish before the database stops.
    await Promise.all(
      children.map(
        (child) =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null) return resolve();
            const timer = setTimeout(resolve, 5000);
            child.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            child.kill('SIGTERM');
          }),
      ),
    );
    await proxy.close();
    db.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

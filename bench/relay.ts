/**
 * Throughput through a relay vs the gateway dialling the target itself, measured side by
 * side in one run (docs/relay.md; the goal is ≥ 0.8 of the direct path).
 *
 *   npm run bench:relay
 *
 * One gateway (this process: HTTP and PostgreSQL front-ends, the relay listener), one
 * `coatcheck relay run` process, a target HTTP server (a child process) and a throwaway
 * PostgreSQL, all on this machine. Two connections to each target: one direct, one
 * `--via` the relay. Rounds alternate the two paths; the median of each is reported, with
 * the ratio relay / direct. Numbers depend on the machine and its load: compare ratios.
 * `RELAY_NODE_ARGS='--cpu-prof --cpu-prof-dir=DIR'` passes node flags to the relay process
 * (to profile it; run this script under `node --cpu-prof` for the gateway's side).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { request } from 'undici';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { startPostgresFrontend } from '../src/frontends/postgres/start.js';
import { startRelayListener } from '../src/relay/listener.js';
import { initHome, openContext } from '../src/server/context.js';
import { startHttpFrontend } from '../src/server/frontends.js';
import { openProxyCa } from '../src/vault/proxy-ca.js';
import { CLI_ENTRY } from '../test/helpers/cli.js';
import { freePort, startThrowawayPostgres } from '../test/integration/postgres/harness.js';
import { TARGET_HTTP } from '../test/integration/relay/world.js';

const HTTP_BYTES = 64 * 1024 * 1024;
const HTTP_PARALLEL = Number(process.env.HTTP_PARALLEL ?? 4);
const PG_ROWS = 50_000;
const ROUNDS = Number(process.env.ROUNDS ?? 5);
/** `http` or `pg`: measure only that path (to profile one). */
const ONLY = process.env.BENCH_ONLY;
const doHttp = ONLY === undefined || ONLY === 'http';
const doPg = ONLY === undefined || ONLY === 'pg';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-relay-'));
  const db = await startThrowawayPostgres();
  const webPort = await freePort();
  const web = spawn(process.execPath, ['-e', TARGET_HTTP, '127.0.0.1', String(webPort)], {
    env: { PATH: process.env.PATH, EXPECTED: 'unused' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise((resolve) => web.stdout!.once('data', resolve));
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, 'log:\n  level: warn\n', { mode: 0o600 });
  const ctx = await openContext(home, { env: {} });
  const log = pino({ level: 'warn' });
  const http = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, log);
  const pgfe = await startPostgresFrontend(ctx, { host: '127.0.0.1', port: 0 }, log);
  const listener = await startRelayListener({
    address: { host: '127.0.0.1', port: 0 },
    ca: await openProxyCa(ctx.store, ctx.keys.masters),
    serverNames: [],
    relays: ctx.relays,
    hub: ctx.relayHub,
    audit: ctx.audit,
    log,
  });
  const agent = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
  const { key: relayKey } = await ctx.relays.create('bench-relay', 'admin:bench');
  writeFileSync(join(dir, 'relay.key'), relayKey, { mode: 0o600 });
  writeFileSync(join(dir, 'ca.pem'), listener.ca.cert);
  const relay = spawn(
    process.execPath,
    [
      ...(process.env.RELAY_NODE_ARGS ? process.env.RELAY_NODE_ARGS.split(' ') : []),
      '--import',
      'tsx',
      CLI_ENTRY,
      'relay',
      'run',
      '--gateway',
      `https://127.0.0.1:${listener.port}`,
      '--key-file',
      join(dir, 'relay.key'),
      '--ca',
      join(dir, 'ca.pem'),
      '--log-level',
      'warn',
    ],
    { env: { PATH: process.env.PATH }, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  try {
    for (let i = 0; i < 400 && ctx.relayHub.sessions('bench-relay') === 0; i++)
      await new Promise((r) => setTimeout(r, 50));
    if (ctx.relayHub.sessions('bench-relay') === 0) throw new Error('the relay did not connect');
    await ctx.vault.addSecret(
      { name: 'dbpw', value: Buffer.from(db.password), allow: ['conn:pg-direct', 'conn:pg-relay'] },
      'admin:bench',
    );
    for (const [name, via] of [
      ['direct', undefined],
      ['relay', 'bench-relay'],
    ] as const) {
      await ctx.connections.add(
        { name: `web-${name}`, type: 'http', url: `http://127.0.0.1:${webPort}`, ...(via ? { via } : {}) },
        'admin:bench',
      );
      await ctx.connections.add(
        { name: `pg-${name}`, type: 'postgres', url: db.url, credential: 'dbpw', ...(via ? { via } : {}) },
        'admin:bench',
      );
    }
    const ticket = (
      await ctx.vault.issueTicket(
        {
          secret: 'dbpw',
          principal: agentRef(agent.agent.id),
          destinations: ['conn:pg-direct', 'conn:pg-relay'],
        },
        'admin:bench',
      )
    ).ticket;

    const download = async (connection: string): Promise<number> => {
      const started = process.hrtime.bigint();
      await Promise.all(
        Array.from({ length: HTTP_PARALLEL }, async () => {
          const res = await request(`${http.url}/c/${connection}/big?bytes=${HTTP_BYTES / HTTP_PARALLEL}`, {
            headers: { 'proxy-authorization': `Bearer ${agent.key}` },
          });
          let n = 0;
          for await (const chunk of res.body) n += (chunk as Buffer).length;
          if (n !== HTTP_BYTES / HTTP_PARALLEL) throw new Error(`short body: ${n}`);
        }),
      );
      return HTTP_BYTES / 1e6 / (Number(process.hrtime.bigint() - started) / 1e9);
    };
    const select = async (connection: string): Promise<number> => {
      const client = new pg.Client({
        host: '127.0.0.1',
        port: pgfe.port,
        user: 'bench',
        password: ticket,
        database: connection,
      });
      await client.connect();
      const started = process.hrtime.bigint();
      const result = await client.query(
        `SELECT g, repeat('abcdefgh', 64) AS payload FROM generate_series(1, ${PG_ROWS}) g`,
      );
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      await client.end();
      if (result.rows.length !== PG_ROWS) throw new Error('short result');
      return (PG_ROWS * 520) / 1e6 / seconds;
    };

    // Warm both paths (TLS, pools, caches), then alternate.
    if (doHttp) {
      await download('web-direct');
      await download('web-relay');
    }
    if (doPg) {
      await select('pg-direct');
      await select('pg-relay');
    }
    const runs: Record<string, number[]> = { httpDirect: [], httpRelay: [], pgDirect: [], pgRelay: [] };
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? ['direct', 'relay'] : ['relay', 'direct'];
      for (const path of order) {
        if (doHttp) runs[path === 'direct' ? 'httpDirect' : 'httpRelay']!.push(await download(`web-${path}`));
        if (doPg) runs[path === 'direct' ? 'pgDirect' : 'pgRelay']!.push(await select(`pg-${path}`));
      }
    }
    const row = (label: string, direct: number[], relayed: number[]) =>
      console.log(
        `${label.padEnd(44)} ${median(direct).toFixed(1).padStart(8)} ${median(relayed).toFixed(1).padStart(8)}   ${(median(relayed) / median(direct)).toFixed(2)}`,
      );
    console.log(`relay bench: ${ROUNDS} alternating rounds, medians (MB/s)`);
    console.log(`${'path'.padEnd(44)} ${'direct'.padStart(8)} ${'relay'.padStart(8)}   relay/direct`);
    if (doHttp)
      row(
        `HTTP download, ${HTTP_PARALLEL} streams x ${HTTP_BYTES / HTTP_PARALLEL / 1048576} MiB`,
        runs.httpDirect!,
        runs.httpRelay!,
      );
    if (doPg) row(`PostgreSQL SELECT, ${PG_ROWS} rows x ~520 B`, runs.pgDirect!, runs.pgRelay!);
  } finally {
    relay.kill('SIGTERM');
    web.kill('SIGTERM');
    await listener.close();
    await pgfe.close();
    await http.close();
    await ctx.close();
    db.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

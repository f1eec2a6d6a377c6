// Added cost of full session recording over metadata-only, on the HTTP reverse proxy and
// the PostgreSQL front-end, side by side in one run.
//
// Run: npm run bench:recording   (BENCH_ROUNDS=6 rounds of BENCH_REQUESTS=300 per case;
// BENCH_ONLY=http or BENCH_ONLY='http full' runs the cases whose names start so, e.g. under
// node --cpu-prof to profile one path)
//
// One gateway process with two connections per protocol to the same upstream, one
// recorded as metadata and one in full; the rounds alternate the two so machine noise
// falls on both. HTTP: POST of a 2 KB JSON body, 4 KB JSON answer, 8 requests in flight.
// PostgreSQL: a 20-row SELECT over 4 connections (pg clients) through the gateway to the
// PostgreSQL at 127.0.0.1:5432 (trust auth; PGHOST/PGPORT/PGUSER override). Printed:
// requests per second, p50 latency and CPU per request (this process: clients, upstream and
// gateway, the writer's work included) per case, and full/metadata ratios (goal: within 10%).
// On a loaded machine trust the CPU ratio over the wall-clock ones.
// The recordings are written off the request path; the writer's queue is drained between
// rounds and its time is reported apart (it is not on any request's path).
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { Agent, request } from 'undici';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { postgresFrontend } from '../src/frontends/postgres/start.js';
import { GatewayDriver } from '../src/gateway/driver.js';
import { initHome, openContext } from '../src/server/context.js';
import { httpGateway } from '../src/server/frontends.js';
import { sessionRecordings } from '../src/server/recordings.js';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 6);
const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 300);
const PG_HOST = process.env.PGHOST ?? '127.0.0.1';
const PG_PORT = Number(process.env.PGPORT ?? 5432);
const PG_USER = process.env.PGUSER ?? 'postgres';

function p50(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

async function loop(count: number, concurrency: number, one: () => Promise<void>) {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) {
        next++;
        const t = performance.now();
        await one();
        latencies.push(performance.now() - t);
      }
    }),
  );
  return { seconds: (performance.now() - started) / 1000, latencies };
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-rec-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
  const ctx = await openContext(home, { env: {} });
  const answer = JSON.stringify({
    items: Array.from({ length: 40 }, (_, i) => ({ id: i, name: `item-${i}`, note: 'x'.repeat(60) })),
  });
  const upstream = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end(answer);
    });
  });
  upstream.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  const upUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;

  const driver = new GatewayDriver({
    registry: ctx.metrics,
    log: pino({ level: 'silent' }),
    store: ctx.store,
    clock: ctx.clock,
    recordings: sessionRecordings(ctx),
  });
  const http = await driver.start(httpGateway(ctx, { host: '127.0.0.1', port: 0 }));
  const pgfe = await driver.start(postgresFrontend(ctx, { host: '127.0.0.1', port: 0 }));
  const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
  await ctx.vault.addSecret(
    { name: 'api', value: Buffer.from('bench-api-secret-0123456789'), allow: ['h-meta', 'h-full'] },
    'admin:bench',
  );
  await ctx.vault.addSecret(
    { name: 'dbpw', value: Buffer.from('bench-db-password-unused'), allow: ['conn:p-meta', 'conn:p-full'] },
    'admin:bench',
  );
  for (const mode of ['metadata', 'full'] as const) {
    await ctx.connections.add(
      {
        name: `h-${mode === 'full' ? 'full' : 'meta'}`,
        type: 'http',
        url: upUrl,
        rules: { recording: mode },
      },
      'admin:bench',
    );
    await ctx.connections.add(
      {
        name: `p-${mode === 'full' ? 'full' : 'meta'}`,
        type: 'postgres',
        url: `postgres://${PG_USER}@${PG_HOST}:${PG_PORT}/postgres`,
        credential: 'dbpw',
        rules: { recording: mode },
      },
      'admin:bench',
    );
  }
  const ticket = (
    await ctx.vault.issueTicket({ secret: 'api', principal: agentRef(agent.id) }, 'admin:bench')
  ).ticket;
  const dbTicket = (
    await ctx.vault.issueTicket({ secret: 'dbpw', principal: agentRef(agent.id) }, 'admin:bench')
  ).ticket;

  const dispatcher = new Agent({ connections: 16, keepAliveTimeout: 60_000 });
  const body = JSON.stringify({ query: 'y'.repeat(2000) });
  const httpCase = (conn: string) => async () => {
    const res = await request(`${http.url}/c/${conn}/items`, {
      method: 'POST',
      dispatcher,
      headers: {
        'proxy-authorization': `Bearer ${key}`,
        authorization: `Bearer ${ticket}`,
        'content-type': 'application/json',
      },
      body,
    });
    await res.body.text();
  };
  const pgClients = async (conn: string) => {
    const clients = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const c = new pg.Client({
          host: '127.0.0.1',
          port: pgfe.port,
          user: 'bench',
          password: dbTicket,
          database: conn,
          ssl: false,
        });
        await c.connect();
        return c;
      }),
    );
    // A pool: each statement on a client of its own (pg clients run one query at a time).
    const free = [...clients];
    const run = async () => {
      const c = free.pop()!;
      await c.query(
        'SELECT g AS id, md5(g::text) AS name, repeat($$x$$, 40) AS note FROM generate_series(1, 20) g',
      );
      free.push(c);
    };
    return { run, close: () => Promise.all(clients.map((c) => c.end())) };
  };
  const pgMeta = await pgClients('p-meta');
  const pgFull = await pgClients('p-full');

  const cases = {
    'http metadata': { run: httpCase('h-meta'), concurrency: 8 },
    'http full': { run: httpCase('h-full'), concurrency: 8 },
    'postgres metadata': { run: pgMeta.run, concurrency: 4 },
    'postgres full': { run: pgFull.run, concurrency: 4 },
  } as const;
  type Name = keyof typeof cases;
  const only = process.env.BENCH_ONLY;
  const names = (Object.keys(cases) as Name[]).filter((n) => only === undefined || n.startsWith(only));
  const results = new Map<
    Name,
    { seconds: number; count: number; latencies: number[]; cpu: number; sys: number }
  >();
  let writerMs = 0;
  // Warm up every case, then alternate.
  for (const name of names) await loop(50, cases[name].concurrency, cases[name].run);
  for (let round = 0; round < ROUNDS; round++) {
    for (const name of names) {
      const c = cases[name];
      const cpu = process.cpuUsage();
      const r = await loop(REQUESTS, c.concurrency, c.run);
      const t = performance.now();
      await driver.recordings!.flush();
      writerMs += performance.now() - t;
      // CPU of this process (gateway, clients, upstream) per request, the writer's included:
      // robust to other load on the machine, which wall-clock numbers are not.
      const used = process.cpuUsage(cpu);
      const acc = results.get(name) ?? { seconds: 0, count: 0, latencies: [], cpu: 0, sys: 0 };
      acc.seconds += r.seconds;
      acc.count += REQUESTS;
      acc.cpu += (used.user + used.system) / 1000;
      acc.sys += used.system / 1000;
      acc.latencies.push(...r.latencies);
      results.set(name, acc);
    }
  }
  await pgMeta.close();
  await pgFull.close();
  // The PostgreSQL sessions end only when the clients close: their recordings are written now.
  await new Promise((r) => setTimeout(r, 200));
  await driver.recordings!.flush();

  const row = (name: Name) => {
    const r = results.get(name)!;
    return {
      rps: r.count / r.seconds,
      p50: p50(r.latencies),
      cpuUs: (r.cpu * 1000) / r.count,
      sysUs: (r.sys * 1000) / r.count,
    };
  };
  console.log(`recording bench: ${ROUNDS} rounds x ${REQUESTS} requests per case, alternating`);
  console.log('case                   req/s     p50 ms   CPU us/req (system)');
  for (const name of names) {
    const r = row(name);
    console.log(
      `${name.padEnd(20)} ${r.rps.toFixed(0).padStart(7)} ${r.p50.toFixed(3).padStart(10)} ${r.cpuUs.toFixed(0).padStart(12)} (${r.sysUs.toFixed(0)})`,
    );
  }
  for (const proto of ['http', 'postgres'] as const) {
    if (!names.includes(`${proto} metadata`) || !names.includes(`${proto} full`)) continue;
    const meta = row(`${proto} metadata`);
    const full = row(`${proto} full`);
    console.log(
      `${proto}: full/metadata throughput ${(full.rps / meta.rps).toFixed(3)}, p50 ${(full.p50 / meta.p50).toFixed(3)}, CPU per request ${(full.cpuUs / meta.cpuUs).toFixed(3)}`,
    );
  }
  const stored = await ctx.store.listRecordings({ limit: 100_000 });
  console.log(
    `recordings written: ${stored.length} (${(stored.reduce((s, r) => s + r.bytes, 0) / 1024).toFixed(0)} KiB sealed); time spent draining the writer between rounds ${writerMs.toFixed(0)} ms`,
  );
  await dispatcher.close();
  await driver.stop();
  upstream.close();
  await ctx.close();
  rmSync(dir, { recursive: true, force: true });
}

await main();

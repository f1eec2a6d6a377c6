// Policy decisions per second: the decision cache hit path and a full Cedar evaluation
// (every request distinct), side by side. Run: npm run bench:policy
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import pino from 'pino';
import { request } from 'undici';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { startPostgresFrontend } from '../src/frontends/postgres/start.js';
import { loadPolicies } from '../src/policy/load-policies.js';
import { PolicyEngine } from '../src/policy/policy-engine.js';
import { initHome, openContext } from '../src/server/context.js';
import { startHttpFrontend } from '../src/server/frontends.js';
import { startThrowawayPostgres } from '../test/integration/postgres/harness.js';

const N = Number(process.env.BENCH_OPS ?? 50_000);
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-policy-'));
const file = join(dir, 'p.cedar');
const rules: string[] = [
  '@id("reads") permit(principal, action == Action::"sql:read", resource);',
  '@id("office") permit(principal in Group::"dba", action == Action::"sql:write", resource) when { context.hour >= 9 && context.hour < 18 };',
  '@id("night") @approval("required") permit(principal in Group::"dba", action == Action::"sql:write", resource) unless { context.hour >= 9 && context.hour < 18 };',
  '@id("no-drop") forbid(principal, action, resource) when { context has statement && context.statement like "*DROP*" };',
];
// A realistic set: plus 50 per-connection HTTP rules.
for (let i = 0; i < 50; i++) {
  rules.push(
    `@id("http-${i}") permit(principal in Group::"team${i}", action in [Action::"http:GET", Action::"http:POST"], resource == Connection::"svc${i}");`,
  );
}
writeFileSync(file, rules.join('\n'));
const engine = new PolicyEngine(loadPolicies(file), { timeZone: 'UTC' });
const principal = { kind: 'agent' as const, name: 'a', groups: ['dba', 'team7'] };

function run(label: string, fn: (i: number) => void): number {
  for (let i = 0; i < 1000; i++) fn(i);
  const started = performance.now();
  for (let i = 0; i < N; i++) fn(i);
  const seconds = (performance.now() - started) / 1000;
  const perSecond = N / seconds;
  console.log(
    `  ${label.padEnd(40)} ${perSecond.toFixed(0).padStart(9)} decisions/s  ${((seconds / N) * 1e6).toFixed(1).padStart(6)} µs each`,
  );
  return perSecond;
}

console.log(
  `coatcheck policy bench: ${rules.length} policies, ${N} decisions per case, node ${process.version}`,
);
const cached = run('repeated request (decision cache)', () =>
  engine.decide({
    principal,
    action: 'sql:write',
    resource: { type: 'Connection', id: 'orders' },
    context: { statement: 'UPDATE t SET x = 1' },
  }),
);
const uncached = run('distinct requests (full Cedar evaluation)', (i) =>
  engine.decide({
    principal,
    action: 'sql:write',
    resource: { type: 'Connection', id: 'orders' },
    context: { statement: `UPDATE t SET x = ${i}` },
  }),
);
console.log(`  cache / full evaluation: ${(cached / uncached).toFixed(1)}x`);
rmSync(dir, { recursive: true, force: true });

// ---- added latency of policy evaluation on the data paths ------------------------------
// The same gateway twice, side by side: the built-in policy (no evaluation) and a policy
// file (a Cedar decision per request or statement, cached when inputs repeat).

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 400);
const quiet = pino({ level: 'silent' });
const percentile = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) * p)]!;

const upstream = createServer((_req, res) => res.end('{"ok":true}'));
await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
const upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
const pathDir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-policy-paths-'));
const policyFile = join(pathDir, 'paths.cedar');
writeFileSync(
  policyFile,
  [
    ...rules,
    '@id("svc-get") permit(principal, action == Action::"http:GET", resource == Connection::"svc");',
    '@id("db-login") permit(principal, action == Action::"sql:session", resource == Connection::"db");',
    '@id("db-read") permit(principal, action == Action::"sql:read", resource == Connection::"db");',
  ].join('\n'),
);

async function gateway(label: string, withPolicy: boolean) {
  const home = resolveHome(join(pathDir, label), {});
  await initHome(home, { env: {} });
  writeFileSync(
    home.configFile,
    `log:\n  level: silent\n${withPolicy ? `policy:\n  path: ${policyFile}\n` : ''}`,
  );
  const ctx = await openContext(home, { env: {} });
  await ctx.connections.add({ name: 'svc', type: 'http', url: upstreamUrl }, 'bench');
  await ctx.vault.addSecret({ name: 'dbpw', value: Buffer.from(db.password), allow: ['db'] }, 'bench');
  await ctx.connections.add({ name: 'db', type: 'postgres', url: db.url, credential: 'dbpw' }, 'bench');
  const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'bench');
  // An agent key opens no PostgreSQL session under the built-in policy: log in with a ticket.
  const { ticket } = await ctx.vault.issueTicket(
    { secret: 'dbpw', principal: agentRef(agent.id), destinations: ['db'] },
    'bench',
  );
  const http = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, quiet);
  const postgres = await startPostgresFrontend(ctx, { host: '127.0.0.1', port: 0 }, quiet).catch(() => null);
  return { ctx, http, postgres, key, ticket };
}

async function timeHttp(url: string, key: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const started = performance.now();
    const res = await request(`${url}/c/svc/items/${i % 20}`, {
      headers: { 'proxy-authorization': `Bearer ${key}` },
    });
    await res.body.text();
    out.push(performance.now() - started);
  }
  return out;
}

async function timePostgres(port: number, ticket: string): Promise<number[] | null> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'bench', password: ticket, database: 'db' });
  try {
    await client.connect();
  } catch (error) {
    console.log(`  (PostgreSQL login failed: ${(error as Error).message})`);
    return null;
  }
  const out: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const started = performance.now();
    await client.query(`SELECT ${i % 20} AS n`);
    out.push(performance.now() - started);
  }
  await client.end();
  return out;
}

// A throwaway PostgreSQL on a free port (the bench touches no fixed port).
const db = await startThrowawayPostgres();
console.log(`\nadded latency of policy evaluation (${ROUNDS} sequential requests each, p50 / p99 ms)`);
const plain = await gateway('builtin', false);
const governed = await gateway('policy', true);
for (const [label, measure] of [
  ['HTTP GET', (g: typeof plain) => timeHttp(g.http.url, g.key)],
  [
    'PostgreSQL SELECT',
    (g: typeof plain) =>
      g.postgres === null ? Promise.resolve(null) : timePostgres(g.postgres.port, g.ticket),
  ],
] as const) {
  await measure(plain); // warm up both (JIT, caches), then measure back to back
  await measure(governed);
  // Alternate the order twice and keep each side's better run: the machine drifts.
  const b1 = await measure(governed);
  const a1 = await measure(plain);
  const a2 = await measure(plain);
  const b2 = await measure(governed);
  const better = (x: number[] | null, y: number[] | null) =>
    x === null || y === null ? null : percentile(x, 0.5) <= percentile(y, 0.5) ? x : y;
  const a = better(a1, a2);
  const b = better(b1, b2);
  if (a === null || b === null) {
    console.log(`  ${label.padEnd(20)} skipped (the PostgreSQL login failed)`);
    continue;
  }
  const line = (xs: number[]) => `${percentile(xs, 0.5).toFixed(2)} / ${percentile(xs, 0.99).toFixed(2)}`;
  console.log(
    `  ${label.padEnd(20)} built-in ${line(a)}   with policy ${line(b)}   added p50 ${((percentile(b, 0.5) - percentile(a, 0.5)) * 1000).toFixed(0)} µs`,
  );
}
for (const g of [plain, governed]) {
  await g.http.close();
  await g.postgres?.close();
  await g.ctx.close();
}
upstream.close();
db.stop();
rmSync(pathDir, { recursive: true, force: true });

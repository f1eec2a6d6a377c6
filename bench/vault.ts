// Ticket resolve (exchange) throughput, cached and uncached, and audit appends per second
// with and without group commit — on the embedded SQLite store and on PostgreSQL, side by
// side in one run. Run: npm run bench:vault   (PostgreSQL at COATCHECK_BENCH_PG_URL or
// postgres://postgres@127.0.0.1:5432/postgres; skipped if unreachable).
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { AuditEvent } from '../src/audit/events.js';
import { resolveHome } from '../src/config/home.js';
import type { Principal } from '../src/core/principal.js';
import { type Context, initHome, openContext } from '../src/server/context.js';

const OPS = Number(process.env.BENCH_OPS ?? 4000);
const CONCURRENCY = 64;

async function timed(label: string, ops: number, fn: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < ops) await fn(next++);
    }),
  );
  const perSecond = ops / ((performance.now() - started) / 1000);
  console.log(`  ${label.padEnd(44)} ${perSecond.toFixed(0).padStart(8)} ops/s`);
  return perSecond;
}

function withConfig(dir: string, extra: string) {
  const home = resolveHome(dir, {});
  return { home, extra };
}

async function scenario(name: string, env: NodeJS.ProcessEnv) {
  console.log(`\n${name}`);
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-'));
  const { home } = withConfig(join(dir, 'home'), '');
  await initHome(home, { env });
  const open = async (config: string) => {
    writeFileSync(home.configFile, config);
    return openContext(home, { env });
  };
  const results: Record<string, number> = {};
  let ctx: Context | null = null;
  try {
    for (const [label, config] of [
      ['exchange, cached (cacheMs 60000)', 'tickets: { cacheMs: 60000 }\n'],
      ['exchange, uncached (cacheMs 0)', 'tickets: { cacheMs: 0 }\n'],
    ] as const) {
      ctx = await open(config);
      await ctx.vault
        .addSecret({ name: `s-${label.length}`, value: randomBytes(32), allow: ['svc'] }, 'bench')
        .catch(() => undefined);
      const agent = await ctx.agents.create({ name: `a${label.length}` }, 'bench');
      const principal: Principal = await ctx.agents.authenticate(agent.key);
      const { ticket } = await ctx.vault.issueTicket(
        { secret: `s-${label.length}`, principal: principal.ref },
        'bench',
      );
      results[label] = await timed(label, OPS, () =>
        ctx!.vault.exchange(ticket, { principal, target: { connection: 'svc' } }),
      );
      await ctx.close();
      ctx = null;
    }
    for (const [label, config] of [
      ['audit append, group commit (next tick)', 'audit: { groupCommitMs: 0, maxBatch: 512 }\n'],
      ['audit append, group commit (2 ms, batch 512)', 'audit: { groupCommitMs: 2, maxBatch: 512 }\n'],
      ['audit append, one commit per record', 'audit: { groupCommitMs: 0, maxBatch: 1 }\n'],
    ] as const) {
      ctx = await open(config);
      const ops = label.includes('one commit') ? Math.min(OPS, 1500) : OPS;
      results[label] = await timed(label, ops, (i) =>
        // Not a production kind: the bench measures the log itself, so it reaches past the typed union.
        ctx!.audit.append({ type: 'bench', actor: 'bench', data: { i } } as unknown as AuditEvent),
      );
      await ctx.close();
      ctx = null;
    }
    const ratio = (a: string, b: string) => (results[a]! / results[b]!).toFixed(1);
    console.log(
      `  cached / uncached exchange:                   ${ratio('exchange, cached (cacheMs 60000)', 'exchange, uncached (cacheMs 0)')}x`,
    );
    console.log(
      `  group commit / per-record commit:             ${ratio('audit append, group commit (next tick)', 'audit append, one commit per record')}x (next tick), ${ratio('audit append, group commit (2 ms, batch 512)', 'audit append, one commit per record')}x (2 ms)`,
    );
  } finally {
    await ctx?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

console.log(
  `coatcheck vault bench: ${OPS} operations per case, ${CONCURRENCY} in flight, node ${process.version}`,
);
console.log('(every exchange includes its durable audit record; SQLite runs synchronous=FULL)');
await scenario('embedded store (SQLite, WAL)', {});

const adminUrl = process.env.COATCHECK_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const admin = new pg.Client({ connectionString: adminUrl });
try {
  await admin.connect();
} catch {
  console.log('\nPostgreSQL not reachable: skipped');
  process.exit(0);
}
const db = `coatcheck_bench_${randomBytes(4).toString('hex')}`;
await admin.query(`CREATE DATABASE ${db}`);
try {
  const url = new URL(adminUrl);
  url.pathname = `/${db}`;
  await scenario('PostgreSQL store', { COATCHECK_DATABASE_URL: url.toString() });
} finally {
  await admin.query(`DROP DATABASE ${db} WITH (FORCE)`);
  await admin.end();
}

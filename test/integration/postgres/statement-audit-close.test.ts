import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { agentRef } from '../../../src/core/principal.js';
import { encodeFrontend } from '../../../src/frontends/postgres/protocol/encode.js';
import { postgresFrontend } from '../../../src/frontends/postgres/start.js';
import { GatewayDriver } from '../../../src/gateway/driver.js';
import type { SessionHooks } from '../../../src/gateway/hooks.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { frontendDeps } from '../../../src/server/gateway-deps.js';
import { RawClient } from './raw-client.js';

/**
 * Statements are forwarded before their batched `postgres.query` record is durable; the
 * batch still pending when the session ends is written then. When that last write fails
 * (or an earlier timed one did), the session's outcome says so (CC_ERR_AUDIT_UNAVAILABLE),
 * never `ok`: the gap in the audit trail is visible in the session list and the metrics.
 * The audit store refuses only statement records here (a trigger on the real store), so
 * the login and the session record are written as usual.
 */
const UPSTREAM_PG = 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable';

let dir: string;
let ctx: Context;
let driver: GatewayDriver;
let port: number;
let ticket: string;
const closed: Array<{ session: string; outcome: string }> = [];

const database = () => new Database(join(dir, 'coatcheck.db'));
function statementsDown(): () => void {
  const db = database();
  db.exec(
    `CREATE TRIGGER statements_down BEFORE INSERT ON audit WHEN NEW.type = 'postgres.query' BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
  );
  return () => {
    db.exec('DROP TRIGGER statements_down');
    db.close();
  };
}

async function until(check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-pg-audit-close-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
  ctx = await openContext(home, { env: {} });
  const hook: SessionHooks = {
    open: () => undefined,
    exchange: () => undefined,
    close: (s, record) => {
      if (s.frontend === 'postgres') closed.push({ session: s.id, outcome: record.outcome });
    },
  };
  driver = new GatewayDriver({
    registry: ctx.metrics,
    log: createLogger({ level: 'silent' }),
    store: ctx.store,
    clock: ctx.clock,
    hooks: [hook],
  });
  port = (await driver.start(postgresFrontend(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }))).port;
  await ctx.vault.addSecret(
    { name: 'pgpw', value: Buffer.from('statement-audit-unused-password'), allow: ['conn:db'] },
    'admin:test',
  );
  await ctx.connections.add(
    { name: 'db', type: 'postgres', url: UPSTREAM_PG, credential: 'pgpw' },
    'admin:test',
  );
  const { agent } = await ctx.agents.create({ name: 'bot' }, 'admin:test');
  ticket = (
    await ctx.vault.issueTicket(
      { secret: 'pgpw', principal: agentRef(agent.id), destinations: ['conn:db'], maxUses: 100 },
      'admin:test',
    )
  ).ticket;
}, 60_000);

afterAll(async () => {
  await driver?.stop();
  await ctx?.close();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** One session: log in, run `sql`, end it with Terminate; resolves with the outcome it closed with. */
async function session(sql: string, beforeEnd?: () => Promise<void>): Promise<string> {
  const count = closed.length;
  const client = await RawClient.open(port);
  const login = await client.login('bot', ticket, 'db');
  expect(login.at(-1)?.type).toBe('ReadyForQuery');
  client.query(sql);
  const answer = await client.untilReady();
  expect(answer.some((m) => m.type === 'ErrorResponse')).toBe(false);
  await beforeEnd?.();
  client.write(encodeFrontend({ type: 'Terminate' }));
  await client.untilClosed();
  await until(() => closed.length > count);
  return closed.at(-1)!.outcome;
}

describe('PostgreSQL: the statement-audit batch written at session end', () => {
  it('a session whose statements were all recorded closes ok', async () => {
    expect(await session('SELECT 1')).toBe('ok');
  });

  it('the last batch failing at session end: CC_ERR_AUDIT_UNAVAILABLE, not ok', async () => {
    const repair = statementsDown();
    try {
      // Terminate follows the answer at once: the statement's batch is still pending (written at the end).
      expect(await session('SELECT 2')).toBe('CC_ERR_AUDIT_UNAVAILABLE');
    } finally {
      repair();
    }
    expect(await session('SELECT 3')).toBe('ok');
  });

  it('a timed batch that failed before the session ended: CC_ERR_AUDIT_UNAVAILABLE, not ok', async () => {
    const repair = statementsDown();
    try {
      const before = (await ctx.store.readAudit(0, 100_000)).length;
      const outcome = await session('SELECT 4', async () => {
        // Longer than the batch's linger (50 ms): the timed write has been tried (and failed).
        await new Promise((r) => setTimeout(r, 400));
      });
      expect(outcome).toBe('CC_ERR_AUDIT_UNAVAILABLE');
      const written = (await ctx.store.readAudit(0, 100_000)).slice(before);
      expect(written.filter((r) => r.type === 'postgres.query')).toEqual([]);
    } finally {
      repair();
    }
  });
});

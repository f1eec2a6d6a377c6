import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeFrontend } from '../../../src/frontends/postgres/protocol/encode.js';
import type { BackendMessage } from '../../../src/frontends/postgres/protocol/messages.js';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';
import { RawClient } from './raw-client.js';

/**
 * A gateway in front of a throwaway server with a table whose `secret` column a policy
 * masks and whose `ssn` column the connection masks, a row limit of 3, writes to `sink`
 * allowed, writes to `people` needing approval, and forbids on normalised text.
 */
export const POLICY = `@id("sessions") permit(principal, action == Action::"sql:session", resource);
@id("reads") @mask("secret") permit(principal, action == Action::"sql:read", resource);
@id("sink-writes") permit(principal, action == Action::"sql:write", resource) when { (context has tables && context.tables.contains("sink")) || (context has statement && context.statement like "INSERT INTO sink *") };
@id("users-writes") permit(principal, action == Action::"sql:write", resource) when { context has tables && context.tables.contains("users") };
@id("people-writes") @approval("required") permit(principal, action == Action::"sql:write", resource) when { context has tables && context.tables.contains("people") };
@id("no-delete-users") forbid(principal, action, resource) when { context has statement && context.statement like "*DELETE FROM USERS*" };
@id("no-drop") forbid(principal, action, resource) when { context has statement && context.statement like "*DROP*" };
`;

export const ROW_LIMIT = 3;
export const CANARY = 'relay-canary-Zq81xT0pLm4v';

export interface RelayFixture {
  db: ThrowawayPostgres;
  gw: PgGateway;
  key: string;
  ref: string;
  dir: string;
  close(): Promise<void>;
}

export async function startRelayFixture(
  options: Parameters<typeof startThrowawayPostgres>[0] = {},
): Promise<RelayFixture> {
  const db = await startThrowawayPostgres(options);
  const admin = db.direct();
  await admin.connect();
  await admin.query(`CREATE TABLE people (id int, name text, secret text, ssn text);
    INSERT INTO people SELECT i, 'name-' || i, 'SECRET-' || i, 'SSN-' || i FROM generate_series(1, 10) i;
    CREATE TABLE sink (a int, b text); CREATE TABLE users (id int); INSERT INTO users VALUES (1), (2);
    CREATE SEQUENCE relay_seq;`);
  await admin.end();
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-pg-relay-'));
  const policyFile = join(dir, 'relay.cedar');
  writeFileSync(policyFile, POLICY);
  const gw = await startPgGateway(
    {},
    '127.0.0.1',
    `policy:\n  path: ${policyFile}\napprovals:\n  holdTimeout: 1s\n`,
  );
  await gw.addSecret('dbpw', db.password, ['conn:main', 'conn:ro']);
  await gw.addSecret('canary', CANARY, ['conn:main']);
  await gw.addConnection('main', db.url, {
    credential: 'dbpw',
    rules: { rowLimit: ROW_LIMIT, maskColumns: ['*ssn*'] },
  });
  await gw.addConnection('ro', db.url, { credential: 'dbpw', rules: { readOnly: true } });
  const bot = await gw.createAgent('bot');
  return {
    db,
    gw,
    key: bot.key,
    ref: bot.ref,
    dir,
    async close() {
      await gw.close();
      db.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const Q = (sql: string) => encodeFrontend({ type: 'Query', sql });
export const P = (name: string, sql: string) =>
  encodeFrontend({ type: 'Parse', name, sql, parameterTypes: [] });
export const B = (portal: string, statement: string, params: Array<string | null> = []) =>
  encodeFrontend({
    type: 'Bind',
    portal,
    statement,
    parameterFormats: [],
    parameters: params.map((p) => (p === null ? null : Buffer.from(p))),
    resultFormats: [],
  });
export const D = (kind: 'S' | 'P', name: string) => encodeFrontend({ type: 'Describe', kind, name });
export const E = (portal: string, maxRows = 0) => encodeFrontend({ type: 'Execute', portal, maxRows });
export const C = (kind: 'S' | 'P', name: string) => encodeFrontend({ type: 'Close', kind, name });
export const S = encodeFrontend({ type: 'Sync' });

/** Read until `n` ReadyForQuery messages arrived (or the connection closed). */
export async function readies(c: RawClient, n: number): Promise<BackendMessage[]> {
  const out: BackendMessage[] = [];
  let seen = 0;
  while (seen < n) {
    const m = await c.message();
    if (m === null) break;
    out.push(m);
    if (m.type === 'ReadyForQuery') seen++;
  }
  return out;
}

/** Every value of every DataRow, as text. */
export function values(messages: readonly BackendMessage[]): string[] {
  const out: string[] = [];
  for (const m of messages)
    if (m.type === 'DataRow') for (const v of m.values) out.push(v === null ? 'NULL' : v.toString('utf8'));
  return out;
}

/** No unmasked secret or ssn value anywhere in what the client received. */
export function leaked(c: RawClient): boolean {
  const raw = Buffer.concat(c.received);
  return raw.includes('SECRET-') || raw.includes('SSN-');
}

/** Rows per result set (a result ends at CommandComplete, PortalSuspended or ErrorResponse). */
export function resultSizes(messages: readonly BackendMessage[]): number[] {
  const sizes: number[] = [];
  let n = 0;
  for (const m of messages) {
    if (m.type === 'DataRow') n++;
    else if (m.type === 'CommandComplete' || m.type === 'PortalSuspended' || m.type === 'ErrorResponse') {
      sizes.push(n);
      n = 0;
    }
  }
  return sizes;
}

export async function login(f: RelayFixture, database = 'main'): Promise<RawClient> {
  const c = await RawClient.open(f.gw.port);
  const hello = await c.login('bot', f.key, database);
  if (hello.at(-1)?.type !== 'ReadyForQuery') throw new Error(`login failed: ${JSON.stringify(hello)}`);
  return c;
}

export async function scalar(f: RelayFixture, sql: string): Promise<unknown> {
  const admin = f.db.direct();
  await admin.connect();
  try {
    const r = await admin.query(sql);
    return Object.values(r.rows[0] ?? {})[0];
  } finally {
    await admin.end();
  }
}

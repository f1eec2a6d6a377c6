import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';

let db: ThrowawayPostgres;
let gw: PgGateway;
let dir: string;

beforeAll(async () => {
  db = await startThrowawayPostgres();
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-pgpolicy-'));
  const policyFile = join(dir, 'sessions.cedar');
  writeFileSync(
    policyFile,
    '@id("bot-sessions")\npermit(principal == Agent::"bot", action == Action::"sql:session", resource == Connection::"main");\n',
  );
  gw = await startPgGateway({}, '127.0.0.1', `policy:\n  path: ${policyFile}\n`);
  await gw.addSecret('dbpw', db.password, ['conn:main']);
  await gw.addConnection('main', db.url, { credential: 'dbpw' });
}, 120_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
  rmSync(dir, { recursive: true, force: true });
});

it('decides logins by policy (sql:session): permitted agent in, others refused with 42501', async () => {
  const bot = await gw.createAgent('bot');
  const other = await gw.createAgent('other');
  const ok = gw.client('bot', bot.key, 'main');
  await ok.connect();
  expect((await ok.query('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
  await ok.end();
  const refused = gw.client('other', other.key, 'main');
  refused.on('error', () => undefined);
  const error = await refused.connect().then(
    () => null,
    (e: unknown) => e as { code: string; detail: string },
  );
  expect(error).toMatchObject({ code: '42501', detail: 'CC_ERR_POLICY_DENIED' });
  // Nothing was released for the refused login: the credential release is audited only for bot.
  await gw.settled();
  const records = await gw.ctx.store.readAudit(0, 1000);
  const releases = records.filter((r) => r.type === 'credential.inject');
  expect(releases.map((r) => r.actor)).toEqual([bot.ref]);
});

import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { visibleControls } from '../../../src/cli/io.js';
import { agentRef } from '../../../src/core/principal.js';
import type { PostgresFrontend } from '../../../src/frontends/postgres/start.js';
import { postgresFrontend } from '../../../src/frontends/postgres/start.js';
import { GatewayDriver } from '../../../src/gateway/driver.js';
import type { Context } from '../../../src/server/context.js';
import { recordingsDir, sessionRecordings } from '../../../src/server/recordings.js';
import { cli } from '../../helpers/cli.js';
import { makeTestHome, type TestHome } from '../../helpers/home.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../postgres/harness.js';

const CANARY = 'sk_live_CANARY_rec_5e4d3c2b1a0f9e8d';
/** A value a hostile table row carries: a terminal title change and a carriage return. */
const HOSTILE = '\u001b]0;pwned\u0007\rrow';

function psql(port: number, ticket: string, input: string): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      'psql',
      [
        `postgresql://bot:${ticket}@127.0.0.1:${port}/rec?sslmode=require`,
        '-X',
        '-v',
        'ON_ERROR_STOP=0',
        '-A',
        '-t',
        '-F',
        '|',
      ],
      { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PGCONNECT_TIMEOUT: '10' } },
      (_error, stdout, stderr) => resolve({ stdout, stderr }),
    );
    // A child that exits before reading stdin gives EPIPE; its exit code and output are what the test checks.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input);
  });
}

describe('a psql session recorded in full and replayed', () => {
  let db: ThrowawayPostgres;
  let home: TestHome;
  let ctx: Context;
  let driver: GatewayDriver;
  let pg: PostgresFrontend;
  let ticket: string;
  let client: { stdout: string; stderr: string };
  let session = '';
  const run = (args: string[]) => cli(['--dir', home.home.dir, ...args]);

  beforeAll(async () => {
    db = await startThrowawayPostgres();
    const admin = db.direct();
    await admin.connect();
    await admin.query('CREATE TABLE people (id int PRIMARY KEY, name text, email text, note text)');
    await admin.query(
      `INSERT INTO people VALUES (1, 'ann', 'ann@example.com', $1), (2, 'bob', 'bob@example.com', $2), (3, 'cy', 'cy@example.com', 'x')`,
      [`key=${CANARY};`, HOSTILE],
    );
    await admin.end();
    home = await makeTestHome();
    ctx = await home.open();
    driver = new GatewayDriver({
      registry: ctx.metrics,
      log: pino({ level: 'silent' }),
      store: ctx.store,
      clock: ctx.clock,
      recordings: sessionRecordings(ctx),
    });
    pg = await driver.start(postgresFrontend(ctx, { host: '127.0.0.1', port: 0 }));
    const { agent } = await ctx.agents.create({ name: 'bot' }, 'admin:test');
    await ctx.vault.addSecret(
      { name: 'dbpw', value: Buffer.from(db.password), allow: ['conn:rec'] },
      'admin:test',
    );
    await ctx.vault.addSecret(
      { name: 'api-key', value: Buffer.from(CANARY), allow: ['conn:rec'] },
      'admin:test',
    );
    await ctx.connections.add(
      {
        name: 'rec',
        type: 'postgres',
        url: db.url,
        credential: 'dbpw',
        rules: { recording: 'full', readOnly: true, maskColumns: ['*email*'] },
      },
      'admin:test',
    );
    ticket = (await ctx.vault.issueTicket({ secret: 'dbpw', principal: agentRef(agent.id) }, 'admin:test'))
      .ticket;
    client = await psql(
      pg.port,
      ticket,
      [
        'SELECT id, name, email, note FROM people ORDER BY id;',
        'DELETE FROM people;',
        'SELECT count(*) AS n FROM people WHERE id > $$1$$::int;',
        '',
      ].join('\n'),
    );
    for (let i = 0; i < 200 && pg.engine.live.size > 0; i++) await new Promise((r) => setTimeout(r, 25));
    await driver.recordings!.flush();
    const listed = await ctx.store.listRecordings({ limit: 5 });
    expect(listed).toHaveLength(1);
    session = listed[0]!.id;
  }, 120_000);

  afterAll(async () => {
    await driver?.stop();
    await ctx?.close();
    home?.remove();
    db?.stop();
  });

  it('psql saw masked emails, a ticket for the secret and the refusal', () => {
    const rows = client.stdout.trim().split('\n');
    expect(rows[0]).toMatch(/^1\|ann\|[^|]*\|key=cct_[0-9A-Za-z]{28};$/);
    expect(client.stdout).not.toContain('ann@example.com');
    expect(client.stdout).not.toContain(CANARY);
    expect(client.stderr).toMatch(/ERROR: {2}coatcheck: .*read-only/);
  });

  it('the recorded results are exactly what psql printed, row for row', async () => {
    const json = await run(['--json', 'sessions', 'replay', session]);
    expect(json.code).toBe(0);
    const events = (
      JSON.parse(json.stdout) as {
        events: Array<{ kind: string; dir: string; data: Record<string, unknown> }>;
      }
    ).events;
    const results = events.filter((e) => e.kind === 'pg.result' && Array.isArray(e.data.columns));
    const printed = results.flatMap((r) =>
      (r.data.rows as Array<Array<{ text: string } | null>>).map((row) =>
        row.map((c) => (c === null ? '' : c.text)).join('|'),
      ),
    );
    expect(printed.join('\n')).toBe(client.stdout.replace(/\n+$/, ''));
    expect(results[0]!.data.columns).toEqual(['id', 'name', 'email', 'note']);
    expect(results[0]!.data.rowCount).toBe(3);
    expect(events.filter((e) => e.kind === 'pg.query').map((e) => e.data.sql)).toEqual([
      'SELECT id, name, email, note FROM people ORDER BY id;',
      'DELETE FROM people;',
      'SELECT count(*) AS n FROM people WHERE id > $$1$$::int;',
    ]);
    const refusal = events.find((e) => e.kind === 'pg.error')!;
    // The error psql printed is the one recorded.
    expect(client.stderr).toContain(`ERROR:  ${String(refusal.data.message)}`);
  });

  it('replays a psql-like transcript with terminal controls escaped', async () => {
    const replay = await run(['sessions', 'replay', session]);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toContain('=> SELECT id, name, email, note FROM people ORDER BY id;');
    expect(replay.stdout).toMatch(/ id \| name \| +email +\| +note/);
    expect(replay.stdout).toContain('(3 rows)');
    expect(replay.stdout).toContain('=> DELETE FROM people;');
    expect(replay.stdout).toMatch(/ERROR: {2}coatcheck: .*read-only/);
    expect(replay.stdout).toContain(visibleControls(HOSTILE));
    expect(replay.stdout).not.toMatch(/[\u001b\u0007\r]/);
    expect(replay.stdout).not.toContain('ann@example.com');
  });

  it('no secret in the recording file, the replay, the export or the list', async () => {
    const outputs = [
      (await run(['--json', 'sessions', 'replay', session])).stdout,
      (await run(['sessions', 'replay', session])).stdout,
      (await run(['--json', 'sessions', 'export', session])).stdout,
      (await run(['--json', 'sessions', 'list', '--text', 'people'])).stdout,
    ];
    const dir = recordingsDir(ctx);
    for (const name of readdirSync(dir)) outputs.push(readFileSync(join(dir, name)).toString('latin1'));
    for (const text of outputs) {
      expect(text).not.toContain(CANARY);
      expect(text).not.toContain(db.password);
      expect(text).not.toContain(ticket); // the login ticket is a password: never recorded
      expect(text).not.toContain('ann@example.com');
    }
    const exported = join(home.dir, 'pg-export.json');
    writeFileSync(exported, outputs[2]!);
    expect((await run(['sessions', 'verify-export', exported])).code).toBe(0);
    expect(JSON.parse(outputs[3]!).map((r: { id: string }) => r.id)).toEqual([session]);
  });
});

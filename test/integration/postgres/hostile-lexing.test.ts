import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend, encodeStartup } from '../../../src/frontends/postgres/protocol/encode.js';
import type { BackendMessage } from '../../../src/frontends/postgres/protocol/messages.js';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';
import { errorCode, errorField, RawClient } from './raw-client.js';

/**
 * The gateway and the server must read the same bytes the same way (issue item 1): the
 * settings that change lexing are pinned at upstream login and no route may change them;
 * text that is not UTF-8 is refused; syntax the upstream's version reads differently is
 * refused. Each attack is checked against the real server: the victim table keeps its rows.
 */

let db: ThrowawayPostgres;
let gw: PgGateway;
let ticket: string;
const CANARY = 'pgguards-lexing-Canary-7f3a9c';

async function rows(): Promise<number> {
  const admin = db.direct();
  await admin.connect();
  try {
    return (await admin.query('SELECT count(*)::int AS n FROM victim')).rows[0].n as number;
  } finally {
    await admin.end();
  }
}

async function connect(options: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = new pg.Client({
    host: '127.0.0.1',
    port: gw.port,
    user: 'bot',
    password: ticket,
    database: 'main',
    ...options,
  });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

async function refusal(
  promise: Promise<unknown>,
): Promise<{ code: string; detail: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    const e = error as { code: string; detail: string; message: string };
    return { code: e.code, detail: e.detail, message: e.message };
  }
  throw new Error('expected a refusal');
}

function fatal(messages: readonly BackendMessage[]): { code: string | null; detail: string | null } {
  return { code: errorCode(messages), detail: errorField(messages, 'D') };
}

function conninfo(extra = ''): string {
  return `postgresql://bot:${ticket}@127.0.0.1:${gw.port}/main?sslmode=disable${extra}`;
}

beforeAll(async () => {
  db = await startThrowawayPostgres();
  const admin = db.direct();
  await admin.connect();
  await admin.query('CREATE TABLE victim (id int, note text)');
  await admin.query(`INSERT INTO victim SELECT g, '${CANARY}' FROM generate_series(1, 5) g`);
  // A same-named function a PostgreSQL 15 server calls for JSON_SCALAR(...) and friends.
  for (const signature of ['json_scalar(int)', 'json_array(VARIADIC int[])', 'json_serialize(text)']) {
    await admin.query(
      `CREATE FUNCTION public.${signature} RETURNS int LANGUAGE plpgsql AS $$ BEGIN DELETE FROM victim; RETURN 1; END $$`,
    );
  }
  // A function anyone may call that flips a lexing setting for the session.
  await admin.query(
    `CREATE FUNCTION public.flip() RETURNS text LANGUAGE sql AS $$ SELECT pg_catalog.set_config('standard_conforming_strings', 'off', false) $$`,
  );
  await admin.end();
  gw = await startPgGateway();
  const bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', db.password, ['conn:main']);
  await gw.addConnection('main', db.url, { credential: 'dbpw' });
  ticket = await gw.issue('dbpw', bot.ref, ['conn:main']);
}, 120_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
});

const EXPLOIT = "SELECT 'x\\''; DELETE FROM victim; --'";

describe('standard_conforming_strings and backslashes', () => {
  it('refuses SET standard_conforming_strings = off; the classic exploit then stays one SELECT', async () => {
    const c = await connect();
    const e = await refusal(c.query('SET standard_conforming_strings = off'));
    expect(e).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_SETTING_PINNED' });
    expect(e.message).toContain('standard_conforming_strings');
    const r = await c.query(EXPLOIT);
    expect(r.rows).toEqual([{ '?column?': "x\\'; DELETE FROM victim; --" }]);
    // The extended protocol, the setting's name as a bound parameter: refused the same way.
    const bound = await refusal(
      c.query("SELECT set_config($1, 'off', false)", ['standard_conforming_strings']),
    );
    expect(bound).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_SETTING_PINNED' });
    expect((await c.query('SHOW standard_conforming_strings')).rows[0].standard_conforming_strings).toBe(
      'on',
    );
    expect(await rows()).toBe(5);
    await c.end();
  });

  it.each([
    'SET LOCAL standard_conforming_strings = off',
    'SET SESSION standard_conforming_strings TO off',
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true)",
    "SELECT set_config((SELECT 'standard_conforming_strings'), 'off', false)",
    "SELECT set_config(lower('STANDARD_CONFORMING_STRINGS'), 'off', false)",
    'ALTER ROLE CURRENT_USER SET standard_conforming_strings = off',
    'ALTER DATABASE postgres SET standard_conforming_strings = off',
    'ALTER SYSTEM SET standard_conforming_strings = off',
    'SET backslash_quote = on',
    "SELECT set_config('backslash_quote', 'on', false)",
  ])('refuses %s (pinned setting)', async (sql) => {
    const c = await connect();
    await c.query('BEGIN');
    const e = await refusal(c.query(sql));
    expect(e).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_SETTING_PINNED' });
    await c.query('ROLLBACK');
    expect((await c.query('SHOW standard_conforming_strings')).rows).toEqual([
      { standard_conforming_strings: 'on' },
    ]);
    await c.query(EXPLOIT);
    expect(await rows()).toBe(5);
    await c.end();
  });

  it('keeps the pinned value after RESET ALL and DISCARD ALL (they return to the startup values)', async () => {
    const c = await connect();
    for (const reset of ['RESET ALL', 'DISCARD ALL', 'RESET standard_conforming_strings']) {
      await c.query(reset);
      expect((await c.query('SHOW standard_conforming_strings')).rows[0].standard_conforming_strings).toBe(
        'on',
      );
      expect((await c.query('SHOW client_encoding')).rows[0].client_encoding).toBe('UTF8');
    }
    await c.end();
  });

  it('pins the setting even when the role or database default says otherwise (set out of band)', async () => {
    const admin = db.direct();
    await admin.connect();
    await admin.query('ALTER ROLE postgres SET standard_conforming_strings = off');
    await admin.query("ALTER ROLE postgres SET client_encoding = 'SJIS'");
    try {
      const c = await connect();
      expect((await c.query('SHOW standard_conforming_strings')).rows[0].standard_conforming_strings).toBe(
        'on',
      );
      expect((await c.query('SHOW client_encoding')).rows[0].client_encoding).toBe('UTF8');
      await c.query('RESET ALL');
      await c.query(EXPLOIT);
      expect(await rows()).toBe(5);
      await c.end();
    } finally {
      await admin.query('ALTER ROLE postgres RESET ALL');
      await admin.end();
    }
  });

  it('drops lexing settings sent as startup parameters, also inside options=-c', async () => {
    const r = await gw.psql(
      conninfo('&options=-c%20standard_conforming_strings%3Doff%20-c%20backslash_quote%3Don'),
      ['-At', '-c', 'SHOW standard_conforming_strings', '-c', EXPLOIT],
    );
    expect(r.stdout.split('\n')[0]).toBe('on');
    const c = await RawClient.open(gw.port);
    c.write(
      encodeStartup({
        type: 'StartupMessage',
        major: 3,
        minor: 0,
        parameters: [
          ['user', 'bot'],
          ['database', 'main'],
          ['standard_conforming_strings', 'off'],
          ['search_path', 'evil'],
        ],
      }),
    );
    await c.message();
    c.write(encodeFrontend({ type: 'PasswordMessage', data: Buffer.from(`${ticket}\0`) }));
    const hello = await c.untilReady();
    expect(hello).toContainEqual({
      type: 'ParameterStatus',
      name: 'standard_conforming_strings',
      value: 'on',
    });
    c.query(EXPLOIT);
    await c.untilReady();
    c.close();
    expect(await rows()).toBe(5);
  });

  it('reads E-strings with backslash escapes as the server does', async () => {
    const c = await connect();
    expect((await c.query("SELECT E'a\\'b' AS v")).rows).toEqual([{ v: "a'b" }]);
    // With backslash_quote pinned to safe_encoding in UTF-8, \' inside an E-string is a quote for both.
    expect((await c.query("SELECT E'x\\'; DELETE FROM victim; --' AS v")).rows).toEqual([
      { v: "x'; DELETE FROM victim; --" },
    ]);
    expect(await rows()).toBe(5);
    await c.end();
  });

  it('ends the session when a function flips a pinned setting (the server reports it)', async () => {
    const c = await connect();
    const e = await refusal(c.query('SELECT public.flip()'));
    expect(e).toMatchObject({ detail: 'CC_ERR_PG_SETTING_PINNED' });
    expect(e.message).toContain('standard_conforming_strings');
    await expect(c.query('SELECT 1')).rejects.toThrow();
    expect(await rows()).toBe(5);
  });
});

describe('client encoding', () => {
  it('refuses a client_encoding other than UTF8 at startup (psql, node-postgres)', async () => {
    const r = await gw.psql(conninfo('&client_encoding=SJIS'), ['-At', '-c', 'SELECT 1']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('client_encoding must be UTF8');
    const startup = async (encoding: string): Promise<BackendMessage[]> => {
      const c = await RawClient.open(gw.port);
      c.write(
        encodeStartup({
          type: 'StartupMessage',
          major: 3,
          minor: 0,
          parameters: [
            ['user', 'bot'],
            ['database', 'main'],
            ['client_encoding', encoding],
          ],
        }),
      );
      const first = await c.message();
      if (first?.type === 'ErrorResponse') return [first];
      c.write(encodeFrontend({ type: 'PasswordMessage', data: Buffer.from(`${ticket}\0`) }));
      const hello = await c.untilReady();
      c.close();
      return hello;
    };
    for (const bad of ['BIG5', 'SJIS', 'GBK', 'GB18030', 'LATIN1', 'auto'])
      expect(fatal(await startup(bad)), bad).toEqual({
        code: '22023',
        detail: 'CC_ERR_PG_ENCODING_UNSUPPORTED',
      });
    for (const ok of ['UTF8', 'utf-8', 'Unicode', 'SQL_ASCII']) {
      expect(await startup(ok), ok).toContainEqual({
        type: 'ParameterStatus',
        name: 'client_encoding',
        value: 'UTF8',
      });
    }
  });

  it.each([
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'GBK'",
    "SET LOCAL client_encoding TO 'BIG5'",
    "SELECT set_config('client_encoding', 'SJIS', false)",
    "ALTER ROLE CURRENT_USER SET client_encoding = 'SJIS'",
  ])('refuses %s', async (sql) => {
    const c = await connect();
    const e = await refusal(c.query(sql));
    expect(e).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_SETTING_PINNED' });
    await c.end();
  });

  it("refuses psql's \\encoding", async () => {
    const r = await gw.psql(conninfo(), ['-At'], '\\encoding SJIS\nSHOW client_encoding;\n');
    expect(r.stdout.trim()).toBe('UTF8');
  });

  it('ends the session on statement text that is not valid UTF-8 (the SJIS 0x95 0x5C trick)', async () => {
    for (const bytes of [
      // E'<0x95>\'; DELETE ...: in SJIS 0x95 0x5C is one character and the quote closes the string.
      Buffer.concat([
        Buffer.from("SELECT E'"),
        Buffer.from([0x95]),
        Buffer.from("\\'; DELETE FROM victim; --'"),
      ]),
      // A lone continuation byte, an overlong encoding of '\' and a truncated sequence.
      Buffer.concat([Buffer.from("SELECT '"), Buffer.from([0x80]), Buffer.from("'; DELETE FROM victim")]),
      Buffer.concat([
        Buffer.from("SELECT E'"),
        Buffer.from([0xc1, 0x9c]),
        Buffer.from("'; DELETE FROM victim; --'"),
      ]),
      Buffer.concat([Buffer.from('SELECT 1; DELETE FROM victim; SELECT '), Buffer.from([0xe3, 0x81])]),
    ]) {
      const c = await RawClient.open(gw.port);
      await c.login('bot', ticket, 'main');
      const body = Buffer.concat([bytes, Buffer.from([0])]);
      const header = Buffer.alloc(5);
      header[0] = 0x51;
      header.writeInt32BE(body.length + 4, 1);
      c.write(Buffer.concat([header, body]));
      expect(fatal(await c.untilClosed())).toEqual({ code: '22021', detail: 'CC_ERR_PG_TEXT_INVALID' });
    }
    // The same in a Parse message (extended protocol).
    const c = await RawClient.open(gw.port);
    await c.login('bot', ticket, 'main');
    const sql = Buffer.concat([
      Buffer.from('DELETE FROM victim WHERE note = E'),
      Buffer.from([0xff]),
      Buffer.from("''"),
    ]);
    const body = Buffer.concat([Buffer.from([0]), sql, Buffer.from([0, 0, 0])]);
    const header = Buffer.alloc(5);
    header[0] = 0x50;
    header.writeInt32BE(body.length + 4, 1);
    c.write(Buffer.concat([header, body, encodeFrontend({ type: 'Sync' })]));
    expect(fatal(await c.untilClosed())).toEqual({ code: '22021', detail: 'CC_ERR_PG_TEXT_INVALID' });
    expect(await rows()).toBe(5);
  });
});

describe('server version', () => {
  it.each([
    'SELECT JSON_SCALAR(1)',
    'SELECT JSON_ARRAY(1, 2)',
    "SELECT JSON_OBJECT('a': 1)",
    "SELECT JSON_SERIALIZE('1')",
    "SELECT '1' IS JSON",
    'SELECT system_user',
  ])('refuses %s, which PostgreSQL 15 reads differently from the 17 grammar', async (sql) => {
    const c = await connect();
    const e = await refusal(c.query(sql));
    expect(e).toMatchObject({ code: '0A000', detail: 'CC_ERR_PG_SYNTAX_UNSUPPORTED' });
    expect(e.message).toContain('PostgreSQL 15');
    await c.end();
    expect(await rows()).toBe(5);
  });

  it('still runs the same functions when called by their (user) names, as the unknown calls they are', async () => {
    const c = await connect();
    await c.query('BEGIN');
    await c.query('SELECT public.json_scalar(1)');
    expect((await c.query('SELECT count(*)::int AS n FROM victim')).rows).toEqual([{ n: 0 }]);
    await c.query('ROLLBACK');
    await c.end();
    expect(await rows()).toBe(5);
  });
});

describe('audit', () => {
  it('records refusals with their code and never the canary', async () => {
    await gw.settled();
    const text = JSON.stringify(await gw.ctx.store.readAudit(0, 5000));
    expect(text).toContain('CC_ERR_PG_SETTING_PINNED');
    expect(text).toContain('CC_ERR_PG_SYNTAX_UNSUPPORTED');
    expect(text).not.toContain(CANARY);
    expect(text).not.toContain(db.password);
    expect(gw.logs()).not.toContain(db.password);
  });
});

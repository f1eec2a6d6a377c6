import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Principal } from '../../../src/core/principal.js';
import {
  BackendInspector,
  createOutputIndex,
  type OutputIndex,
  withheldNotice,
} from '../../../src/frontends/postgres/backend-inspect.js';
import { decodeBackend } from '../../../src/frontends/postgres/protocol/decode.js';
import { encodeFrontend, encodeStartup } from '../../../src/frontends/postgres/protocol/encode.js';
import { MessageFramer } from '../../../src/frontends/postgres/protocol/framer.js';
import type { BackendMessage, Frame } from '../../../src/frontends/postgres/protocol/messages.js';
import { chainInspectors, createDetectorInspector } from '../../../src/gateway/detector-inspector.js';
import {
  createKnownSecretInspector,
  type InspectionContext,
  type ResponseInspector,
  type ResponseScan,
} from '../../../src/gateway/inspector.js';
import type { Context } from '../../../src/server/context.js';
import { makeTestHome, type TestHome } from '../../helpers/home.js';
import { RawClient } from './raw-client.js';

/**
 * Output inspection against a real PostgreSQL 15: each test runs SQL on a raw protocol
 * connection, feeds every frame the server sends to the inspector, and searches the
 * bytes that would reach the client for the canary in every encoding.
 */

const DB = 'pg_output_inspect';
const CANARY = 'pgoutCanary7Qz9xK2mW4vB8nR1';
/** Not in the vault: the detector must find it. */
const GHP = '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';
const GLPAT = 'glpat-Zx8Kq2Lm9Np4Rt6Vw1Yb';
/** Found only with their key beside them (a column name, or the value before them). */
const AWS_SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq8Hk3Lm2N';
const PASSWORD = 'Tr0ub4dor3-horse-battery9';

function forms(value: string): string[] {
  const b = Buffer.from(value);
  return [
    value,
    b.toString('hex'),
    b.toString('hex').toUpperCase(),
    b.toString('base64').slice(0, 20),
    encodeURIComponent(value),
  ];
}

function expectClean(
  out: Buffer,
  values: readonly string[] = [CANARY, GHP, GLPAT, AWS_SECRET, PASSWORD],
): void {
  const text = out.toString('latin1');
  for (const v of values) for (const f of forms(v)) expect(text).not.toContain(f);
}

let home: TestHome;
let ctx: Context;
let agent: Principal;
let admin: pg.Client;
let index: OutputIndex;
let indexFor: unknown = null;

async function refreshIndex(): Promise<void> {
  const known = await ctx.vault.knownSecrets();
  if (known === indexFor) return;
  index = createOutputIndex(known.map((s) => ({ id: s.id, value: s.value.reveal() })));
  indexFor = known;
}

function inspectionContext(): InspectionContext {
  return {
    reissue: async (secretId) =>
      (await ctx.vault.reissueForResponse(secretId, { principal: agent.ref }, 'gateway:postgres')).ticket,
    tokenize: async (value, kind) =>
      (
        await ctx.vault.tokenizeFound(
          value,
          { principal: agent.ref, destinations: [], kind, source: 'postgres-response' },
          'gateway:postgres',
        )
      ).ticket,
  };
}

function inspectorWith(inspector: ResponseInspector): BackendInspector {
  let scan: Promise<ResponseScan> | null = null;
  return new BackendInspector(
    () => index,
    () => {
      scan ??= inspector.begin(inspectionContext());
      return scan;
    },
  );
}

function fullInspector(): BackendInspector {
  return inspectorWith(
    chainInspectors(
      createKnownSecretInspector(() => ctx.vault.knownSecrets()),
      createDetectorInspector(),
    ),
  );
}

/** A protocol session straight to the server (trust auth). */
async function session(): Promise<RawClient> {
  const c = await RawClient.open(5432);
  c.write(
    encodeStartup({
      type: 'StartupMessage',
      major: 3,
      minor: 0,
      parameters: [
        ['user', 'postgres'],
        ['database', DB],
      ],
    }),
  );
  const login = await c.untilReady();
  if (login.some((m) => m.type === 'ErrorResponse')) throw new Error('login failed');
  return c;
}

interface Run {
  /** What the client would receive. */
  readonly out: Buffer;
  readonly messages: BackendMessage[];
  /** Frames as the server sent them. */
  readonly raw: Frame[];
  /** Output frames that are the very Buffer the server sent (fast path). */
  readonly untouched: number;
}

async function run(c: RawClient, inspector: BackendInspector, sql: string): Promise<Run> {
  await refreshIndex();
  c.query(sql);
  const outs: Buffer[] = [];
  const raw: Frame[] = [];
  let untouched = 0;
  for (;;) {
    const f = await c.frame();
    if (f === null) throw new Error('closed');
    raw.push(f);
    const o = await inspector.inspect(f);
    if (o === f.raw) untouched++;
    outs.push(o);
    if (f.code === 0x5a) break;
  }
  const out = Buffer.concat(outs);
  const framer = new MessageFramer({ startup: false, maxMessageBytes: 1 << 24 });
  framer.push(out);
  const messages: BackendMessage[] = [];
  for (let f = framer.next(); f !== null; f = framer.next()) messages.push(decodeBackend(f));
  return { out, messages, raw, untouched };
}

const TICKET = /cct_[0-9A-Za-z]{28}/;

function field(messages: readonly BackendMessage[], type: 'ErrorResponse' | 'NoticeResponse', code: string) {
  for (const m of messages) if (m.type === type) return m.fields.find(([k]) => k === code)?.[1] ?? null;
  return null;
}

function rowValues(messages: readonly BackendMessage[]): string[][] {
  return messages
    .filter((m): m is Extract<BackendMessage, { type: 'DataRow' }> => m.type === 'DataRow')
    .map((m) => m.values.map((v) => v?.toString('utf8') ?? 'NULL'));
}

beforeAll(async () => {
  admin = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${DB}`);
  const db = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: DB });
  await db.connect();
  await db.query(`
    CREATE TABLE vault_copy (id int PRIMARY KEY, value text UNIQUE, found text, blob bytea);
    INSERT INTO vault_copy VALUES (1, '${CANARY}', '${GHP}', convert_to('${CANARY}', 'UTF8'));
    INSERT INTO vault_copy VALUES (2, 'plain', '${GLPAT}', convert_to('${GHP}', 'UTF8'));
    CREATE TABLE settings (name text, value text);
    INSERT INTO settings VALUES ('aws_secret_access_key', '${AWS_SECRET}'), ('colour', 'blue');
    CREATE TABLE creds (id int, password text);
    INSERT INTO creds VALUES (1, '${PASSWORD}');
    CREATE TABLE "${CANARY}" ("${CANARY}" int NOT NULL, n int CONSTRAINT "${CANARY}_chk" CHECK (n > 0));
  `);
  await db.end();
  home = await makeTestHome();
  ctx = await home.open();
  await ctx.vault.addSecret(
    { name: 'canary', value: Buffer.from(CANARY), allow: ['conn:main'] },
    'admin:test',
  );
  const a = await ctx.agents.create({ name: 'bot' }, 'admin:test');
  agent = await ctx.agents.authenticate(a.key);
}, 60_000);

afterAll(async () => {
  await ctx?.close();
  home?.remove();
  await admin?.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin?.end();
});

describe('backend inspection: messages the issue named', () => {
  it('a failed cast quotes the value in ErrorResponse: replaced by a ticket', async () => {
    const c = await session();
    const r = await run(c, fullInspector(), 'SELECT value::int FROM vault_copy WHERE id = 1');
    expect(r.raw.map((f) => f.raw.toString('latin1')).join('')).toContain(CANARY);
    expectClean(r.out);
    expect(field(r.messages, 'ErrorResponse', 'C')).toBe('22P02');
    expect(field(r.messages, 'ErrorResponse', 'M')).toMatch(TICKET);
    c.close();
  });

  it('a unique violation quotes the value in DETAIL', async () => {
    const c = await session();
    const r = await run(c, fullInspector(), `INSERT INTO vault_copy (id, value) VALUES (9, '${CANARY}')`);
    expectClean(r.out);
    expect(field(r.messages, 'ErrorResponse', 'C')).toBe('23505');
    expect(field(r.messages, 'ErrorResponse', 'D')).toMatch(
      /Key \(value\)=\(cct_[0-9A-Za-z]{28}\) already exists/,
    );
    c.close();
  });

  it('RAISE NOTICE carries the value in a NoticeResponse', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      `DO $$BEGIN RAISE NOTICE 'v=%', (SELECT value FROM vault_copy WHERE id = 1); END$$`,
    );
    expectClean(r.out);
    expect(field(r.messages, 'NoticeResponse', 'M')).toMatch(/^v=cct_/);
    c.close();
  });

  it('set_config(application_name) reports the value in ParameterStatus (and the row)', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      `SELECT set_config('application_name', value, false) FROM vault_copy WHERE id = 1`,
    );
    expect(r.raw.some((f) => f.code === 0x53 && f.raw.includes(CANARY))).toBe(true);
    expectClean(r.out);
    const status = r.messages.find((m) => m.type === 'ParameterStatus');
    expect(status).toMatchObject({ type: 'ParameterStatus', name: 'application_name' });
    expect((status as { value: string }).value).toMatch(TICKET);
    // current_setting reads it back: a row, replaced too.
    const back = await run(c, fullInspector(), `SELECT current_setting('application_name')`);
    expectClean(back.out);
    c.close();
  });

  it('pg_notify sends the value as a NotificationResponse payload', async () => {
    const c = await session();
    await run(c, fullInspector(), 'LISTEN pgout');
    const r = await run(c, fullInspector(), `SELECT pg_notify('pgout', value) FROM vault_copy WHERE id = 1`);
    expectClean(r.out);
    const n = r.messages.find((m) => m.type === 'NotificationResponse') as {
      payload: string;
      channel: string;
    };
    expect(n.channel).toBe('pgout');
    expect(n.payload).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    c.close();
  });

  it('a detector finding in a row (a GitHub token not in the vault) becomes a ticket', async () => {
    const c = await session();
    const r = await run(c, fullInspector(), 'SELECT id, found FROM vault_copy ORDER BY id');
    expectClean(r.out);
    const rows = rowValues(r.messages);
    expect(rows[0]![1]).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(rows[1]![1]).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    // Registered in the vault as found secrets.
    const known = await ctx.vault.knownSecrets();
    expect(known.some((s) => s.value.reveal().toString() === GHP)).toBe(true);
    c.close();
  });

  it('bytea hex output of a vault secret and of a detector finding: hex of a ticket', async () => {
    const c = await session();
    const r = await run(c, fullInspector(), 'SELECT blob FROM vault_copy ORDER BY id');
    expectClean(r.out);
    for (const [v] of rowValues(r.messages)) {
      expect(v).toMatch(/^\\x[0-9a-f]+$/);
      expect(Buffer.from(v!.slice(2), 'hex').toString()).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    }
    c.close();
  });

  it('binary COPY keeps valid field lengths when a value is replaced', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      'COPY (SELECT id, value, blob, found FROM vault_copy ORDER BY id) TO STDOUT (FORMAT binary)',
    );
    expectClean(r.out);
    const data = Buffer.concat(
      r.messages.filter((m) => m.type === 'CopyData').map((m) => (m as { data: Buffer }).data),
    );
    // Parse the whole stream: signature, header, tuples, trailer; every length must add up.
    expect(data.subarray(0, 11).toString('latin1')).toBe('PGCOPY\n\xff\r\n\0');
    let at = 19 + data.readUInt32BE(15);
    const tuples: string[][] = [];
    for (;;) {
      const n = data.readInt16BE(at);
      at += 2;
      if (n === -1) break;
      const t: string[] = [];
      for (let i = 0; i < n; i++) {
        const len = data.readInt32BE(at);
        at += 4;
        t.push(len === -1 ? 'NULL' : data.toString('utf8', at, at + len));
        if (len > 0) at += len;
      }
      tuples.push(t);
    }
    expect(at).toBe(data.length);
    expect(tuples).toHaveLength(2);
    expect(tuples[0]![1]).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(tuples[0]![2]).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(tuples[1]![2]).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    c.close();
  });
});

describe('backend inspection: variants', () => {
  it('RAISE WARNING', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      `DO $$BEGIN RAISE WARNING '%', (SELECT v.found FROM vault_copy v WHERE id = 1); END$$`,
    );
    expectClean(r.out);
    expect(field(r.messages, 'NoticeResponse', 'V')).toBe('WARNING');
    c.close();
  });

  it('RAISE EXCEPTION USING DETAIL and HINT (and the CONTEXT line)', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      `DO $$DECLARE v text := (SELECT value FROM vault_copy WHERE id = 1);
        BEGIN RAISE EXCEPTION 'failed %', v USING DETAIL = 'detail ' || v, HINT = 'hint ' || v,
        SCHEMA = v, TABLE = v, COLUMN = v, CONSTRAINT = v, DATATYPE = v; END$$`,
    );
    expectClean(r.out);
    for (const k of ['M', 'D', 'H', 's', 't', 'c', 'n', 'd'])
      expect(field(r.messages, 'ErrorResponse', k)).toMatch(TICKET);
    c.close();
  });

  it('pg_notify: a detector finding in the payload, and a secret as the channel name', async () => {
    const c = await session();
    await run(c, fullInspector(), `LISTEN "${CANARY}"`);
    const r = await run(c, fullInspector(), `SELECT pg_notify('${CANARY}', '${GLPAT}')`);
    expectClean(r.out);
    const n = r.messages.find((m) => m.type === 'NotificationResponse') as {
      payload: string;
      channel: string;
    };
    expect(n.channel).toMatch(TICKET);
    expect(n.payload).toMatch(TICKET);
    c.close();
  });

  it("bytea decode(secret, 'escape') shown as hex", async () => {
    const c = await session();
    const r = await run(c, fullInspector(), `SELECT decode(value, 'escape') FROM vault_copy WHERE id = 1`);
    expectClean(r.out);
    expect(rowValues(r.messages)[0]![0]).toMatch(/^\\x[0-9a-f]{64}$/);
    c.close();
  });

  it('a secret as a column name: the RowDescription is rewritten', async () => {
    const c = await session();
    const r = await run(c, fullInspector(), `SELECT 1 AS "${CANARY}", 2 AS "${GHP}"`);
    expect(r.raw.some((f) => f.code === 0x54 && f.raw.includes(CANARY))).toBe(true);
    expectClean(r.out);
    const d = r.messages.find(
      (m): m is Extract<BackendMessage, { type: 'RowDescription' }> => m.type === 'RowDescription',
    )!;
    expect(d.fields.map((f) => f.name)).toEqual([
      expect.stringMatching(TICKET),
      expect.stringMatching(TICKET),
    ]);
    expect(d.fields.map((f) => f.typeOid)).toEqual([23, 23]);
    expect(rowValues(r.messages)).toEqual([['1', '2']]);
    c.close();
  });

  it("a secret as an error's schema/table/column and constraint name", async () => {
    const c = await session();
    const r1 = await run(c, fullInspector(), `INSERT INTO "${CANARY}" VALUES (NULL, 1)`);
    expectClean(r1.out);
    expect(field(r1.messages, 'ErrorResponse', 'C')).toBe('23502');
    expect(field(r1.messages, 'ErrorResponse', 'c')).toMatch(TICKET);
    expect(field(r1.messages, 'ErrorResponse', 't')).toMatch(TICKET);
    const r2 = await run(c, fullInspector(), `INSERT INTO "${CANARY}" VALUES (1, -1)`);
    expectClean(r2.out);
    expect(field(r2.messages, 'ErrorResponse', 'C')).toBe('23514');
    expect(field(r2.messages, 'ErrorResponse', 'n')).toMatch(/^cct_[0-9A-Za-z]{28}_chk$/);
    c.close();
  });

  it('hex and base64 text forms in rows (encode(…, hex|base64)), upper-case hex too', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      `SELECT encode(blob, 'hex'), upper(encode(blob, 'hex')), encode(blob, 'base64'), 'x' || value || 'y' FROM vault_copy WHERE id = 1`,
    );
    expect(r.raw.some((f) => f.raw.includes(Buffer.from(CANARY).toString('hex')))).toBe(true);
    expectClean(r.out);
    const [row] = rowValues(r.messages);
    expect(Buffer.from(row![0]!, 'hex').toString()).toMatch(/^cct_/);
    expect(Buffer.from(row![1]!, 'hex').toString()).toMatch(/^cct_/);
    expect(row![3]).toMatch(/^xcct_[0-9A-Za-z]{28}y$/);
    c.close();
  });

  it('text and CSV COPY, with a bytea column (escaped \\\\x in text COPY)', async () => {
    const c = await session();
    for (const format of ['text', 'csv']) {
      const r = await run(c, fullInspector(), `COPY vault_copy TO STDOUT (FORMAT ${format})`);
      expectClean(r.out);
      const lines = r.messages
        .filter((m) => m.type === 'CopyData')
        .map((m) => (m as { data: Buffer }).data.toString());
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(TICKET);
    }
    c.close();
  });

  it('JSON-escaped and URL-encoded forms in rows', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      `SELECT json_build_object('k', value)::text, replace(value, 'Canary', 'Can/ary') FROM vault_copy WHERE id = 1`,
    );
    expectClean(r.out);
    c.close();
  });
});

describe('backend inspection: values found by their key', () => {
  it('a key/value table: the value beside aws_secret_access_key', async () => {
    const c = await session();
    const r = await run(c, fullInspector(), 'SELECT name, value FROM settings ORDER BY name DESC');
    expectClean(r.out);
    expect(rowValues(r.messages)).toEqual([
      ['colour', 'blue'],
      ['aws_secret_access_key', expect.stringMatching(/^cct_[0-9A-Za-z]{28}$/)],
    ]);
    c.close();
  });

  it('a column named password (and the same value under an alias naming it)', async () => {
    const c = await session();
    const r = await run(c, fullInspector(), 'SELECT id, password FROM creds');
    expectClean(r.out);
    expect(rowValues(r.messages)[0]![1]).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    const r2 = await run(c, fullInspector(), `SELECT '${PASSWORD}' AS db_password`);
    expectClean(r2.out);
    c.close();
  });
});

describe('backend inspection: one session, descriptions that change', () => {
  it('reads each statement by its own columns: a keyed column after a plain one of the same length', async () => {
    // The inspector keeps the last description's reading while the bytes repeat. A reading
    // kept across a different description of the same shape (same count, same length)
    // would miss the keyed column and leak the value beside it.
    const c = await session();
    const inspector = fullInspector();
    const plain = 'SELECT id, password AS pa55word FROM creds';
    const keyed = 'SELECT id, password FROM creds';
    for (const sql of [plain, keyed, keyed, plain, keyed]) {
      const r = await run(c, inspector, sql);
      if (sql === keyed) {
        expectClean(r.out);
        expect(rowValues(r.messages)[0]![1]).toMatch(/^cct_[0-9A-Za-z]{28}$/);
      }
    }
    c.close();
  });
});

describe('backend inspection: extended protocol', () => {
  it('binary-format result values (text and bytea) and the ErrorResponse of a bound parameter', async () => {
    const c = await session();
    await refreshIndex();
    const inspector = fullInspector();
    const send = (sql: string, resultFormats: number[]) =>
      c.write(
        Buffer.concat([
          encodeFrontend({ type: 'Parse', name: '', sql, parameterTypes: [] }),
          encodeFrontend({
            type: 'Bind',
            portal: '',
            statement: '',
            parameterFormats: [],
            parameters: [],
            resultFormats,
          }),
          encodeFrontend({ type: 'Describe', kind: 'P', name: '' }),
          encodeFrontend({ type: 'Execute', portal: '', maxRows: 0 }),
          encodeFrontend({ type: 'Sync' }),
        ]),
      );
    const collect = async () => {
      const outs: Buffer[] = [];
      for (;;) {
        const f = await c.frame();
        if (f === null) throw new Error('closed');
        outs.push(await inspector.inspect(f));
        if (f.code === 0x5a) return Buffer.concat(outs);
      }
    };
    send('SELECT value, blob, found FROM vault_copy ORDER BY id', [1]);
    const out = await collect();
    expectClean(out);
    const framer = new MessageFramer({ startup: false, maxMessageBytes: 1 << 24 });
    framer.push(out);
    const rows: Buffer[][] = [];
    for (let f = framer.next(); f !== null; f = framer.next()) {
      const m = decodeBackend(f);
      if (m.type === 'DataRow') rows.push(m.values as Buffer[]);
    }
    expect(rows[0]![0]!.toString()).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(rows[0]![1]!.toString()).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(rows[1]![1]!.toString()).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    send(`SELECT ('${CANARY}' || id)::int FROM vault_copy`, [0]);
    expectClean(await collect());
    c.close();
  });
});

describe('backend inspection: fast path and failure', () => {
  it('frames with no candidate bytes are returned as the same Buffer, undecoded', async () => {
    const c = await session();
    const r = await run(
      c,
      fullInspector(),
      "SELECT g, md5(g::text), '\\x00ff'::bytea FROM generate_series(1, 200) g",
    );
    expect(r.untouched).toBe(r.raw.length);
    c.close();
  });

  it('without the detector inspector chained, a finding fails closed (CC_ERR_PG_MASKING_FAILED)', async () => {
    const c = await session();
    const knownOnly = inspectorWith(createKnownSecretInspector(() => ctx.vault.knownSecrets()));
    await refreshIndex();
    c.query("SELECT 'token ' || 'glpat-Qw3Er5Ty7Ui9Op1As2Dk'");
    let error: unknown = null;
    for (;;) {
      const f = await c.frame();
      if (f === null) break;
      try {
        await knownOnly.inspect(f);
      } catch (e) {
        error = e;
      }
      if (f.code === 0x5a) break;
    }
    expect(error).toMatchObject({ code: 'CC_ERR_PG_MASKING_FAILED' });
    expect(String((error as Error).message)).not.toContain('glpat-');
    c.close();
  });

  it('withheldNotice keeps severity and SQLSTATE only', async () => {
    const c = await session();
    c.query('SELECT value::int FROM vault_copy WHERE id = 1');
    let out: Buffer | null = null;
    for (;;) {
      const f = await c.frame();
      if (f === null) break;
      if (f.code === 0x45) out = withheldNotice(f);
      if (f.code === 0x5a) break;
    }
    expectClean(out!);
    const m = decodeBackend({ code: out![0]!, body: out!.subarray(5), raw: out! });
    expect(m).toEqual({
      type: 'ErrorResponse',
      fields: [
        ['S', 'ERROR'],
        ['V', 'ERROR'],
        ['C', '22P02'],
        ['M', expect.stringContaining('withheld because the statement reads masked columns')],
        ['D', 'CC_ERR_PG_MASKED_ERROR'],
      ],
    });
    c.close();
  });
});

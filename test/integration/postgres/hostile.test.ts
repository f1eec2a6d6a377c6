import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend } from '../../../src/frontends/postgres/protocol/encode.js';
import type { BackendMessage } from '../../../src/frontends/postgres/protocol/messages.js';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';
import { errorCode, errorField, RawClient } from './raw-client.js';

let db: ThrowawayPostgres;
let gw: PgGateway;
let ticket: string;

beforeAll(async () => {
  db = await startThrowawayPostgres();
  const admin = db.direct();
  await admin.connect();
  await admin.query('CREATE TABLE sink (a int, b text)');
  await admin.end();
  gw = await startPgGateway({ maxMessageBytes: 1024 * 1024 });
  const bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', db.password, ['conn:main']);
  await gw.addConnection('main', db.url, { credential: 'dbpw' });
  ticket = await gw.issue('dbpw', bot.ref, ['conn:main']);
}, 120_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
});

/** The gateway still serves a normal session. */
async function stillServing(): Promise<void> {
  const c = await RawClient.open(gw.port);
  const hello = await c.login('bot', ticket, 'main');
  expect(hello.at(-1)).toEqual({ type: 'ReadyForQuery', status: 'I' });
  c.query('SELECT 1');
  const answer = await c.untilReady();
  expect(answer.map((m) => m.type)).toEqual([
    'RowDescription',
    'DataRow',
    'CommandComplete',
    'ReadyForQuery',
  ]);
  c.close();
}

function fatal(messages: readonly BackendMessage[]): {
  code: string | null;
  detail: string | null;
  severity: string | null;
} {
  return {
    code: errorCode(messages),
    detail: errorField(messages, 'D'),
    severity: errorField(messages, 'S'),
  };
}

describe('hostile input', () => {
  it('refuses an oversize startup length before reading it, and closes', async () => {
    const c = await RawClient.open(gw.port);
    const header = Buffer.alloc(8);
    header.writeInt32BE(0x7fffffff);
    header.writeInt32BE(196608, 4);
    c.write(header);
    expect(fatal(await c.untilClosed())).toEqual({
      code: '08P01',
      detail: 'CC_ERR_PG_MESSAGE_TOO_LARGE',
      severity: 'FATAL',
    });
    await stillServing();
  });

  it('answers garbage at startup with a protocol error and a close', async () => {
    for (let i = 0; i < 20; i++) {
      const c = await RawClient.open(gw.port);
      const junk = randomBytes(64);
      junk.writeInt32BE(64); // a plausible length, random contents
      c.write(junk);
      const got = fatal(await c.untilClosed());
      expect(['08P01', '0A000']).toContain(got.code);
      expect(c.closed).toBe(true);
    }
    await stillServing();
  });

  it('closes a connection that sends a truncated startup packet and vanishes', async () => {
    const c = await RawClient.open(gw.port);
    c.write(Buffer.from([0, 0, 0, 80, 0, 3, 0, 0, 0x75]));
    c.close();
    await stillServing();
  });

  it('refuses an oversize typed message after login before allocating it', async () => {
    const c = await RawClient.open(gw.port);
    await c.login('bot', ticket, 'main');
    const header = Buffer.alloc(5);
    header[0] = 0x51;
    header.writeInt32BE(0x7ffffff0, 1);
    c.write(header);
    expect(fatal(await c.untilClosed())).toMatchObject({
      code: '08P01',
      detail: 'CC_ERR_PG_MESSAGE_TOO_LARGE',
    });
    await stillServing();
  });

  it('refuses an unknown message type and a malformed Bind after login', async () => {
    let c = await RawClient.open(gw.port);
    await c.login('bot', ticket, 'main');
    c.write(Buffer.from([0x7a, 0, 0, 0, 4]));
    expect(fatal(await c.untilClosed())).toMatchObject({ code: '08P01', detail: 'CC_ERR_PG_PROTOCOL' });
    c = await RawClient.open(gw.port);
    await c.login('bot', ticket, 'main');
    c.write(encodeFrontend({ type: 'Parse', name: 's', sql: 'SELECT $1::int', parameterTypes: [] }));
    const bind = Buffer.from([0x42, 0, 0, 0, 11, 0, 0x73, 0, 0, 0, 0x7f, 0xff]);
    c.write(bind);
    expect(fatal(await c.untilClosed())).toMatchObject({ code: '08P01', detail: 'CC_ERR_PG_PROTOCOL' });
    await stillServing();
  });

  it('refuses the fast-path FunctionCall message and keeps the session', async () => {
    const c = await RawClient.open(gw.port);
    await c.login('bot', ticket, 'main');
    c.write(encodeFrontend({ type: 'FunctionCall', data: Buffer.from([0, 0, 0, 1, 0, 0, 0, 0, 0, 0]) }));
    const answer = await c.untilReady();
    expect(fatal(answer)).toMatchObject({ code: '0A000', detail: 'CC_ERR_PG_UNSUPPORTED' });
    c.query('SELECT 1');
    expect((await c.untilReady()).at(-1)).toEqual({ type: 'ReadyForQuery', status: 'I' });
    c.close();
  });

  it('survives a client that vanishes in the middle of COPY FROM STDIN', async () => {
    const c = await RawClient.open(gw.port);
    await c.login('bot', ticket, 'main');
    c.query('COPY sink FROM STDIN');
    const started = await c.message();
    expect(started?.type).toBe('CopyInResponse');
    c.write(encodeFrontend({ type: 'CopyData', data: Buffer.from('1\tone\n2\ttw') }));
    c.close();
    await stillServing();
    const admin = db.direct();
    await admin.connect();
    // The abandoned COPY never committed.
    expect((await admin.query('SELECT count(*)::int AS n FROM sink')).rows).toEqual([{ n: 0 }]);
    await admin.end();
  });

  it('refuses data pipelined after SSLRequest (no plaintext injection into the TLS session)', async () => {
    const c = await RawClient.open(gw.port);
    const ssl = Buffer.alloc(8);
    ssl.writeInt32BE(8);
    ssl.writeInt32BE(80877103, 4);
    c.write(Buffer.concat([ssl, Buffer.from([0, 0, 0, 8, 0, 3, 0, 0])]));
    await c.untilClosed();
    const raw = Buffer.concat(c.received);
    expect(raw.includes(Buffer.from('CC_ERR_PG_PROTOCOL'))).toBe(true);
    expect(raw[0]).not.toBe(0x53); // never answered 'S'
    await stillServing();
  });
});

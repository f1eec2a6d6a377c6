import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostBindings } from '../../../src/frontends/http/host-bindings.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

/** Admin URL of a server where we may create databases (as test/store/postgres.test.ts). */
const ADMIN_URL = process.env.COATCHECK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const SECRET = 'replica-canary-0f1e2d3c4b5a';

async function admin<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

describe('revocation across replicas (PostgreSQL LISTEN/NOTIFY)', () => {
  const dbName = `coatcheck_http_${randomBytes(6).toString('hex')}`;
  let up: Upstream;
  let a: Gateway;
  let b: Gateway;
  let agent: { key: string; ref: string };

  beforeAll(async () => {
    await admin((c) => c.query(`CREATE DATABASE ${dbName}`));
    const url = new URL(ADMIN_URL);
    url.pathname = `/${dbName}`;
    const masterKey = randomBytes(32).toString('base64');
    up = await startUpstream();
    a = await startGateway({ databaseUrl: url.toString(), masterKey });
    b = await startGateway({ databaseUrl: url.toString(), masterKey, fromHome: a.dir });
    agent = await a.createAgent('replicated');
    await a.addSecret('rep', SECRET, ['svc']);
    await a.addConnection('svc', up.url);
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await up?.close();
    await admin((c) => c.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`));
  });

  const via = async (gw: Gateway, ticket: string, path = '/x') => {
    const res = await request(`${gw.url}/c/svc${path}`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
    });
    const text = await res.body.text();
    return {
      status: res.statusCode,
      code: res.statusCode >= 400 ? (JSON.parse(text).error.code as string) : null,
    };
  };

  it('a ticket revoked on one replica is refused by the other within a second', async () => {
    const ticket = await a.issue('rep', agent.ref);
    // B exchanges it first, so the ticket sits in B's cache when A revokes it.
    expect(await via(b, ticket)).toEqual({ status: 200, code: null });
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
    await a.ctx.vault.revokeTicket(ticket, 'admin:test');
    await expect
      .poll(() => via(b, ticket), { timeout: 1000, interval: 50 })
      .toEqual({ status: 403, code: 'CC_ERR_TICKET_REVOKED' });
  });

  it('ends a live stream on one replica when the ticket is revoked on the other', async () => {
    const ticket = await a.issue('rep', agent.ref);
    let timer: NodeJS.Timeout | undefined;
    up.handle('/stream', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      timer = setInterval(() => res.write('data: tick\n\n'), 10);
      res.on('close', () => clearInterval(timer));
    });
    const res = await request(`${b.url}/c/svc/stream`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
    });
    expect(res.statusCode).toBe(200);
    let revoked = false;
    const reading = (async () => {
      for await (const _chunk of res.body) {
        if (!revoked) {
          revoked = true;
          await a.ctx.vault.revokeTicket(ticket, 'admin:test');
        }
      }
    })();
    await expect(reading).rejects.toThrow();
    clearInterval(timer);
    await b.http.recorder.flush();
    const [latest] = await b.ctx.store.listSessions({ limit: 1 });
    expect(latest?.outcome).toBe('CC_ERR_TICKET_REVOKED');
  });
  it("a secret's host added, changed or removed on one replica binds (or not) on the other's forward proxy within a second", async () => {
    const bindings = createHostBindings(b.ctx.vault, b.ctx.connections, b.ctx.store);
    try {
      const bound = async (host: string) => (await bindings.resolve(host, 443, 'https')).bound;
      expect(await bound('replicated.example.com')).toBe(false);
      await a.addSecret('rep-host', `${SECRET}-h`, ['replicated.example.com']);
      await expect.poll(() => bound('replicated.example.com'), { timeout: 1000, interval: 20 }).toBe(true);
      await a.ctx.vault.updateSecret('rep-host', { allow: ['moved.example.com'] }, 'admin:test');
      await expect.poll(() => bound('replicated.example.com'), { timeout: 1000, interval: 20 }).toBe(false);
      expect(await bound('moved.example.com')).toBe(true);
      await a.ctx.vault.removeSecret('rep-host', 'admin:test');
      await expect.poll(() => bound('moved.example.com'), { timeout: 1000, interval: 20 }).toBe(false);
    } finally {
      bindings.close();
    }
  });
});

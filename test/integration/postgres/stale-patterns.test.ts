import { join } from 'node:path';
import Database from 'better-sqlite3';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgGateway, startPgGateway } from './harness.js';

/**
 * The PostgreSQL front-end looks for the vault's secrets in SQL text and in everything the
 * server sends, with a pattern set rebuilt when secrets change. When the rebuild fails (here
 * a secret's stored value stops authenticating, as a damaged row or a missing key would
 * make it), the set in hand may lack a secret added since: sessions must be refused until a
 * rebuild succeeds, not served with the old set.
 */

const CANARY = ['stale', 'patterns', 'Canary', '9Qm4Lx'].join('-');
const UPSTREAM = 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable';

describe('PostgreSQL front-end when the secrets to look for cannot be loaded', () => {
  let gw: PgGateway;
  let ticket: string;
  const clients: pg.Client[] = [];
  const open = async () => {
    const client = gw.client('bot', ticket, 'main');
    client.on('error', () => undefined);
    clients.push(client);
    await client.connect();
    return client;
  };
  const selectOne = async (client: pg.Client) => (await client.query('SELECT 1 AS n')).rows;
  const secretRow = () => {
    const db = new Database(join(gw.dir, 'coatcheck.db'));
    try {
      return db.prepare("SELECT id, ciphertext FROM secrets WHERE name = 'other'").get() as {
        id: string;
        ciphertext: Buffer;
      };
    } finally {
      db.close();
    }
  };
  const setCiphertext = (id: string, ciphertext: Buffer) => {
    const db = new Database(join(gw.dir, 'coatcheck.db'));
    try {
      // Behind the gateway's back, with a `resync` in the change log (ADR 0031) so that it
      // reloads every secret (a raw edit alone is not heard, as on PostgreSQL).
      db.transaction(() => {
        db.prepare('UPDATE secrets SET ciphertext = ? WHERE id = ?').run(ciphertext, id);
        db.prepare('INSERT INTO store_changes (origin, at, payload) VALUES (?, ?, ?)').run(
          'test',
          Date.now(),
          JSON.stringify({ type: 'resync' }),
        );
      })();
    } finally {
      db.close();
    }
  };

  beforeAll(async () => {
    gw = await startPgGateway();
    // Trust authentication upstream: the password is injected but not checked.
    await gw.addSecret('dbpw', 'trust-ignores-this-0a1b2c3d', ['conn:main']);
    await gw.addSecret('other', CANARY, ['conn:main']);
    await gw.addConnection('main', UPSTREAM, { credential: 'dbpw' });
    const agent = await gw.createAgent('bot');
    ticket = await gw.issue('dbpw', agent.ref, ['conn:main']);
  }, 60_000);

  afterAll(async () => {
    for (const client of clients) await client.end().catch(() => undefined);
    await gw?.close();
  });

  it('ends an open session and refuses new ones while stale, and serves again once the set loads', async () => {
    const before = await open();
    expect(await selectOne(before)).toEqual([{ n: 1 }]);
    const row = secretRow();
    // Written by another process: the gateway reloads the set and cannot decrypt it.
    setCiphertext(row.id, Buffer.alloc(row.ciphertext.length, 7));
    let refusal: Error | null = null;
    for (let i = 0; i < 100 && refusal === null; i++) {
      try {
        await selectOne(before);
        await new Promise((resolve) => setTimeout(resolve, 50));
      } catch (error) {
        refusal = error as Error;
      }
    }
    expect(refusal?.message).toMatch(
      /could not be loaded|CC_ERR_GATEWAY_INSPECTION_FAILED|does not authenticate/,
    );
    expect(refusal?.message).not.toContain(CANARY);
    await expect(open().then(selectOne)).rejects.toThrow();

    setCiphertext(row.id, row.ciphertext);
    let rows: unknown = null;
    for (let i = 0; i < 100 && rows === null; i++) {
      try {
        rows = await selectOne(await open());
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    expect(rows).toEqual([{ n: 1 }]);
    expect(gw.logs()).not.toContain(CANARY);
  }, 60_000);
});

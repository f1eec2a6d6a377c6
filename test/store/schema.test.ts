/**
 * One store schema (ADR 0022): both databases, migrated from nothing, end up with exactly
 * the tables and columns `src/store/schema.ts` maps, each column of the type its kind
 * names, and the shared migration list renders the same versions for both.
 */
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { Client } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS } from '../../src/store/migrations.js';
import { openPostgresStore } from '../../src/store/postgres-store.js';
import { type ColumnKind, TABLES } from '../../src/store/schema.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';

const ADMIN_URL = process.env.COATCHECK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const created: string[] = [];

async function admin<T>(url: string, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

afterAll(async () => {
  await admin(ADMIN_URL, async (c) => {
    for (const name of created) await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
});

/** The declared type each column kind must have, per database. */
const SQLITE_TYPE: Record<ColumnKind, string> = {
  text: 'TEXT',
  int: 'INTEGER',
  int64: 'INTEGER',
  bytes: 'BLOB',
  json: 'TEXT',
  jsonText: 'TEXT',
};
const POSTGRES_TYPE: Record<ColumnKind, string> = {
  text: 'text',
  int: 'integer',
  int64: 'bigint',
  bytes: 'bytea',
  json: 'jsonb',
  jsonText: 'text',
};

describe('one store schema', () => {
  it('renders one migration list for both databases, version for version', () => {
    expect(SQLITE_MIGRATIONS.map((m) => [m.version, m.name])).toEqual(
      POSTGRES_MIGRATIONS.map((m) => [m.version, m.name]),
    );
    // Versions strictly increase from 1 with no gap: a merge that reused a number shows here.
    expect(SQLITE_MIGRATIONS.map((m) => m.version)).toEqual(SQLITE_MIGRATIONS.map((_, i) => i + 1));
  });

  it('gives SQLite and PostgreSQL exactly the mapped columns, each of its kind', async () => {
    const file = `/tmp/coatcheck-schema-${randomBytes(6).toString('hex')}.db`;
    const sqlite = await openSqliteStore({ path: file });
    await sqlite.migrate();
    await sqlite.close();
    const db = new Database(file, { readonly: true });

    const name = `coatcheck_test_${randomBytes(6).toString('hex')}`;
    await admin(ADMIN_URL, (c) => c.query(`CREATE DATABASE ${name}`));
    created.push(name);
    const url = new URL(ADMIN_URL);
    url.pathname = `/${name}`;
    const pg = await openPostgresStore({ url: url.toString() });
    await pg.migrate();
    await pg.close();

    try {
      await admin(url.toString(), async (client) => {
        for (const table of TABLES) {
          const sqliteColumns = (
            db.prepare(`PRAGMA table_info(${table.name})`).all() as { name: string; type: string }[]
          )
            .map((c) => [c.name, c.type])
            .sort();
          const pgColumns = (
            await client.query(
              'SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1',
              [table.name],
            )
          ).rows
            .map((c) => [String(c.column_name), String(c.data_type)])
            .sort();
          const expectedSqlite = table.columns.map(([column, kind]) => [column, SQLITE_TYPE[kind]]).sort();
          const expectedPg = table.columns.map(([column, kind]) => [column, POSTGRES_TYPE[kind]]).sort();
          expect({ table: table.name, columns: sqliteColumns }).toEqual({
            table: table.name,
            columns: expectedSqlite,
          });
          expect({ table: table.name, columns: pgColumns }).toEqual({
            table: table.name,
            columns: expectedPg,
          });
        }
      });
    } finally {
      db.close();
    }
  });
});

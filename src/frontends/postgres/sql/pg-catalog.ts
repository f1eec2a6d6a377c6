import type { ConnectionOptions } from 'node:tls';
import pg from 'pg';
import { CoatcheckError } from '../../../core/errors.js';
import type { CatalogFunction, CatalogRelation, LineageCatalog, RelationKind } from './lineage.js';

/**
 * The upstream's catalog, read over a connection of its own (the relay's connection is
 * busy relaying): relations by name and OID with their columns and view definitions,
 * functions by name, and the column names in use. Answers are cached (bounded LRU);
 * `invalidate()` after DDL drops them all. A failed lookup throws, and the relay refuses
 * the statement (fail closed).
 */

export interface PgCatalogOptions {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password?: string;
  readonly database: string;
  readonly ssl?: boolean | ConnectionOptions;
  /** Cached relations (and as many names and functions). Default 1000. */
  readonly capacity?: number;
  /** Per catalog query. Default 5000 ms. */
  readonly timeoutMs?: number;
}

export interface PgCatalog extends LineageCatalog {
  /** Forget everything cached (after DDL, or when the relay sees a relation change). */
  invalidate(): void;
  close(): Promise<void>;
  /** Catalog queries run so far (tests and metrics). */
  readonly queries: number;
}

const KINDS: Record<string, RelationKind> = {
  r: 'table',
  p: 'partitioned',
  v: 'view',
  m: 'matview',
  f: 'foreign',
};

/** Most candidates read for one name (one per schema). */
const MAX_CANDIDATES = 64;
/** Most distinct column names read for `allColumnNames`. */
const MAX_COLUMN_NAMES = 100_000;

const RELATION_SQL = `
  SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
    CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS definition,
    coalesce((SELECT json_agg(json_build_array(a.attnum, a.attname) ORDER BY a.attnum)
      FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]') AS columns
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace`;

class Lru<K, V> {
  readonly #map = new Map<K, V>();
  readonly #capacity: number;
  constructor(capacity: number) {
    this.#capacity = capacity;
  }
  get(k: K): V | undefined {
    const v = this.#map.get(k);
    if (v !== undefined) {
      this.#map.delete(k);
      this.#map.set(k, v);
    }
    return v;
  }
  set(k: K, v: V): void {
    this.#map.delete(k);
    if (this.#map.size >= this.#capacity) this.#map.delete(this.#map.keys().next().value!);
    this.#map.set(k, v);
  }
  clear(): void {
    this.#map.clear();
  }
}

interface Row {
  oid: string;
  schema: string;
  name: string;
  kind: string;
  definition: string | null;
  columns: Array<[number, string]>;
}

function relationOf(r: Row): CatalogRelation {
  return {
    oid: Number(r.oid),
    schema: r.schema,
    name: r.name,
    kind: KINDS[r.kind] ?? 'other',
    definition: r.definition,
    columns: r.columns.map(([attnum, name]) => ({ attnum, name })),
  };
}

export function createPgCatalog(options: PgCatalogOptions): PgCatalog {
  const capacity = options.capacity ?? 1000;
  const byOid = new Lru<number, CatalogRelation | null>(capacity);
  const byName = new Lru<string, readonly number[]>(capacity);
  const functions = new Lru<string, readonly CatalogFunction[]>(capacity);
  let columnNames: readonly string[] | null = null;
  let client: pg.Client | null = null;
  let connecting: Promise<pg.Client> | null = null;
  let generation = 0;
  let queries = 0;

  const connect = (): Promise<pg.Client> => {
    if (client !== null) return Promise.resolve(client);
    connecting ??= (async () => {
      const c = new pg.Client({
        host: options.host,
        port: options.port,
        user: options.user,
        password: options.password,
        database: options.database,
        ssl: options.ssl,
        application_name: 'coatcheck-catalog',
        statement_timeout: options.timeoutMs ?? 5000,
        connectionTimeoutMillis: options.timeoutMs ?? 5000,
      });
      c.on('error', () => {
        if (client === c) client = null;
      });
      try {
        await c.connect();
      } catch (cause) {
        throw new CoatcheckError(
          'CC_ERR_PG_UPSTREAM_UNREACHABLE',
          'coatcheck: the catalog connection to the upstream failed, so column lineage cannot be established',
          { cause },
        );
      } finally {
        connecting = null;
      }
      client = c;
      return c;
    })();
    return connecting;
  };

  const query = async <T>(sql: string, params: unknown[]): Promise<T[]> => {
    const c = await connect();
    queries++;
    try {
      return (await c.query(sql, params)).rows as T[];
    } catch (cause) {
      // A broken connection is replaced on the next lookup.
      if (client === c) {
        client = null;
        c.end().catch(() => undefined);
      }
      throw new CoatcheckError(
        'CC_ERR_PG_UPSTREAM_UNREACHABLE',
        'coatcheck: a catalog lookup on the upstream failed, so column lineage cannot be established',
        { cause },
      );
    }
  };

  const remember = (rows: Row[], mine: number): CatalogRelation[] => {
    const out = rows.map(relationOf);
    if (mine === generation) for (const r of out) byOid.set(r.oid, r);
    return out;
  };

  return {
    get generation() {
      return generation;
    },
    get queries() {
      return queries;
    },
    async relationsNamed(schema, name) {
      const key = `${schema ?? ''}\0${name}`;
      const oids = byName.get(key);
      if (oids !== undefined) {
        const cached = oids.map((o) => byOid.get(o));
        if (cached.every((r) => r !== undefined && r !== null)) return cached as CatalogRelation[];
      }
      const mine = generation;
      const rows = await query<Row>(
        `${RELATION_SQL} WHERE c.relname = $1 AND ($2::text IS NULL OR n.nspname = $2) ORDER BY n.nspname LIMIT ${MAX_CANDIDATES}`,
        [name, schema],
      );
      const out = remember(rows, mine);
      if (mine === generation)
        byName.set(
          key,
          out.map((r) => r.oid),
        );
      return out;
    },
    async relationByOid(oid) {
      const hit = byOid.get(oid);
      if (hit !== undefined) return hit;
      const mine = generation;
      const rows = await query<Row>(`${RELATION_SQL} WHERE c.oid = $1::oid`, [oid]);
      const out = remember(rows, mine)[0] ?? null;
      if (out === null && mine === generation) byOid.set(oid, null);
      return out;
    },
    async functionsNamed(schema, name) {
      const key = `${schema ?? ''}\0${name}`;
      const hit = functions.get(key);
      if (hit !== undefined) return hit;
      const mine = generation;
      const rows = await query<{ schema: string; rel: string }>(
        `SELECT n.nspname AS schema, t.typrelid::int8 AS rel
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_type t ON t.oid = p.prorettype
          WHERE p.proname = $1 AND ($2::text IS NULL OR n.nspname = $2) LIMIT ${MAX_CANDIDATES}`,
        [name, schema],
      );
      const out = rows.map((r) => ({ schema: r.schema, returnsRelation: Number(r.rel) }));
      if (mine === generation) functions.set(key, out);
      return out;
    },
    async allColumnNames() {
      if (columnNames !== null) return columnNames;
      const mine = generation;
      const rows = await query<{ attname: string }>(
        `SELECT DISTINCT a.attname FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
          LIMIT ${MAX_COLUMN_NAMES}`,
        [],
      );
      const out = rows.map((r) => r.attname);
      if (mine === generation) columnNames = out;
      return out;
    },
    invalidate() {
      generation++;
      byOid.clear();
      byName.clear();
      functions.clear();
      columnNames = null;
    },
    async close() {
      const c = client ?? (connecting === null ? null : await connecting.catch(() => null));
      client = null;
      await c?.end().catch(() => undefined);
    },
  };
}

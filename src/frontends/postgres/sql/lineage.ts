import { parseSync } from 'libpg-query';
import type { FieldDescription } from '../protocol/messages.js';

/**
 * Column masking by lineage, not by name. For each statement, the parse tree (libpg_query)
 * and the upstream's catalog tell which output columns derive from a masked base column
 * (a table column whose name matches a mask pattern), or from a whole row that holds one:
 * aliases, expressions, casts, aggregates, whole-row references, `*`, CTEs, subqueries,
 * set operations, views (followed through their definitions), RETURNING, cursors and
 * prepared statements. What cannot be established over a relation that has masked columns
 * is refused; what is merely unknown is masked. `loadParser()` must have resolved first.
 *
 * Pure apart from the catalog lookups; the relay (client-session.ts) calls it, see docs/frontends/postgres.md.
 */

export type RelationKind = 'table' | 'partitioned' | 'view' | 'matview' | 'foreign' | 'other';

export interface CatalogColumn {
  readonly attnum: number;
  readonly name: string;
}

export interface CatalogRelation {
  readonly oid: number;
  readonly schema: string;
  readonly name: string;
  readonly kind: RelationKind;
  /** Live user columns (attnum > 0, not dropped), in attnum order. */
  readonly columns: readonly CatalogColumn[];
  /** `pg_get_viewdef` of a view or materialized view; null otherwise. */
  readonly definition: string | null;
}

export interface CatalogFunction {
  readonly schema: string;
  /** The relation a function's result rows are (`RETURNS SETOF users`), or 0. */
  readonly returnsRelation: number;
}

/** What lineage needs from the upstream's catalog (see `createPgCatalog`). */
export interface LineageCatalog {
  /** Relations named `name`, in `schema` or (unqualified) in any schema: the session's search_path is not known. */
  relationsNamed(schema: string | null, name: string): Promise<readonly CatalogRelation[]>;
  relationByOid(oid: number): Promise<CatalogRelation | null>;
  /** Functions named `name` (in `schema`, or in any schema when unqualified). */
  functionsNamed(schema: string | null, name: string): Promise<readonly CatalogFunction[]>;
  /** Column names of every user relation (to know whether any column is masked at all). */
  allColumnNames(): Promise<readonly string[]>;
  /**
   * Changes whenever cached answers are dropped (`invalidate()`); results computed under
   * one generation are reused only within it. Absent: results are never cached.
   */
  readonly generation?: number;
}

/** One statement's output plan. */
export interface StatementLineage {
  /** Parse-tree node name (`SelectStmt`, `FetchStmt`, ...). */
  readonly statement: string;
  /** Per output column: masked. Null: the shape is unknown (see `maskAll`). */
  readonly columns: readonly boolean[] | null;
  /** Rows of unknown shape that may hold masked values: mask every column. */
  readonly maskAll: boolean;
  /** Relations read (OID → masked flag per attnum), for RowDescription's table and column. */
  readonly relations: ReadonlyMap<number, ReadonlySet<number>>;
  /**
   * This statement reads a masked column somewhere (WHERE included; for FETCH and EXECUTE,
   * the cursor's or prepared statement's query): withhold its errors and notices.
   */
  readonly touchesMasked: boolean;
}

export type LineageResult =
  | {
      readonly ok: true;
      /** One per statement of the query, in order (a simple Query may hold several). */
      readonly statements: readonly StatementLineage[];
      /** The query reads a masked column somewhere (WHERE included): withhold its errors and notices. */
      readonly touchesMasked: boolean;
    }
  | { readonly ok: false; readonly code: 'CC_ERR_PG_MASK_LINEAGE'; readonly message: string };

class LineageRefusal extends Error {}

/** Deepest parse tree (or chain of views) followed; deeper is refused. */
const MAX_DEPTH = 200;
const MAX_VIEW_DEPTH = 16;
/** Statement kinds whose lineage depends only on their text and the catalog. */
const CACHEABLE = new Set(['SelectStmt', 'InsertStmt', 'UpdateStmt', 'DeleteStmt']);
const MAX_CACHED_RESULTS = 1000;
const MAX_CACHED_SQL = 16 * 1024;
/** Cursors and prepared statements remembered per session. */
const MAX_NAMED = 1000;

interface Col {
  readonly name: string;
  readonly masked: boolean;
}

interface Entry {
  /** The name the entry is referred to by (alias, else relation name). */
  readonly alias: string;
  readonly columns: readonly Col[];
  /** Columns unknown (a function of unknown result shape): any reference is `opaqueMasked`. */
  readonly opaque: boolean;
  readonly opaqueMasked: boolean;
}

interface Scope {
  readonly entries: Entry[];
  readonly ctes: Map<string, Col[] | null>;
  readonly parent: Scope | null;
}

interface Output {
  readonly columns: Col[] | null;
  /** Unknown shape that may carry masked values. */
  readonly maskAll: boolean;
}

type Node = Record<string, unknown>;

/** Catalogs that hold sample values of columns (most common values, histograms). */
const STATISTICS = new Set(
  ['pg_statistic', 'pg_stats', 'pg_stats_ext', 'pg_stats_ext_exprs', 'pg_statistic_ext_data'].map(
    (n) => `pg_catalog.${n}`,
  ),
);

/** Built-in functions that run SQL given as text, or read a relation or cursor named by a value. */
const RUNS_SQL_TEXT =
  /^(?:query_to_xml|query_to_xmlschema|query_to_xml_and_xmlschema|table_to_xml|table_to_xmlschema|table_to_xml_and_xmlschema|cursor_to_xml|cursor_to_xmlschema|schema_to_xml|schema_to_xmlschema|schema_to_xml_and_xmlschema|database_to_xml|database_to_xmlschema|database_to_xml_and_xmlschema|ts_stat|ts_rewrite|pg_read_file|pg_read_binary_file|lo_import|lo_export)$/i;

/** Built-ins whose arguments reach the client outside the result, or are stored to be read back unmasked. */
const SIDE_CHANNEL =
  /^(?:set_config|pg_notify|setval|lo_from_bytea|lo_put|lowrite|pg_logical_emit_message|pg_stat_statements_reset)$/i;

/** The first pass over a recursive CTE: its self-reference is taken as unmasked. */
const RECURSIVE_START: Col[] = [];

const BUILTIN_SCHEMAS = new Set(['pg_catalog', 'information_schema']);

function str(n: unknown): string {
  const s = (n as { String?: { sval?: string } } | undefined)?.String?.sval;
  return typeof s === 'string' ? s : '';
}

function one(n: unknown): [string, Node] | null {
  if (n === null || typeof n !== 'object' || Array.isArray(n)) return null;
  const e = Object.entries(n as Node);
  if (e.length !== 1) return null;
  const [k, v] = e[0]!;
  return /^[A-Z]/.test(k) && v !== null && typeof v === 'object' ? [k, v as Node] : null;
}

function list(n: unknown): unknown[] {
  return Array.isArray(n) ? n : [];
}

function anyMasked(cols: readonly Col[] | null): boolean {
  return cols?.some((c) => c.masked) ?? false;
}

/** One analysis of one query text (state for a single `analyze` call). */
class Analysis {
  touches = false;
  readonly relations = new Map<number, Set<number>>();
  readonly #tracker: LineageTracker;
  #maskedExist: boolean | null = null;

  readonly #masked: (name: string) => boolean;

  constructor(tracker: LineageTracker, masked: (name: string) => boolean) {
    this.#tracker = tracker;
    this.#masked = masked;
  }

  get catalog(): LineageCatalog {
    return this.#tracker.catalog;
  }

  masked(name: string): boolean {
    return this.#masked(name);
  }

  async maskedExist(): Promise<boolean> {
    this.#maskedExist ??= (await this.catalog.allColumnNames()).some((n) => this.masked(n));
    return this.#maskedExist;
  }

  refuse(message: string): never {
    throw new LineageRefusal(message);
  }

  // ---- relations ------------------------------------------------------------------

  async relationColumns(rel: CatalogRelation, viewDepth: number): Promise<Col[]> {
    let cols: Col[];
    if ((rel.kind === 'view' || rel.kind === 'matview') && rel.definition !== null) {
      if (viewDepth >= MAX_VIEW_DEPTH)
        this.refuse(`view ${rel.schema}.${rel.name} is nested more than ${MAX_VIEW_DEPTH} levels deep`);
      const out = await this.viewOutput(rel, viewDepth + 1);
      cols = rel.columns.map((c, i) => ({
        name: c.name,
        masked: this.masked(c.name) || out.maskAll || (out.columns?.[i]?.masked ?? anyMasked(out.columns)),
      }));
    } else {
      cols = rel.columns.map((c) => ({ name: c.name, masked: this.masked(c.name) }));
    }
    const set = new Set<number>();
    rel.columns.forEach((c, i) => {
      if (cols[i]!.masked) set.add(c.attnum);
    });
    this.relations.set(rel.oid, set);
    return cols;
  }

  async viewOutput(rel: CatalogRelation, viewDepth: number): Promise<Output> {
    let tree: { stmts?: Array<{ stmt: Node }> };
    try {
      tree = parseSync(rel.definition!);
    } catch {
      return this.refuse(`the definition of view ${rel.schema}.${rel.name} could not be parsed`);
    }
    const stmt = one(tree.stmts?.[0]?.stmt);
    if (stmt === null || stmt[0] !== 'SelectStmt')
      this.refuse(`the definition of view ${rel.schema}.${rel.name} is not a query`);
    return this.select(stmt[1], rootScope(), 0, viewDepth);
  }

  async rangeVar(n: Node, scope: Scope, viewDepth: number): Promise<Entry> {
    const schema = typeof n.schemaname === 'string' ? n.schemaname : null;
    const name = typeof n.relname === 'string' ? n.relname : '';
    const alias = (n.alias as Node | undefined) ?? null;
    const aliasName = typeof alias?.aliasname === 'string' ? alias.aliasname : name;
    const rename = list(alias?.colnames).map(str);
    const apply = (cols: Col[]): Col[] =>
      cols.map((c, i) => (i < rename.length ? { name: rename[i]!, masked: c.masked } : c));
    if (schema === null) {
      for (let s: Scope | null = scope; s !== null; s = s.parent) {
        if (s.ctes.has(name)) {
          const cols = s.ctes.get(name)!;
          if (cols === RECURSIVE_START)
            return { alias: aliasName, columns: [], opaque: true, opaqueMasked: false };
          if (cols === null) return { alias: aliasName, columns: [], opaque: true, opaqueMasked: true };
          return { alias: aliasName, columns: apply(cols), opaque: false, opaqueMasked: false };
        }
      }
    }
    const found = await this.catalog.relationsNamed(schema, name);
    if (found.length === 0) {
      if (!(await this.maskedExist()))
        return { alias: aliasName, columns: [], opaque: true, opaqueMasked: false };
      this.refuse(
        `relation ${schema === null ? name : `${schema}.${name}`} is not visible to the gateway's catalog (a temporary table, or it does not exist), so the lineage of its columns cannot be established`,
      );
    }
    // Unqualified: the session's search_path decides, and the gateway does not know it.
    // pg_catalog is searched first; otherwise every candidate must agree on what is masked.
    if (found.some((r) => STATISTICS.has(`${r.schema}.${r.name}`)) && (await this.maskedExist()))
      this.refuse(`${name} holds sample values of every column, masked ones included`);
    let candidates = found;
    if (schema === null && found.some((r) => r.schema === 'pg_catalog'))
      candidates = found.filter((r) => r.schema === 'pg_catalog');
    const resolved = await Promise.all(candidates.map((r) => this.relationColumns(r, viewDepth)));
    if (resolved.length > 1) {
      const masks = resolved.map((cols) => cols.map((c) => `${c.name}:${c.masked}`).join(','));
      if (resolved.some(anyMasked) && new Set(masks).size > 1)
        this.refuse(
          `relation name ${name} exists in several schemas and one of them has masked columns; qualify it with its schema`,
        );
    }
    return { alias: aliasName, columns: apply(resolved[0]!), opaque: false, opaqueMasked: false };
  }

  async functionIsUser(funcname: unknown[]): Promise<boolean> {
    const parts = funcname.map(str);
    const name = parts.at(-1) ?? '';
    const schema = parts.length > 1 ? parts.at(-2)! : null;
    if (schema !== null && BUILTIN_SCHEMAS.has(schema)) return false;
    const fns = await this.catalog.functionsNamed(schema, name);
    return fns.length === 0 || fns.some((f) => !BUILTIN_SCHEMAS.has(f.schema));
  }

  async fromItem(item: unknown, scope: Scope, depth: number, viewDepth: number): Promise<Entry[]> {
    if (depth > MAX_DEPTH) this.refuse('the statement is nested too deeply to trace');
    const node = one(item);
    if (node === null) return [];
    const [kind, n] = node;
    const alias = (n.alias as Node | undefined) ?? null;
    const aliasName = typeof alias?.aliasname === 'string' ? alias.aliasname : '';
    const rename = list(alias?.colnames).map(str);
    const renamed = (cols: Col[]): Col[] =>
      cols.map((c, i) => (i < rename.length ? { name: rename[i]!, masked: c.masked } : c));
    switch (kind) {
      case 'RangeVar':
        return [await this.rangeVar(n, scope, viewDepth)];
      case 'RangeSubselect': {
        // LATERAL subqueries see the entries before them.
        const out = await this.query(n.subquery, scope, depth + 1, viewDepth);
        if (out.columns === null)
          return [{ alias: aliasName, columns: [], opaque: true, opaqueMasked: out.maskAll }];
        return [{ alias: aliasName, columns: renamed(out.columns), opaque: false, opaqueMasked: false }];
      }
      case 'RangeFunction': {
        let masked = false;
        let returns = 0;
        for (const f of list(n.functions)) {
          const items = list((f as { List?: { items?: unknown[] } }).List?.items);
          const call = one(items[0]);
          if (await this.expr(items[0], scope, depth + 1, viewDepth)) masked = true;
          if (call?.[0] === 'FuncCall' && (await this.functionIsUser(list(call[1].funcname)))) {
            if (await this.maskedExist()) masked = true;
            const parts = list(call[1].funcname).map(str);
            const fns = await this.catalog.functionsNamed(
              parts.length > 1 ? parts.at(-2)! : null,
              parts.at(-1)!,
            );
            returns = fns.find((x) => x.returnsRelation !== 0)?.returnsRelation ?? 0;
          }
        }
        if (returns !== 0 && list(n.functions).length === 1) {
          const rel = await this.catalog.relationByOid(returns);
          if (rel !== null) {
            const cols = (await this.relationColumns(rel, viewDepth)).map((c) => ({
              name: c.name,
              masked: c.masked || masked,
            }));
            return [
              {
                alias: aliasName || firstFunctionName(n),
                columns: renamed(cols),
                opaque: false,
                opaqueMasked: false,
              },
            ];
          }
        }
        if (rename.length > 0 && n.ordinality !== true && list(n.functions).length === 1)
          return [
            {
              alias: aliasName,
              columns: rename.map((name) => ({ name, masked })),
              opaque: false,
              opaqueMasked: false,
            },
          ];
        return [
          { alias: aliasName || firstFunctionName(n), columns: [], opaque: true, opaqueMasked: masked },
        ];
      }
      case 'JoinExpr': {
        const left = await this.fromItem(n.larg, scope, depth + 1, viewDepth);
        const inner: Scope = { entries: [...scope.entries, ...left], ctes: scope.ctes, parent: scope.parent };
        const right = await this.fromItem(n.rarg, inner, depth + 1, viewDepth);
        const both: Scope = { entries: [...inner.entries, ...right], ctes: scope.ctes, parent: scope.parent };
        await this.expr(n.quals, both, depth + 1, viewDepth);
        const using = list(n.usingClause).map(str);
        if (using.length === 0 && aliasName === '') return [...left, ...right];
        // USING columns come first, once; a join alias names the whole joined row.
        const flat = (es: Entry[]) => es.filter((e) => !isHidden(e)).flatMap((e) => e.columns);
        const opaque = [...left, ...right].some((e) => e.opaque);
        const merged: Col[] = using.map((u) => ({
          name: u,
          masked: [...flat(left), ...flat(right)].some((c) => c.name === u && c.masked),
        }));
        const rest = [...flat(left), ...flat(right)].filter((c) => !using.includes(c.name));
        const joined: Entry = {
          alias: aliasName,
          columns: renamed([...merged, ...rest]),
          opaque,
          opaqueMasked: [...left, ...right].some((e) => e.opaqueMasked),
        };
        // Without a join alias, the sides stay referable by their own names; `*` uses the joined list.
        return aliasName === '' ? [joined, ...left.map(hidden), ...right.map(hidden)] : [joined];
      }
      case 'RangeTableSample': {
        await this.expr(n.args, scope, depth + 1, viewDepth);
        return this.fromItem(n.relation, scope, depth + 1, viewDepth);
      }
      default: {
        // RangeTableFunc (XMLTABLE) and others: masked if anything in them is, or may be.
        const masked = (await this.expr(n, scope, depth + 1, viewDepth)) || (await this.maskedExist());
        return [{ alias: aliasName, columns: [], opaque: true, opaqueMasked: masked }];
      }
    }
  }

  // ---- queries --------------------------------------------------------------------

  async query(n: unknown, scope: Scope, depth: number, viewDepth: number): Promise<Output> {
    const node = one(n);
    if (node === null) return { columns: [], maskAll: false };
    const [kind, body] = node;
    switch (kind) {
      case 'SelectStmt':
        return this.select(body, scope, depth, viewDepth);
      case 'InsertStmt':
      case 'UpdateStmt':
      case 'DeleteStmt':
        return this.modify(kind, body, scope, depth, viewDepth);
      default:
        return this.refuse(`a ${kind} cannot be traced as a query`);
    }
  }

  async withClause(w: unknown, scope: Scope, depth: number, viewDepth: number): Promise<Scope> {
    const clause = (w as Node | undefined) ?? null;
    if (clause === null) return scope;
    const ctes = new Map<string, Col[] | null>();
    const inner: Scope = { entries: [], ctes, parent: scope };
    for (const c of list(clause.ctes)) {
      const cte = (c as { CommonTableExpr?: Node }).CommonTableExpr;
      if (cte === undefined) continue;
      const name = String(cte.ctename);
      const rename = list(cte.aliascolnames).map(str);
      if (clause.recursive === true) ctes.set(name, RECURSIVE_START);
      let out = await this.query(cte.ctequery, inner, depth + 1, viewDepth);
      // A recursive CTE: again with the last pass's lineage for the self-reference, until
      // nothing more is masked (masking only grows, so this ends within width + 1 passes).
      for (let pass = 0; clause.recursive === true && pass < 8; pass++) {
        if (out.columns === null) {
          ctes.set(name, null);
          out = await this.query(cte.ctequery, inner, depth + 1, viewDepth);
          break;
        }
        const before = out.columns.map((c) => c.masked).join();
        ctes.set(name, named(out.columns, rename));
        out = await this.query(cte.ctequery, inner, depth + 1, viewDepth);
        if (out.columns !== null && out.columns.map((c) => c.masked).join() === before) break;
      }
      const cols =
        out.columns === null
          ? null
          : named(out.columns, rename).map((col) => ({ name: col.name, masked: col.masked || out.maskAll }));
      ctes.set(name, cols);
    }
    return { entries: [], ctes, parent: scope };
  }

  async select(n: Node, outer: Scope, depth: number, viewDepth: number): Promise<Output> {
    if (depth > MAX_DEPTH) this.refuse('the statement is nested too deeply to trace');
    const scope0 = await this.withClause(n.withClause, outer, depth, viewDepth);
    if (typeof n.op === 'string' && n.op !== 'SETOP_NONE') {
      const l = await this.select(n.larg as Node, scope0, depth + 1, viewDepth);
      const r = await this.select(n.rarg as Node, scope0, depth + 1, viewDepth);
      await this.rest(n, { entries: [], ctes: new Map(), parent: scope0 }, depth, viewDepth, ['sortClause']);
      if (l.columns === null || r.columns === null)
        return {
          columns: l.columns ?? r.columns,
          maskAll: l.maskAll || r.maskAll || anyMasked(l.columns ?? r.columns),
        };
      return {
        columns: l.columns.map((c, i) => ({
          name: c.name,
          masked: c.masked || (r.columns![i]?.masked ?? false),
        })),
        maskAll: l.maskAll || r.maskAll,
      };
    }
    if (n.valuesLists !== undefined) {
      const rows = list(n.valuesLists).map((v) => list((v as { List?: { items?: unknown[] } }).List?.items));
      const width = rows[0]?.length ?? 0;
      const cols: Col[] = [];
      for (let i = 0; i < width; i++) {
        let masked = false;
        for (const row of rows) if (await this.expr(row[i], scope0, depth + 1, viewDepth)) masked = true;
        cols.push({ name: `column${i + 1}`, masked });
      }
      return { columns: cols, maskAll: false };
    }
    // FROM items in order; each sees those before it (LATERAL).
    const visible: Scope = { entries: [], ctes: new Map(), parent: scope0 };
    for (const item of list(n.fromClause)) {
      const entries = await this.fromItem(item, visible, depth + 1, viewDepth);
      visible.entries.push(...entries);
    }
    const columns: Col[] = [];
    let maskAll = false;
    /** A `*` over something of unknown shape: the column count is not known. */
    let unknownShape = false;
    for (const t of list(n.targetList)) {
      const rt = (t as { ResTarget?: Node }).ResTarget;
      if (rt === undefined) continue;
      const val = one(rt.val);
      const name = typeof rt.name === 'string' ? rt.name : null;
      if (val?.[0] === 'ColumnRef' && list(val[1].fields).some((f) => one(f)?.[0] === 'A_Star')) {
        const fields = list(val[1].fields);
        const qualifier = fields.length > 1 ? str(fields.at(-2)) : null;
        const entries = visible.entries.filter(
          (e) => !isHidden(e) && (qualifier === null || e.alias === qualifier),
        );
        if (qualifier !== null && entries.length === 0) {
          const viaHidden = visible.entries.filter((e) => e.alias === qualifier);
          entries.push(...viaHidden);
        }
        for (const e of entries) {
          if (e.opaque) {
            maskAll ||= e.opaqueMasked;
            unknownShape = true;
            continue;
          }
          for (const c of e.columns) {
            if (c.masked) this.touches = true;
            columns.push(c);
          }
        }
        continue;
      }
      if (val?.[0] === 'A_Indirection' && list(val[1].indirection).some((f) => one(f)?.[0] === 'A_Star')) {
        // (row).*: as many columns as the row has; masked if the row has any masked column.
        const masked = await this.expr(val[1].arg, visible, depth + 1, viewDepth);
        const cols = await this.rowShape(val[1].arg, visible);
        if (cols === null) {
          maskAll ||= masked;
          unknownShape = true;
          continue;
        }
        for (const c of cols) columns.push({ name: c.name, masked: c.masked || masked });
        continue;
      }
      const masked = await this.expr(rt.val, visible, depth + 1, viewDepth);
      columns.push({ name: name ?? outputName(rt.val), masked });
    }
    await this.rest(n, visible, depth, viewDepth, [
      'whereClause',
      'groupClause',
      'havingClause',
      'sortClause',
      'windowClause',
      'distinctClause',
      'limitCount',
      'limitOffset',
    ]);
    if (n.intoClause !== undefined && (anyMasked(columns) || maskAll))
      this.refuse('SELECT INTO would copy masked values into a new table');
    // Of unknown shape, the columns known so far cannot be placed: mask all if any may be.
    if (unknownShape) return { columns: null, maskAll: maskAll || anyMasked(columns) };
    return { columns, maskAll };
  }

  /** Columns of `(x).*` when x names a FROM entry; null when the shape is unknown. */
  async rowShape(arg: unknown, scope: Scope): Promise<readonly Col[] | null> {
    const ref = one(arg);
    if (ref?.[0] !== 'ColumnRef') return null;
    const fields = list(ref[1].fields).map(str);
    if (fields.length !== 1) return null;
    for (let s: Scope | null = scope; s !== null; s = s.parent) {
      const e = s.entries.find((x) => x.alias === fields[0] && !x.opaque);
      if (e !== undefined) return e.columns;
    }
    return null;
  }

  async rest(
    n: Node,
    scope: Scope,
    depth: number,
    viewDepth: number,
    keys: readonly string[],
  ): Promise<void> {
    for (const k of keys) if (n[k] !== undefined) await this.expr(n[k], scope, depth + 1, viewDepth);
  }

  async modify(kind: string, n: Node, outer: Scope, depth: number, viewDepth: number): Promise<Output> {
    const scope0 = await this.withClause(n.withClause, outer, depth, viewDepth);
    const target = await this.rangeVar(n.relation as Node, scope0, viewDepth);
    const scope: Scope = { entries: [target], ctes: new Map(), parent: scope0 };
    const isMaskedTarget = (name: string) => target.columns.find((c) => c.name === name)?.masked ?? false;
    // A write to a relation with masked columns can fail with the whole row in its detail
    // ("Failing row contains (…)", a composite key): its errors are withheld.
    if (target.opaque ? target.opaqueMasked : anyMasked(target.columns)) this.touches = true;
    if (kind === 'InsertStmt') {
      const cols = list(n.cols).map((c) => String((c as { ResTarget?: Node }).ResTarget?.name ?? ''));
      if (n.selectStmt !== undefined) {
        const src = await this.query(n.selectStmt, scope0, depth + 1, viewDepth);
        const names = cols.length > 0 ? cols : target.columns.map((c) => c.name);
        const leaks =
          src.columns === null
            ? src.maskAll
            : src.columns.some((c, i) => (c.masked || src.maskAll) && !isMaskedTarget(names[i] ?? ''));
        if (leaks) this.refuse('INSERT would copy masked values into a column that is not masked');
      }
      const conflict = (n.onConflictClause as Node | undefined) ?? null;
      if (conflict !== null) {
        // DO UPDATE SET sees the target row and the proposed one (EXCLUDED).
        const excluded: Scope = {
          entries: [target, { ...target, alias: 'excluded' }],
          ctes: new Map(),
          parent: scope0,
        };
        await this.expr(conflict.infer, excluded, depth + 1, viewDepth);
        await this.expr(conflict.whereClause, excluded, depth + 1, viewDepth);
        await this.assignments(
          list(conflict.targetList),
          excluded,
          isMaskedTarget,
          'INSERT … ON CONFLICT',
          depth,
          viewDepth,
        );
      }
    } else {
      const extra = kind === 'UpdateStmt' ? n.fromClause : n.usingClause;
      for (const item of list(extra))
        scope.entries.push(...(await this.fromItem(item, scope, depth + 1, viewDepth)));
      if (kind === 'UpdateStmt')
        await this.assignments(list(n.targetList), scope, isMaskedTarget, 'UPDATE', depth, viewDepth);
      await this.expr(n.whereClause, scope, depth + 1, viewDepth);
    }
    if (n.returningList === undefined) return { columns: [], maskAll: false };
    return this.select({ targetList: n.returningList, op: 'SETOP_NONE' }, scope, depth + 1, viewDepth);
  }

  /** SET col = expr: a masked value may only go into a masked column. */
  async assignments(
    targets: unknown[],
    scope: Scope,
    isMaskedTarget: (name: string) => boolean,
    what: string,
    depth: number,
    viewDepth: number,
  ): Promise<void> {
    for (const t of targets) {
      const rt = (t as { ResTarget?: Node }).ResTarget;
      if (rt === undefined) continue;
      const masked = await this.expr(rt.val, scope, depth + 1, viewDepth);
      if (masked && !isMaskedTarget(String(rt.name ?? '')))
        this.refuse(`${what} would copy masked values into a column that is not masked`);
    }
  }

  // ---- expressions ----------------------------------------------------------------

  /** True when the value of `n` derives from a masked column or a whole row holding one. */
  async expr(n: unknown, scope: Scope, depth: number, viewDepth: number): Promise<boolean> {
    if (depth > MAX_DEPTH) this.refuse('the statement is nested too deeply to trace');
    if (n === null || typeof n !== 'object') return false;
    if (Array.isArray(n)) {
      let m = false;
      for (const x of n) if (await this.expr(x, scope, depth + 1, viewDepth)) m = true;
      return m;
    }
    const node = one(n);
    if (node !== null) {
      const [kind, body] = node;
      if (kind === 'ColumnRef') return this.columnRef(body, scope);
      if (kind === 'SubLink') {
        const out = await this.query(body.subselect, scope, depth + 1, viewDepth);
        const test = await this.expr(body.testexpr, scope, depth + 1, viewDepth);
        // EXISTS / IN / ANY give a boolean: what they reveal is inference (see the docs).
        if (
          body.subLinkType === 'EXPR_SUBLINK' ||
          body.subLinkType === 'ARRAY_SUBLINK' ||
          body.subLinkType === 'MULTIEXPR_SUBLINK'
        )
          return test || out.maskAll || anyMasked(out.columns);
        return test;
      }
      if (kind === 'SelectStmt' || kind === 'InsertStmt' || kind === 'UpdateStmt' || kind === 'DeleteStmt') {
        const out = await this.query(n, scope, depth + 1, viewDepth);
        return out.maskAll || anyMasked(out.columns);
      }
      const fname = kind === 'FuncCall' ? str(list(body.funcname).at(-1)) : '';
      if (RUNS_SQL_TEXT.test(fname) && (await this.maskedExist()))
        this.refuse(`${fname}() reads data the gateway cannot trace, and this database has masked columns`);
      if (SIDE_CHANNEL.test(fname) && (await this.expr(body.args, scope, depth + 1, viewDepth)))
        this.refuse(
          `${fname}() would carry masked values out of the result (a notification, a setting, a sequence, a large object)`,
        );
      let m = false;
      if (
        kind === 'FuncCall' &&
        (await this.functionIsUser(list(body.funcname))) &&
        (await this.maskedExist())
      ) {
        // A user-defined function may read masked columns itself: its result is masked.
        m = true;
        this.touches = true;
      }
      for (const [k, v] of Object.entries(body)) {
        if (kind === 'FuncCall' && k === 'funcname') continue;
        if (v !== null && typeof v === 'object' && (await this.expr(v, scope, depth + 1, viewDepth)))
          m = true;
      }
      return m;
    }
    let m = false;
    for (const v of Object.values(n as Node))
      if (v !== null && typeof v === 'object' && (await this.expr(v, scope, depth + 1, viewDepth))) m = true;
    return m;
  }

  columnRef(n: Node, scope: Scope): boolean {
    const fields = list(n.fields);
    const names = fields.map(str);
    const star = fields.some((f) => one(f)?.[0] === 'A_Star');
    const result = (masked: boolean): boolean => {
      if (masked) this.touches = true;
      return masked;
    };
    for (let s: Scope | null = scope; s !== null; s = s.parent) {
      if (star || names.length >= 2) {
        // rel.col, schema.rel.col, rel.*: the entry by its name.
        const rel = star ? names.at(-2) : names.at(-2);
        const entry = s.entries.find((e) => e.alias === rel);
        if (entry === undefined) continue;
        if (entry.opaque) return result(entry.opaqueMasked);
        if (star) return result(anyMasked(entry.columns as Col[]));
        const col = entry.columns.find((c) => c.name === names.at(-1));
        if (col !== undefined) return result(col.masked);
        return result(anyMasked(entry.columns as Col[]));
      }
      const name = names[0]!;
      const hits = s.entries
        .filter((e) => !isHidden(e))
        .flatMap((e) => e.columns.filter((c) => c.name === name));
      if (hits.length > 0) return result(hits.some((c) => c.masked));
      const whole = s.entries.find((e) => e.alias === name);
      if (whole !== undefined)
        return result(whole.opaque ? whole.opaqueMasked : anyMasked(whole.columns as Col[]));
      const opaque = s.entries.filter((e) => e.opaque);
      if (opaque.length > 0) return result(opaque.some((e) => e.opaqueMasked));
    }
    // Not resolved here, yet PostgreSQL accepted it (or will reject the statement): an output
    // alias in ORDER BY, or something this resolver does not model. Masked if anything in
    // reach is.
    for (let s: Scope | null = scope; s !== null; s = s.parent)
      if (s.entries.some((e) => (e.opaque ? e.opaqueMasked : anyMasked(e.columns as Col[]))))
        return result(true);
    return false;
  }
}

const HIDDEN = new WeakSet<Entry>();
function hidden(e: Entry): Entry {
  const copy = { ...e };
  HIDDEN.add(copy);
  return copy;
}
function isHidden(e: Entry): boolean {
  return HIDDEN.has(e);
}

function named(cols: readonly Col[], rename: readonly string[]): Col[] {
  return cols.map((c, i) => ({ name: rename[i] ?? c.name, masked: c.masked }));
}

function firstFunctionName(n: Node): string {
  const items = list((list(n.functions)[0] as { List?: { items?: unknown[] } } | undefined)?.List?.items);
  const call = one(items[0]);
  return call?.[0] === 'FuncCall' ? str(list(call[1].funcname).at(-1)) : '';
}

function rootScope(): Scope {
  return { entries: [], ctes: new Map(), parent: null };
}

function outputName(val: unknown): string {
  const node = one(val);
  if (node?.[0] === 'ColumnRef') return str(list(node[1].fields).at(-1)) || '?column?';
  if (node?.[0] === 'FuncCall') return str(list(node[1].funcname).at(-1));
  return '?column?';
}

/**
 * The per-session lineage state: mask rules, the catalog, and the cursors and prepared
 * statements declared so far (a FETCH or EXECUTE takes its plan from them).
 */
export class LineageTracker {
  readonly masked: (name: string) => boolean;
  readonly catalog: LineageCatalog;
  readonly #cursors = new Map<string, StatementLineage>();
  readonly #prepared = new Map<string, StatementLineage>();
  /** Results by statement text, for the catalog generation they were computed under. */
  readonly #results = new Map<string, LineageResult>();
  #resultsGeneration: number | undefined = undefined;

  constructor(options: { masked: (name: string) => boolean; catalog: LineageCatalog }) {
    this.masked = options.masked;
    this.catalog = options.catalog;
  }

  /**
   * The lineage of every statement of `sql` (one Query or one Parse), or a refusal.
   * `extraMasks` adds column-name patterns for this statement only (a policy's `@mask`).
   */
  async analyze(sql: string, extraMasks?: (name: string) => boolean): Promise<LineageResult> {
    // Repeated plain statements: the same text under the same catalog gives the same answer.
    const generation = this.catalog.generation;
    const cacheable = extraMasks === undefined && generation !== undefined && sql.length <= MAX_CACHED_SQL;
    if (cacheable) {
      if (generation !== this.#resultsGeneration) {
        this.#results.clear();
        this.#resultsGeneration = generation;
      }
      const hit = this.#results.get(sql);
      if (hit !== undefined) return hit;
    }
    const result = await this.#analyze(sql, extraMasks);
    // Statements with session state (cursors, prepared statements) are analysed every time.
    if (
      cacheable &&
      this.catalog.generation === generation &&
      (!result.ok || result.statements.every((s) => CACHEABLE.has(s.statement)))
    ) {
      if (this.#results.size >= MAX_CACHED_RESULTS) this.#results.delete(this.#results.keys().next().value!);
      this.#results.set(sql, result);
    }
    return result;
  }

  async #analyze(sql: string, extraMasks?: (name: string) => boolean): Promise<LineageResult> {
    let tree: { stmts?: Array<{ stmt: Node }> };
    try {
      tree = parseSync(sql);
    } catch {
      return refusal('the statement does not parse, so its lineage cannot be established');
    }
    const masked =
      extraMasks === undefined ? this.masked : (name: string) => this.masked(name) || extraMasks(name);
    const analysis = new Analysis(this, masked);
    const statements: StatementLineage[] = [];
    try {
      for (const { stmt } of tree.stmts ?? []) {
        const node = one(stmt);
        if (node === null) continue;
        const before = analysis.touches;
        analysis.touches = false;
        const plan = await this.#statement(node[0], node[1], analysis);
        statements.push({ ...plan, touchesMasked: analysis.touches });
        analysis.touches ||= before;
      }
    } catch (error) {
      if (error instanceof LineageRefusal) return refusal(error.message);
      throw error;
    }
    return { ok: true, statements, touchesMasked: analysis.touches };
  }

  async #statement(kind: string, n: Node, a: Analysis): Promise<StatementLineage> {
    const plan = (out: Output): StatementLineage => ({
      statement: kind,
      columns: out.columns === null ? null : out.columns.map((c) => c.masked),
      maskAll: out.maskAll,
      relations: a.relations,
      touchesMasked: false,
    });
    const none = plan({ columns: [], maskAll: false });
    switch (kind) {
      case 'SelectStmt':
      case 'InsertStmt':
      case 'UpdateStmt':
      case 'DeleteStmt':
        return plan(await a.query({ [kind]: n }, rootScope(), 0, 0));
      case 'DeclareCursorStmt': {
        const p = { ...plan(await a.query(n.query, rootScope(), 0, 0)), statement: kind };
        // Rows are computed at FETCH: that is where its errors come from.
        remember(this.#cursors, String(n.portalname), { ...p, touchesMasked: a.touches });
        return none;
      }
      case 'FetchStmt': {
        const p = this.#cursors.get(String(n.portalname));
        // A cursor not declared through the gateway (a refcursor from a function): mask it all.
        if (p === undefined) {
          a.touches ||= await a.maskedExist();
          return n.ismove === true ? none : { ...none, columns: null, maskAll: true };
        }
        a.touches ||= p.touchesMasked;
        return n.ismove === true ? none : { ...p, statement: kind };
      }
      case 'ClosePortalStmt':
        if (typeof n.portalname === 'string') this.#cursors.delete(n.portalname);
        else this.#cursors.clear();
        return none;
      case 'PrepareStmt': {
        const p = plan(await a.query(n.query, rootScope(), 0, 0));
        remember(this.#prepared, String(n.name), { ...p, touchesMasked: a.touches });
        return none;
      }
      case 'ExecuteStmt': {
        await a.expr(n.params, rootScope(), 0, 0);
        const p = this.#prepared.get(String(n.name));
        if (p === undefined) {
          a.touches ||= await a.maskedExist();
          return { ...none, columns: null, maskAll: true };
        }
        a.touches ||= p.touchesMasked;
        return { ...p, statement: kind };
      }
      case 'DeallocateStmt':
        if (typeof n.name === 'string') this.#prepared.delete(n.name);
        else this.#prepared.clear();
        return none;
      case 'ExplainStmt':
        // The plan text names columns, never their values; the query is still traced (refusals apply).
        await a.query(n.query, rootScope(), 0, 0);
        return none;
      case 'CreateTableAsStmt': {
        const out = await a.query(n.query, rootScope(), 0, 0);
        if (out.maskAll || anyMasked(out.columns))
          a.refuse('CREATE TABLE AS would copy masked values into a new relation');
        return none;
      }
      case 'CopyStmt': {
        if (n.is_from === true) return none;
        if (n.query !== undefined) {
          const out = await a.query(n.query, rootScope(), 0, 0);
          if (out.maskAll || anyMasked(out.columns)) a.refuse('COPY TO would send masked values unmasked');
          return none;
        }
        const entry = await a.rangeVar(n.relation as Node, rootScope(), 0);
        const attlist = list(n.attlist).map(str);
        const cols =
          attlist.length === 0 ? entry.columns : entry.columns.filter((c) => attlist.includes(c.name));
        if (entry.opaque || anyMasked(cols)) a.refuse('COPY TO would send masked values unmasked');
        return none;
      }
      case 'DoStmt':
        if (await a.maskedExist())
          a.refuse('a DO block cannot be traced, and this database has masked columns');
        return none;
      case 'CallStmt': {
        await a.expr(n.funccall, rootScope(), 0, 0);
        const masked = await a.maskedExist();
        if (masked) a.touches = true;
        return { ...none, columns: null, maskAll: masked };
      }
      case 'MergeStmt':
        if (await a.maskedExist()) a.refuse('MERGE cannot be traced, and this database has masked columns');
        return none;
      case 'AlterTableStmt':
      case 'RenameStmt': {
        // Renaming a masked column, or adding a generated column over it, would unmask it.
        if (n.relation === undefined || n.relation === null) return none;
        const entry = await a.rangeVar(n.relation as Node, rootScope(), 0);
        if (entry.opaque ? entry.opaqueMasked : anyMasked(entry.columns))
          a.refuse(`${kind} on a relation with masked columns could unmask them`);
        return none;
      }
      case 'CreateFunctionStmt':
      case 'CreateTrigStmt':
      case 'RuleStmt':
        // Code that runs later, with the reader's rows, out of the gateway's sight.
        if (await a.maskedExist()) a.refuse(`${kind} cannot be traced, and this database has masked columns`);
        return none;
      default:
        // SET, SHOW, transaction control, LISTEN, DDL without a query: no rows from tables.
        return none;
    }
  }

  /**
   * The mask for each column of a RowDescription, given the statement's lineage: the
   * parse-tree plan, and the table and column RowDescription itself names (a plain
   * column of a relation read by the statement is masked when that column is). Rows of a
   * shape the plan does not match are masked whole when they may hold masked values.
   */
  planColumns(statement: StatementLineage, fields: readonly FieldDescription[]): Uint8Array {
    const out = new Uint8Array(fields.length);
    const fits = statement.columns !== null && statement.columns.length === fields.length;
    const any = statement.maskAll || (statement.columns?.some((m) => m) ?? false);
    fields.forEach((f, i) => {
      let m = statement.maskAll || (fits ? statement.columns![i]! : any);
      if (!m && f.tableOid !== 0) {
        const rel = statement.relations.get(f.tableOid);
        // A table the analysis never resolved: plausibly masked.
        m = rel === undefined ? true : rel.has(f.columnAttr);
      }
      out[i] = m ? 1 : 0;
    });
    return out;
  }
}

function remember(map: Map<string, StatementLineage>, name: string, p: StatementLineage): void {
  map.delete(name);
  if (map.size >= MAX_NAMED) map.delete(map.keys().next().value!);
  map.set(name, p);
}

function refusal(message: string): LineageResult {
  return {
    ok: false,
    code: 'CC_ERR_PG_MASK_LINEAGE',
    message: `coatcheck: statement refused by rule mask-columns: ${message}`,
  };
}

import { parseSync } from 'libpg-query';
import { CoatcheckError } from '../../../core/errors.js';
import type { Classification, SqlClassifier, StatementClass } from '../sql/classify.js';

/**
 * One statement of a simple Query, as PostgreSQL will run it: the query's text split
 * at the parser's statement boundaries, each statement classified on its own, with the
 * facts policy decides on (statement kind, tables, functions) and what it does to the
 * session's prepared statements and cursors (PREPARE, EXECUTE, DEALLOCATE, DISCARD,
 * DECLARE, CLOSE, FETCH).
 */
export interface StatementFacts {
  /** The statement's own text (a slice of the Query). */
  readonly source: string;
  /** The parse-tree node (`DeleteStmt`). */
  readonly node: string;
  /** The node as a kind word (`delete`, `prepare`, `variable_set`). */
  readonly kind: string;
  readonly classification: Classification;
  /** Relations named anywhere in the statement (`name` and `schema.name`). */
  readonly tables: readonly string[];
  /** Functions called anywhere in the statement (as written, schema-qualified when written so). */
  readonly functions: readonly string[];
  /** PREPARE name AS ...: the prepared statement's own kind. */
  readonly prepare?: { readonly name: string; readonly kind: string };
  readonly execute?: { readonly name: string };
  /** DEALLOCATE name (null: ALL); DISCARD ALL deallocates all too. */
  readonly deallocate?: { readonly name: string | null };
  readonly declare?: { readonly name: string };
  /** CLOSE name (null: ALL). */
  readonly closeCursor?: { readonly name: string | null };
  /** FETCH / MOVE from a cursor. */
  readonly fetch?: { readonly name: string };
}

/** kindOf per parse-tree node name, worked out once: it runs for every statement. */
const KINDS = new Map<string, string>();

/** `DeleteStmt` → `delete`, `VariableSetStmt` → `variable_set`. */
export function kindOf(node: string): string {
  let kind = KINDS.get(node);
  if (kind === undefined) {
    kind = node
      .replace(/Stmt$/, '')
      .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
      .toLowerCase();
    // Node names are the parser's (a few hundred): the map stays small.
    if (KINDS.size < 1024) KINDS.set(node, kind);
  }
  return kind;
}

/** Tables and functions anywhere in a parse tree (iterative: trees can be deep). */
export function collectNames(root: unknown): { tables: string[]; functions: string[] } {
  const tables = new Set<string>();
  const functions = new Set<string>();
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const value = stack.pop();
    if (Array.isArray(value)) {
      for (const v of value) stack.push(v);
      continue;
    }
    if (value === null || typeof value !== 'object') continue;
    const node = value as Record<string, unknown>;
    if (typeof node.relname === 'string') {
      tables.add(node.relname);
      if (typeof node.schemaname === 'string') tables.add(`${node.schemaname}.${node.relname}`);
    }
    const call = node.FuncCall as { funcname?: Array<{ String?: { sval?: string } }> } | undefined;
    if (call !== undefined && Array.isArray(call.funcname)) {
      functions.add(call.funcname.map((p) => p.String?.sval ?? '?').join('.'));
    }
    for (const child of Object.values(node))
      if (child !== null && typeof child === 'object') stack.push(child);
  }
  return { tables: [...tables].sort(), functions: [...functions].sort() };
}

/** Longest Query text whose split is cached. */
const MAX_CACHED = 16 * 1024;

/**
 * Splits Queries into statements (cached, bounded LRU). A statement that does not parse
 * makes the whole Query fail with CC_ERR_PG_STATEMENT_UNPARSABLE, as the classifier does.
 */
export class StatementSplitter {
  readonly #classifier: SqlClassifier;
  readonly #cache = new Map<string, readonly StatementFacts[]>();
  readonly #capacity: number;

  constructor(classifier: SqlClassifier, capacity = 2000) {
    this.#classifier = classifier;
    this.#capacity = capacity;
  }

  split(sql: string): readonly StatementFacts[] {
    const hit = this.#cache.get(sql);
    if (hit !== undefined) return hit;
    const result = this.#split(sql);
    if (sql.length <= MAX_CACHED) {
      if (this.#cache.size >= this.#capacity) this.#cache.delete(this.#cache.keys().next().value!);
      this.#cache.set(sql, result);
    }
    return result;
  }

  #split(sql: string): readonly StatementFacts[] {
    if (sql.trim() === '') return [];
    let tree: { stmts?: Array<{ stmt: Record<string, unknown>; stmt_location?: number; stmt_len?: number }> };
    try {
      tree = parseSync(sql);
    } catch {
      // The classifier words the refusal (position and message).
      this.#classifier.classify(sql);
      throw new CoatcheckError('CC_ERR_PG_STATEMENT_UNPARSABLE', 'statement refused: it does not parse');
    }
    const bytes = Buffer.from(sql, 'utf8');
    const out: StatementFacts[] = [];
    for (const raw of tree.stmts ?? []) {
      const start = raw.stmt_location ?? 0;
      const end = raw.stmt_len === undefined || raw.stmt_len === 0 ? bytes.length : start + raw.stmt_len;
      const source = bytes.toString('utf8', start, end);
      const [node, body] = Object.entries(raw.stmt)[0] as [string, Record<string, unknown>];
      out.push(this.#facts(source, node, body));
    }
    return out;
  }

  #facts(source: string, node: string, body: Record<string, unknown>): StatementFacts {
    const classification = this.#classifier.classify(source);
    const { tables, functions } = collectNames(body);
    const base = { source, node, kind: kindOf(node), classification, tables, functions };
    const name = (key: string): string => (typeof body[key] === 'string' ? (body[key] as string) : '');
    switch (node) {
      case 'PrepareStmt': {
        const inner = Object.keys((body.query as Record<string, unknown> | undefined) ?? {})[0] ?? 'unknown';
        return { ...base, prepare: { name: name('name'), kind: kindOf(inner) } };
      }
      case 'ExecuteStmt':
        return { ...base, execute: { name: name('name') } };
      case 'DeallocateStmt':
        return { ...base, deallocate: { name: body.isall === true ? null : name('name') } };
      case 'DiscardStmt':
        return body.target === 'DISCARD_ALL' ? { ...base, deallocate: { name: null } } : base;
      case 'DeclareCursorStmt':
        return { ...base, declare: { name: name('portalname') } };
      case 'ClosePortalStmt':
        return { ...base, closeCursor: { name: body.portalname === undefined ? null : name('portalname') } };
      case 'FetchStmt':
        return { ...base, fetch: { name: name('portalname') } };
      default:
        return base;
    }
  }
}

/** The facts of a single-statement text (a protocol Parse). */
export function singleStatement(splitter: StatementSplitter, sql: string): StatementFacts | null {
  const all = splitter.split(sql);
  return all.length === 1 ? all[0]! : null;
}

export type { StatementClass };

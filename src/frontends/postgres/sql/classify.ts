import { loadModule, parseSync } from 'libpg-query';
import { CoatcheckError } from '../../../core/errors.js';

/**
 * SQL classification with the real PostgreSQL parser (libpg_query, WASM). The whole
 * tree is walked: a DELETE inside a CTE, a SELECT ... INTO, a row lock or a call of a
 * function that is not known to be read-only all count, and the most dangerous
 * statement decides a multi-statement query. What does not parse is refused.
 */

/** Statement classes, least to most dangerous. */
export const STATEMENT_CLASSES = [
  'empty',
  'transaction',
  'session',
  'read',
  'function-call',
  'write',
  'ddl',
  'privilege',
] as const;
export type StatementClass = (typeof STATEMENT_CLASSES)[number];

const RANK: Record<StatementClass, number> = Object.fromEntries(
  STATEMENT_CLASSES.map((c, i) => [c, i]),
) as Record<StatementClass, number>;

export function moreDangerous(a: StatementClass, b: StatementClass): StatementClass {
  return RANK[a] >= RANK[b] ? a : b;
}

export interface StringLiteral {
  /** Byte offsets in the UTF-8 statement text: the opening quote and one past the closing quote. */
  readonly start: number;
  readonly end: number;
}

export interface Classification {
  readonly class: StatementClass;
  /** Parse-tree node name of each statement (`SelectStmt`, `DeleteStmt`, ...). */
  readonly statements: readonly string[];
  /** Functions called that are not on the read-only allowlist (names only). */
  readonly functions: readonly string[];
  /** Standard-conforming string literals ('...', no E prefix): where tickets may be exchanged. */
  readonly literals: readonly StringLiteral[];
}

/** Functions known not to write; any other call is classified `function-call` (a potential write). */
const READ_ONLY_FUNCTIONS = new Set(
  `count sum avg min max bool_and bool_or every array_agg string_agg json_agg jsonb_agg json_object_agg
  jsonb_object_agg stddev variance percentile_cont percentile_disc mode row_number rank dense_rank
  percent_rank cume_dist ntile lag lead first_value last_value nth_value now clock_timestamp
  statement_timestamp transaction_timestamp timeofday date_trunc date_part extract age to_char to_date
  to_timestamp to_number make_date make_time make_timestamp make_timestamptz make_interval justify_days
  justify_hours justify_interval isfinite lower upper initcap length char_length character_length
  octet_length bit_length position strpos substr substring left right lpad rpad trim btrim ltrim rtrim
  replace translate repeat reverse split_part concat concat_ws format quote_ident quote_literal
  quote_nullable regexp_replace regexp_match regexp_matches regexp_split_to_array regexp_split_to_table
  regexp_like regexp_count regexp_instr regexp_substr starts_with ascii chr md5 sha224 sha256 sha384
  sha512 encode decode to_hex abs ceil ceiling floor round trunc sign sqrt cbrt exp ln log log10 power
  pow mod div greatest least pi degrees radians sin cos tan asin acos atan atan2 random width_bucket
  generate_series generate_subscripts unnest array_length array_lower array_upper array_dims
  array_position array_positions array_remove array_replace array_append array_prepend array_cat
  array_to_string string_to_array array_ndims cardinality to_json to_jsonb json_build_object
  jsonb_build_object json_build_array jsonb_build_array json_array_length jsonb_array_length
  json_array_elements jsonb_array_elements json_array_elements_text jsonb_array_elements_text
  json_each jsonb_each json_each_text jsonb_each_text json_extract_path jsonb_extract_path
  json_extract_path_text jsonb_extract_path_text json_object_keys jsonb_object_keys json_typeof
  jsonb_typeof jsonb_set jsonb_insert jsonb_strip_nulls jsonb_pretty jsonb_path_query jsonb_path_exists
  jsonb_path_match row_to_json array_to_json coalesce nullif version current_database current_schema
  current_schemas pg_backend_pid pg_typeof format_type pg_get_userbyid pg_get_expr pg_get_indexdef
  pg_get_constraintdef pg_get_viewdef pg_get_triggerdef pg_get_functiondef pg_get_function_arguments
  pg_get_function_result pg_get_function_identity_arguments pg_get_serial_sequence pg_get_statisticsobjdef_columns
  pg_table_is_visible pg_type_is_visible pg_function_is_visible pg_encoding_to_char obj_description
  col_description shobj_description pg_relation_size pg_total_relation_size pg_table_size
  pg_indexes_size pg_database_size pg_size_pretty pg_column_size has_table_privilege
  has_schema_privilege has_database_privilege has_column_privilege has_function_privilege
  has_sequence_privilege pg_has_role inet_server_addr inet_server_port pg_postmaster_start_time
  pg_is_in_recovery txid_current_if_assigned pg_current_xact_id_if_assigned to_regclass to_regtype
  to_regproc pg_sleep gen_random_uuid uuid_generate_v4 array_fill textlen date_bin overlay bool int4
  int8 text numeric float8 timezone pg_get_partkeydef pg_partition_tree pg_get_keywords
  pg_char_to_encoding pg_collation_is_visible pg_get_function_sqlbody pg_catalog_version
  pg_client_encoding set_masklen host hostmask netmask network broadcast family masklen abbrev`.split(/\s+/),
);

const WRITE_NODES = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'NotifyStmt',
  'LockStmt',
]);
const PRIVILEGE_NODES = new Set([
  'GrantStmt',
  'GrantRoleStmt',
  'CreateRoleStmt',
  'AlterRoleStmt',
  'AlterRoleSetStmt',
  'DropRoleStmt',
  'AlterDefaultPrivilegesStmt',
  'ReassignOwnedStmt',
  'DropOwnedStmt',
  'AlterOwnerStmt',
  'CreateUserMappingStmt',
  'AlterUserMappingStmt',
  'AlterSystemStmt',
  'LoadStmt',
  'AlterDatabaseSetStmt',
]);
const TOP_LEVEL: Record<string, StatementClass> = {
  SelectStmt: 'read',
  ExplainStmt: 'read',
  VariableShowStmt: 'read',
  DeclareCursorStmt: 'read',
  FetchStmt: 'read',
  ClosePortalStmt: 'read',
  PrepareStmt: 'read',
  ExecuteStmt: 'read',
  InsertStmt: 'write',
  UpdateStmt: 'write',
  DeleteStmt: 'write',
  MergeStmt: 'write',
  NotifyStmt: 'write',
  LockStmt: 'write',
  TransactionStmt: 'transaction',
  VariableSetStmt: 'session',
  DiscardStmt: 'session',
  ListenStmt: 'session',
  UnlistenStmt: 'session',
  DeallocateStmt: 'session',
  CallStmt: 'function-call',
  DoStmt: 'ddl',
};
/** SET of these is a privilege change (identity, or lifting read-only). */
const PRIVILEGED_SETTING = /role|session_authorization|read_only|characteristics/i;

function funcName(node: Record<string, unknown>): string {
  const parts = (node.funcname as Array<{ String?: { sval?: string } }> | undefined) ?? [];
  return parts.map((p) => p.String?.sval ?? '?').join('.');
}

function allowlisted(name: string): boolean {
  const dot = name.lastIndexOf('.');
  const schema = dot < 0 ? '' : name.slice(0, dot);
  return (
    (schema === '' || schema === 'pg_catalog') && READ_ONLY_FUNCTIONS.has(name.slice(dot + 1).toLowerCase())
  );
}

interface WalkState {
  cls: StatementClass;
  readonly functions: Set<string>;
  readonly constLocations: number[];
}

/** Visit every node of one statement's tree (iteratively: parse trees can be deep). */
function walk(root: unknown, state: WalkState): void {
  const stack: unknown[] = [root];
  while (stack.length > 0) {
    const value = stack.pop();
    if (Array.isArray(value)) {
      for (const v of value) stack.push(v);
      continue;
    }
    if (value === null || typeof value !== 'object') continue;
    for (const [key, child] of Object.entries(value as Record<string, unknown>)) {
      if (child !== null && typeof child === 'object' && !Array.isArray(child) && /^[A-Z]/.test(key)) {
        const node = child as Record<string, unknown>;
        if (WRITE_NODES.has(key)) state.cls = moreDangerous(state.cls, 'write');
        else if (PRIVILEGE_NODES.has(key)) state.cls = moreDangerous(state.cls, 'privilege');
        else if (key === 'DoStmt') state.cls = moreDangerous(state.cls, 'ddl');
        else if (key === 'FuncCall') {
          const name = funcName(node);
          if (!allowlisted(name)) {
            state.functions.add(name);
            state.cls = moreDangerous(state.cls, 'function-call');
          }
        } else if (key === 'SelectStmt') {
          if (node.intoClause !== undefined) state.cls = moreDangerous(state.cls, 'ddl');
          if (node.lockingClause !== undefined) state.cls = moreDangerous(state.cls, 'write');
        } else if (key === 'A_Const' && node.sval !== undefined && typeof node.location === 'number') {
          state.constLocations.push(node.location);
        }
      }
      if (child !== null && typeof child === 'object') stack.push(child);
    }
  }
}

function classifyStatement(name: string, node: Record<string, unknown>): StatementClass {
  if (name === 'CopyStmt') {
    // COPY to or from a server file or program reads or runs things on the server host.
    if (node.filename !== undefined || node.is_program === true) return 'privilege';
    return node.is_from === true ? 'write' : 'read';
  }
  if (name === 'VariableSetStmt') {
    const setting = typeof node.name === 'string' ? node.name : '';
    return PRIVILEGED_SETTING.test(setting) ? 'privilege' : 'session';
  }
  if (PRIVILEGE_NODES.has(name)) return 'privilege';
  // CREATE/ALTER/DROP/TRUNCATE/COMMENT/VACUUM/REINDEX/... and anything not listed: DDL.
  return TOP_LEVEL[name] ?? 'ddl';
}

/** The standard string literal ('...', quotes doubled) that starts at byte `start`, or null. */
function literalAt(sql: Buffer, start: number): StringLiteral | null {
  if (sql[start] !== 0x27) return null;
  let i = start + 1;
  while (i < sql.length) {
    if (sql[i] === 0x27) {
      if (sql[i + 1] === 0x27) i += 2;
      else return { start, end: i + 1 };
    } else i++;
  }
  return null;
}

/** Text that the shape normalizer leaves alone: quoted identifiers, escapes, dollar quotes, comments, tickets. */
const NO_SHAPE = /["\\$]|--|\/\*|cct_/;
const NUMBER = /(?<![A-Za-z_0-9.])[0-9]+(?:\.[0-9]+)?(?![A-Za-z_0-9.])/g;

/**
 * The statement with every number replaced by 0 and every standard string literal by
 * '', so `... WHERE aid = 17` and `... WHERE aid = 42` share one cache entry. Literals
 * never change a statement's class (keywords and identifiers do, and are untouched).
 * Returns null (no normalizing) for text with anything the simple lexer here does not
 * model exactly: quoted identifiers, backslashes, dollar quotes, comments, tickets.
 */
export function shapeOf(sql: string): string | null {
  if (sql.length > MAX_CACHED_TEXT || NO_SHAPE.test(sql)) return null;
  let out = '';
  let at = 0;
  for (;;) {
    const open = sql.indexOf("'", at);
    if (open === -1) break;
    let close = open + 1;
    for (;;) {
      close = sql.indexOf("'", close);
      if (close === -1) return null; // unterminated: let the parser say so
      if (sql[close + 1] === "'") close += 2;
      else break;
    }
    out += sql.slice(at, open).replace(NUMBER, '0') + "''";
    at = close + 1;
  }
  return out + sql.slice(at).replace(NUMBER, '0');
}

let loaded: Promise<void> | null = null;

/** Load the parser once (WASM instantiation); call at start so a fault fails there. */
export function loadParser(): Promise<void> {
  loaded ??= loadModule();
  return loaded;
}

/** Longest statement text cached (longer ones are parsed each time). */
const MAX_CACHED_TEXT = 16 * 1024;

/**
 * Classifies statements, caching by text (bounded LRU: a repeated query is not parsed
 * again). `loadParser()` must have resolved first.
 */
export class SqlClassifier {
  readonly #cache = new Map<string, Classification>();
  readonly #capacity: number;
  parses = 0;

  constructor(options: { capacity?: number } = {}) {
    this.#capacity = options.capacity ?? 10_000;
  }

  classify(sql: string): Classification {
    const key = shapeOf(sql) ?? sql;
    const hit = this.#cache.get(key);
    if (hit !== undefined) {
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return hit;
    }
    const result = this.#parse(sql);
    if (key.length <= MAX_CACHED_TEXT) {
      if (this.#cache.size >= this.#capacity) this.#cache.delete(this.#cache.keys().next().value!);
      // A shape's literal positions are not those of its other texts: cache them without.
      this.#cache.set(key, key === sql ? result : { ...result, literals: [] });
    }
    return result;
  }

  #parse(sql: string): Classification {
    this.parses++;
    let tree: { stmts?: Array<{ stmt: Record<string, unknown> }> };
    if (sql.trim() === '') return { class: 'empty', statements: [], functions: [], literals: [] };
    try {
      tree = parseSync(sql);
    } catch (error) {
      const details = (error as { sqlDetails?: { cursorPosition?: number } }).sqlDetails;
      const message = error instanceof Error ? error.message.slice(0, 200) : 'parse error';
      throw new CoatcheckError(
        'CC_ERR_PG_STATEMENT_UNPARSABLE',
        `statement refused: it does not parse (${message})`,
        { details: { position: details?.cursorPosition ?? null } },
      );
    }
    const statements: string[] = [];
    const functions = new Set<string>();
    const constLocations: number[] = [];
    let cls: StatementClass = 'empty';
    for (const { stmt } of tree.stmts ?? []) {
      const [name, node] = Object.entries(stmt)[0] as [string, Record<string, unknown>];
      statements.push(name);
      const state: WalkState = { cls: classifyStatement(name, node), functions, constLocations };
      walk(stmt, state);
      cls = moreDangerous(cls, state.cls);
    }
    const bytes = Buffer.from(sql, 'utf8');
    const literals: StringLiteral[] = [];
    for (const at of constLocations) {
      const literal = literalAt(bytes, at);
      if (literal !== null) literals.push(literal);
    }
    return { class: cls, statements, functions: [...functions].slice(0, 16), literals };
  }
}

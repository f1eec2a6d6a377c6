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
  /**
   * Unqualified calls of allowlisted functions. They are read-only only if the name
   * resolves to pg_catalog: an upstream with a function of that name in another schema
   * makes them unknown calls (see `forUpstream`).
   */
  readonly unqualified?: readonly string[];
  /** Operators used, without schema (`+`, `===`): one defined outside pg_catalog is an unknown call. */
  readonly operators?: readonly string[];
  /** The lowest server major version that reads every construct here as the parser does (0: any). */
  readonly minServerMajor?: number;
  /** Asks for a read-write transaction or session (BEGIN READ WRITE, SET TRANSACTION READ WRITE, ...). */
  readonly readWrite?: boolean;
  /** Names of functions or operators this statement defines or renames to (`*`: unknown, a DO block). */
  readonly creates?: readonly string[];
}

/** What the upstream server reads differently from the parser's defaults (learnt at upstream login). */
export interface UpstreamFacts {
  /** The server's major version (from its server_version); null = unknown (version-dependent syntax is refused). */
  readonly major: number | null;
  /** Allowlisted function names that resolve to something other than pg_catalog's there (lower case). */
  readonly shadowed: ReadonlySet<string>;
  /** Operator names defined outside pg_catalog there. */
  readonly operators: ReadonlySet<string>;
}

/** Major versions of PostgreSQL whose grammar the parser (PostgreSQL 17) is checked against. */
export const PARSER_MAJOR = 17;
export const OLDEST_SERVER_MAJOR = 13;

export const DEFAULT_MAX_STATEMENT_BYTES = 256 * 1024;
export const DEFAULT_MAX_STATEMENTS = 1000;

/** Every allowlisted name, for the upstream probe. */
export function allowlistedNames(): string[] {
  return [...READ_ONLY_FUNCTIONS].filter((n) => n !== '');
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
  to_regproc pg_sleep gen_random_uuid array_fill textlen date_bin overlay bool int4
  int8 text numeric float8 timezone pg_get_partkeydef pg_partition_tree pg_get_keywords
  pg_char_to_encoding pg_collation_is_visible pg_get_function_sqlbody
  pg_client_encoding set_masklen host hostmask netmask network broadcast family masklen abbrev system_user`.split(
    /\s+/,
  ),
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

/**
 * Settings the gateway owns: they change how the server lexes statement text (encoding,
 * string escapes). They are pinned at upstream login; no statement may set them.
 */
export const LEXING_SETTINGS = new Set(['client_encoding', 'standard_conforming_strings', 'backslash_quote']);
/** Settings pinned too, though they change name resolution rather than lexing (top-level SET/ALTER ... SET only). */
export const PINNED_SETTINGS = new Set([...LEXING_SETTINGS, 'search_path']);

function pinned(setting: string, how: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_PG_SETTING_PINNED',
    `statement refused: ${how} changes ${setting}, a setting the gateway pins for the session`,
    { details: { setting } },
  );
}

/** Parse-tree nodes whose syntax older servers read differently (or as a call of a same-named function). */
const NODE_MIN_MAJOR: Record<string, number> = {
  MergeStmt: 15,
  JsonObjectConstructor: 16,
  JsonArrayConstructor: 16,
  JsonArrayQueryConstructor: 16,
  JsonObjectAgg: 16,
  JsonArrayAgg: 16,
  JsonIsPredicate: 16,
  JsonParseExpr: 17,
  JsonScalarExpr: 17,
  JsonSerializeExpr: 17,
  JsonFuncExpr: 17,
  JsonTable: 17,
  MergeSupportFunc: 17,
};
/** SQL-syntax functions (COERCE_SQL_SYNTAX) new in a major version: older servers read the keyword as a name. */
const SQL_SYNTAX_MIN_MAJOR: Record<string, number> = { 'pg_catalog.system_user': 16 };
/** Allowlisted functions that pg_catalog has only from this major on (before, the name can only be a user's). */
const FUNCTION_MIN_MAJOR: Record<string, number> = {
  regexp_like: 15,
  regexp_count: 15,
  regexp_instr: 15,
  regexp_substr: 15,
  date_bin: 14,
  pg_get_function_sqlbody: 14,
  gen_random_uuid: 13,
};

/** A value that asks for read-write: off/false/0/no (READ WRITE is transaction_read_only = 0). */
function isOff(arg: unknown): boolean {
  const c = (arg as { A_Const?: Record<string, unknown> } | undefined)?.A_Const;
  if (c === undefined) return true; // not a constant: assume the worst
  const ival = c.ival as { ival?: number } | undefined;
  if (ival !== undefined) return (ival.ival ?? 0) === 0;
  const boolval = c.boolval as { boolval?: boolean } | undefined;
  if (boolval !== undefined) return boolval.boolval !== true;
  const sval = (c.sval as { sval?: string } | undefined)?.sval;
  if (sval !== undefined) return !/^(on|true|yes|1|t|y)$/i.test(sval.trim());
  return true;
}

/** Whether a TransactionStmt / SET TRANSACTION / SESSION CHARACTERISTICS asks for READ WRITE. */
function asksReadWrite(options: unknown): boolean {
  if (!Array.isArray(options)) return false;
  return options.some((o) => {
    const d = (o as { DefElem?: { defname?: string; arg?: unknown } }).DefElem;
    return d?.defname === 'transaction_read_only' && isOff(d.arg);
  });
}

/** The setting name given to set_config(), when it is a string constant. */
function constantText(arg: unknown): string | null {
  const c = (arg as { A_Const?: { sval?: { sval?: string } } } | undefined)?.A_Const;
  return c?.sval?.sval ?? null;
}

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
  readonly unqualified: Set<string>;
  readonly operators: Set<string>;
  readonly creates: Set<string>;
  minMajor: number;
  readWrite: boolean;
}

/** Settings and read-write requests inside any node (SET inside ALTER ROLE/DATABASE/FUNCTION, set_config()). */
function checkSettingNode(key: string, node: Record<string, unknown>, state: WalkState): void {
  if (key === 'VariableSetStmt') {
    const name = typeof node.name === 'string' ? node.name.toLowerCase() : '';
    const kind = node.kind;
    // RESET restores the session default, which is the pinned startup value.
    if (LEXING_SETTINGS.has(name) && kind !== 'VAR_RESET') throw pinned(name, 'SET');
    if (name === 'transaction' || name === 'session characteristics') {
      if (asksReadWrite(node.args)) state.readWrite = true;
    } else if (/read_only/.test(name) && (kind !== 'VAR_SET_VALUE' || isOff((node.args as unknown[])?.[0]))) {
      if (kind !== 'VAR_RESET') state.readWrite = true;
    }
  } else if (key === 'TransactionStmt') {
    if (asksReadWrite(node.options)) state.readWrite = true;
  } else if (key === 'FuncCall') {
    const parts = funcName(node).toLowerCase().split('.');
    const last = parts.at(-1);
    if (last === 'set_config') {
      // set_config(name, value, is_local): a SET by another name. A name that is not a constant could be anything.
      const name = constantText((node.args as unknown[] | undefined)?.[0])?.toLowerCase() ?? null;
      if (name === null) throw pinned('(a computed setting name)', 'set_config()');
      if (LEXING_SETTINGS.has(name) || name === 'search_path') throw pinned(name, 'set_config()');
      state.cls = moreDangerous(state.cls, 'privilege');
      if (/read_only/.test(name)) state.readWrite = true;
    }
  }
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
        checkSettingNode(key, node, state);
        const since = NODE_MIN_MAJOR[key];
        if (since !== undefined && since > state.minMajor) state.minMajor = since;
        if (key === 'A_Expr') {
          const names = (node.name as Array<{ String?: { sval?: string } }> | undefined) ?? [];
          const schema = names.length > 1 ? names[0]?.String?.sval : undefined;
          const op = names.at(-1)?.String?.sval;
          const kind = typeof node.kind === 'string' ? node.kind : '';
          if (kind.includes('BETWEEN')) {
            state.operators.add('<=');
            state.operators.add('>=');
          } else if (op !== undefined && schema === undefined) state.operators.add(op);
          else if (op !== undefined && schema !== 'pg_catalog') {
            state.functions.add(`operator(${schema}.${op})`);
            state.cls = moreDangerous(state.cls, 'function-call');
          }
        } else if (key === 'CreateFunctionStmt' || key === 'DefineStmt') {
          // A function or operator this statement defines: from now on its name is not pg_catalog's.
          const names = (node.funcname ?? node.defnames) as Array<{ String?: { sval?: string } }> | undefined;
          const last = names?.at(-1)?.String?.sval;
          if (last !== undefined) state.creates.add(last.toLowerCase());
        } else if (key === 'RenameStmt' && typeof node.newname === 'string') {
          state.creates.add(node.newname.toLowerCase());
        } else if (key === 'DoStmt') state.creates.add('*');
        if (WRITE_NODES.has(key)) state.cls = moreDangerous(state.cls, 'write');
        else if (PRIVILEGE_NODES.has(key)) state.cls = moreDangerous(state.cls, 'privilege');
        else if (key === 'DoStmt') state.cls = moreDangerous(state.cls, 'ddl');
        else if (key === 'FuncCall') {
          const name = funcName(node);
          if (!allowlisted(name)) {
            state.functions.add(name);
            state.cls = moreDangerous(state.cls, 'function-call');
          } else if (!name.includes('.')) {
            const lower = name.toLowerCase();
            state.unqualified.add(lower);
            const since = FUNCTION_MIN_MAJOR[lower];
            if (since !== undefined && since > state.minMajor) state.minMajor = since;
          }
          if (node.funcformat === 'COERCE_SQL_SYNTAX') {
            const since = SQL_SYNTAX_MIN_MAJOR[name.toLowerCase()];
            if (since !== undefined && since > state.minMajor) state.minMajor = since;
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
    if (setting.toLowerCase() === 'search_path' && node.kind !== 'VAR_RESET')
      throw pinned('search_path', 'SET');
    return PRIVILEGED_SETTING.test(setting) ? 'privilege' : 'session';
  }
  if (name === 'AlterRoleSetStmt' || name === 'AlterDatabaseSetStmt' || name === 'AlterSystemStmt') {
    const set = node.setstmt as { name?: string; kind?: string } | undefined;
    const setting = set?.name?.toLowerCase() ?? '';
    if (PINNED_SETTINGS.has(setting) && set?.kind !== 'VAR_RESET') throw pinned(setting, 'ALTER ... SET');
    return 'privilege';
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
/** Statements whose literal values decide their class (a setting's name or value): never shared by shape. */
const VALUE_MATTERS = /set_config|read_only/i;
const NUMBER = /(?<![A-Za-z_0-9.])[0-9]+(?:\.[0-9]+)?(?![A-Za-z_0-9.])/g;

/**
 * The statement with every number replaced by 0 and every standard string literal by
 * '', so `... WHERE aid = 17` and `... WHERE aid = 42` share one cache entry. Literals
 * never change a statement's class (keywords and identifiers do, and are untouched).
 * Returns null (no normalizing) for text with anything the simple lexer here does not
 * model exactly: quoted identifiers, backslashes, dollar quotes, comments, tickets.
 */
export function shapeOf(sql: string): string | null {
  if (sql.length > MAX_CACHED_TEXT || NO_SHAPE.test(sql) || VALUE_MATTERS.test(sql)) return null;
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
  readonly #maxBytes: number;
  readonly #maxStatements: number;
  /** Set on a classifier bound to one upstream session (`forUpstream`): the shared one it asks. */
  #shared: SqlClassifier | null = null;
  #facts: UpstreamFacts | null = null;
  /** Names this session defined since login (treated as shadowed); `*` shadows every unqualified call. */
  readonly #defined = new Set<string>();
  parses = 0;

  constructor(options: { capacity?: number; maxStatementBytes?: number; maxStatements?: number } = {}) {
    this.#capacity = options.capacity ?? 10_000;
    this.#maxBytes = options.maxStatementBytes ?? DEFAULT_MAX_STATEMENT_BYTES;
    this.#maxStatements = options.maxStatements ?? DEFAULT_MAX_STATEMENTS;
  }

  /**
   * A classifier for one upstream session: the shared cache, plus what that server reads
   * differently (its version, functions and operators defined outside pg_catalog).
   */
  forUpstream(facts: UpstreamFacts): SqlClassifier {
    const bound = new SqlClassifier({ capacity: 0 });
    bound.#shared = this.#shared ?? this;
    bound.#facts = facts;
    return bound;
  }

  classify(sql: string): Classification {
    if (this.#shared === null) return this.#classifyShared(sql);
    const c = this.#shared.#classifyShared(sql);
    return this.#forServer(c);
  }

  /** Apply the upstream's facts to a version- and catalog-independent classification. */
  #forServer(c: Classification): Classification {
    const facts = this.#facts!;
    const needs = c.minServerMajor ?? 0;
    if (needs > 0 && (facts.major === null || facts.major < needs)) {
      throw new CoatcheckError(
        'CC_ERR_PG_SYNTAX_UNSUPPORTED',
        `statement refused: it uses syntax the parser reads as PostgreSQL ${needs}+ and the upstream is ${facts.major === null ? 'of unknown version' : `PostgreSQL ${facts.major}`}, which reads it differently`,
        { details: { needs, server: facts.major } },
      );
    }
    const unknown: string[] = [];
    for (const name of c.unqualified ?? []) {
      if (facts.shadowed.has(name) || this.#defined.has(name) || this.#defined.has('*')) unknown.push(name);
    }
    for (const op of c.operators ?? []) {
      if (facts.operators.has(op) || this.#defined.has(op)) unknown.push(`operator(${op})`);
    }
    for (const name of c.creates ?? []) this.#defined.add(name);
    if (unknown.length === 0) return c;
    return {
      ...c,
      class: moreDangerous(c.class, 'function-call'),
      functions: [...c.functions, ...unknown].slice(0, 16),
    };
  }

  #classifyShared(sql: string): Classification {
    if (sql.length > this.#maxBytes || Buffer.byteLength(sql, 'utf8') > this.#maxBytes) {
      throw new CoatcheckError(
        'CC_ERR_PG_STATEMENT_TOO_LARGE',
        `statement refused: its text exceeds ${this.#maxBytes} bytes (postgres.maxStatementBytes)`,
        { details: { limit: this.#maxBytes } },
      );
    }
    // Parsing costs about the number of statements: count semicolons (an upper bound) before parsing.
    let semicolons = 0;
    for (let at = sql.indexOf(';'); at !== -1; at = sql.indexOf(';', at + 1)) {
      if (++semicolons > this.#maxStatements) {
        throw new CoatcheckError(
          'CC_ERR_PG_STATEMENT_TOO_LARGE',
          `statement refused: a query holds more than ${this.#maxStatements} statements (or semicolons; postgres.maxStatementsPerQuery)`,
          { details: { limit: this.#maxStatements } },
        );
      }
    }
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
    const unqualified = new Set<string>();
    const operators = new Set<string>();
    const creates = new Set<string>();
    let minMajor = 0;
    let readWrite = false;
    let cls: StatementClass = 'empty';
    for (const { stmt } of tree.stmts ?? []) {
      const [name, node] = Object.entries(stmt)[0] as [string, Record<string, unknown>];
      statements.push(name);
      const state: WalkState = {
        cls: classifyStatement(name, node),
        functions,
        constLocations,
        unqualified,
        operators,
        creates,
        minMajor,
        readWrite,
      };
      walk(stmt, state);
      cls = moreDangerous(cls, state.cls);
      minMajor = state.minMajor;
      readWrite = state.readWrite;
    }
    const bytes = Buffer.from(sql, 'utf8');
    const literals: StringLiteral[] = [];
    for (const at of constLocations) {
      const literal = literalAt(bytes, at);
      if (literal !== null) literals.push(literal);
    }
    return {
      class: cls,
      statements,
      functions: [...functions].slice(0, 16),
      literals,
      ...(unqualified.size > 0 ? { unqualified: [...unqualified] } : {}),
      ...(operators.size > 0 ? { operators: [...operators] } : {}),
      ...(creates.size > 0 ? { creates: [...creates] } : {}),
      ...(minMajor > 0 ? { minServerMajor: minMajor } : {}),
      ...(readWrite ? { readWrite } : {}),
    };
  }
}

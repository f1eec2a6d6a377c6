import type { ErrorCode } from '../../core/errors.js';
import { fieldMatcher } from '../../gateway/field-mask.js';
import type { Classification } from './sql/classify.js';

/**
 * Per-connection statement rules (until the policy engine replaces them). Pure: a
 * classification and the rules in, a refusal or null out.
 */
export interface PostgresRules {
  readonly readOnly: boolean;
  readonly blockDdl: boolean;
  /** Writes need a human approval; approvals do not exist yet, so writes are refused with a clear message. */
  readonly requireApprovalForWrites: boolean;
  /** Most rows returned by one statement; later rows are dropped and the client is warned. 0 = no limit. */
  readonly rowLimit: number;
  /** Column-name patterns (`*email*`, `ssn`; case-insensitive, `*` any run, `?` one character). */
  readonly maskColumns: readonly string[];
  /** Replace known vault secrets found in any text value with tickets bound to the agent. */
  readonly scanSecrets: boolean;
  /** Databases a client may pick with `<connection>/<database>` (`*`: any); empty: only the URL's. */
  readonly databases: readonly string[];
  /** The upstream session's search_path, pinned at login (null: the server's default). No statement may change it. */
  readonly searchPath: string | null;
}

export const DEFAULT_RULES: PostgresRules = {
  readOnly: false,
  blockDdl: false,
  requireApprovalForWrites: false,
  rowLimit: 0,
  maskColumns: [],
  scanSecrets: true,
  databases: [],
  searchPath: null,
};

/** Read rules from a connection's stored/declared `rules` object; unknown fields are ignored, bad types fall back. */
export function rulesFrom(raw: unknown): PostgresRules {
  const r = (raw !== null && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  const bool = (k: string, d: boolean) => (typeof r[k] === 'boolean' ? (r[k] as boolean) : d);
  const rowLimit = r.rowLimit;
  return {
    readOnly: bool('readOnly', false),
    blockDdl: bool('blockDdl', false),
    requireApprovalForWrites: bool('requireApprovalForWrites', false),
    rowLimit: typeof rowLimit === 'number' && Number.isInteger(rowLimit) && rowLimit > 0 ? rowLimit : 0,
    maskColumns: Array.isArray(r.maskColumns)
      ? (r.maskColumns as unknown[]).filter((p): p is string => typeof p === 'string')
      : [],
    scanSecrets: bool('scanSecrets', true),
    databases: Array.isArray(r.databases)
      ? (r.databases as unknown[]).filter((d): d is string => typeof d === 'string')
      : [],
    searchPath: typeof r.searchPath === 'string' ? r.searchPath : null,
  };
}

export interface Refusal {
  readonly code: ErrorCode;
  /** The rule that refused: `read-only`, `block-ddl`, `require-approval-for-writes`, `mask-columns`. */
  readonly rule: string;
  readonly message: string;
}

const WRITE_LIKE = new Set(['write', 'function-call', 'ddl', 'privilege']);

/** The first rule that refuses this classification, or null. */
export function checkRules(
  c: Classification,
  rules: PostgresRules,
  options: { copyOut?: boolean } = {},
): Refusal | null {
  const what =
    c.class === 'function-call' && c.functions.length > 0
      ? `function-call: ${c.functions.join(', ')}`
      : c.class;
  if (rules.readOnly && c.readWrite === true) {
    return {
      code: 'CC_ERR_PG_STATEMENT_DENIED',
      rule: 'read-only',
      message: `coatcheck: statement refused by rule read-only (${c.class} READ WRITE); this connection's sessions stay read-only`,
    };
  }
  if (rules.readOnly && WRITE_LIKE.has(c.class)) {
    return {
      code: 'CC_ERR_PG_STATEMENT_DENIED',
      rule: 'read-only',
      message: `coatcheck: statement refused by rule read-only (${what}); this connection allows reads only`,
    };
  }
  if (rules.blockDdl && (c.class === 'ddl' || c.class === 'privilege')) {
    return {
      code: 'CC_ERR_PG_STATEMENT_DENIED',
      rule: 'block-ddl',
      message: `coatcheck: statement refused by rule block-ddl (${what}); this connection does not allow schema or privilege changes`,
    };
  }
  if (rules.requireApprovalForWrites && WRITE_LIKE.has(c.class)) {
    return {
      code: 'CC_ERR_PG_APPROVAL_REQUIRED',
      rule: 'require-approval-for-writes',
      message: `coatcheck: statement refused by rule require-approval-for-writes (${what}); approvals are not available yet, so writes on this connection are refused`,
    };
  }
  if (options.copyOut === true && rules.maskColumns.length > 0) {
    return {
      code: 'CC_ERR_PG_STATEMENT_DENIED',
      rule: 'mask-columns',
      message:
        'coatcheck: statement refused by rule mask-columns (COPY TO); columns cannot be masked in COPY output, use SELECT',
    };
  }
  return null;
}

/** A case-insensitive matcher for column-name glob patterns (shared with every front-end). */
export const columnMatcher = fieldMatcher;

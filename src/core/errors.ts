/**
 * Every error coatcheck shows a user carries a stable `code` (CC_ERR_<AREA>_<CONDITION>).
 * Codes are never renamed once published; docs/errors.md lists each one (a test keeps the
 * two in step). Messages name ids, fields and fingerprints — never secret values.
 */

export interface ErrorCodeInfo {
  /** HTTP status the admin API and HTTP front-end answer with. */
  readonly status: number;
  readonly description: string;
  readonly solution: string;
}

export const ERROR_CODES = {
  CC_ERR_INTERNAL: {
    status: 500,
    description: 'An unexpected fault. The message carries an incident id that also appears in the log.',
    solution: 'Look up the incident id in the gateway log and report it.',
  },
  CC_ERR_INVALID_ARGUMENT: {
    status: 400,
    description: 'A command or API argument is missing or malformed; the message names the field.',
    solution: 'Fix the named argument.',
  },
  CC_ERR_NOT_FOUND: {
    status: 404,
    description: 'The named secret, connection, agent, ticket or route does not exist.',
    solution: 'Check the name or id (list commands show what exists).',
  },
  CC_ERR_ALREADY_EXISTS: {
    status: 409,
    description: 'A secret, connection or agent with that name already exists.',
    solution: 'Pick another name, or remove the existing one first.',
  },
  CC_ERR_CONFIG_INVALID: {
    status: 500,
    description: 'The config file does not validate; the message names the file, line and field.',
    solution: 'Fix the named field in the config file.',
  },
  CC_ERR_HOME_MISSING: {
    status: 500,
    description: 'The coatcheck home directory (or its config file) does not exist.',
    solution: 'Run `coatcheck init` (or pass --dir / set COATCHECK_HOME).',
  },
  CC_ERR_HOME_EXISTS: {
    status: 409,
    description: '`coatcheck init` found an existing home and refuses to overwrite it.',
    solution: 'Use another --dir, or remove the old home deliberately.',
  },
  CC_ERR_MASTER_KEY_MISSING: {
    status: 500,
    description: 'No master key: COATCHECK_MASTER_KEY is unset and the key file is absent.',
    solution: 'Set COATCHECK_MASTER_KEY or restore the master.key file.',
  },
  CC_ERR_MASTER_KEY_INVALID: {
    status: 500,
    description: 'The master key is not 32 bytes of base64, or its file is readable by others.',
    solution: 'Provide the key exactly as `coatcheck init` or `keys rotate` wrote it; chmod 600 the file.',
  },
  CC_ERR_MASTER_KEY_WRONG: {
    status: 500,
    description: 'The master key does not open this store (it belongs to another store, or is an old key).',
    solution: 'Use the master key this store was created or last rotated with.',
  },
  CC_ERR_STORE_CORRUPT: {
    status: 500,
    description: 'A stored record failed its integrity check (authenticated encryption or structure).',
    solution: 'Restore the store from a backup; run `coatcheck audit verify` to see what changed.',
  },
  CC_ERR_STORE_UNAVAILABLE: {
    status: 503,
    description: 'The data store cannot be reached or written.',
    solution: 'Check the database (COATCHECK_DATABASE_URL) or the data directory and its disk.',
  },
  CC_ERR_STORE_SCHEMA_NEWER: {
    status: 500,
    description: 'The store was migrated by a newer coatcheck than this one.',
    solution: 'Upgrade coatcheck.',
  },
  CC_ERR_SECRET_EMPTY: {
    status: 400,
    description: 'A secret value read from stdin or a file was empty.',
    solution: 'Pipe the value in: `printf %s "$VALUE" | coatcheck secret add NAME`.',
  },
  CC_ERR_SECRET_TOO_LARGE: {
    status: 413,
    description: 'A secret value exceeds the 64 KiB limit.',
    solution: 'Store a smaller value (a key, not a document).',
  },
  CC_ERR_SECRET_IN_USE: {
    status: 409,
    description: 'The secret is the credential of a connection and cannot be removed.',
    solution: 'Remove or change the connection first, or pass --force.',
  },
  CC_ERR_DEST_INVALID: {
    status: 400,
    description: 'A destination is neither a connection name nor a host pattern.',
    solution: 'Use a connection name (`github`), a host (`api.example.com`), or a pattern (`*.example.com`).',
  },
  CC_ERR_TICKET_MALFORMED: {
    status: 400,
    description: 'The text is not shaped like a ticket (`cct_` + 28 base62 characters).',
    solution: 'Pass the ticket exactly as `token issue` printed it.',
  },
  CC_ERR_TICKET_CHECKSUM: {
    status: 400,
    description: 'The ticket is shaped right but its checksum does not match: it was mistyped or altered.',
    solution: 'Copy the ticket again from where it was issued.',
  },
  CC_ERR_TICKET_UNKNOWN: {
    status: 403,
    description: 'No such ticket exists in this store.',
    solution: 'Issue a ticket with `coatcheck token issue`.',
  },
  CC_ERR_TICKET_REVOKED: {
    status: 403,
    description: 'The ticket, or one of its ancestors, was revoked.',
    solution: 'Ask for a new ticket.',
  },
  CC_ERR_TICKET_EXPIRED: {
    status: 403,
    description: 'The ticket is past its expiry.',
    solution: 'Ask for a new ticket.',
  },
  CC_ERR_TICKET_EXHAUSTED: {
    status: 403,
    description: 'The ticket (or an ancestor it was narrowed from) has no uses left.',
    solution: 'Ask for a new ticket.',
  },
  CC_ERR_TICKET_WRONG_PRINCIPAL: {
    status: 403,
    description: 'The ticket is bound to another principal than the one presenting it.',
    solution: 'Each agent must use tickets issued to it.',
  },
  CC_ERR_TICKET_WRONG_DESTINATION: {
    status: 403,
    description: 'The ticket may not be released towards this destination.',
    solution: "Issue a ticket whose --dest covers the destination (within the secret's --allow).",
  },
  CC_ERR_TICKET_SECRET_ERASED: {
    status: 403,
    description: 'The secret the ticket stood for was deleted and its data key destroyed.',
    solution: 'The ticket can never work again; register a new secret.',
  },
  CC_ERR_TICKET_WIDENING: {
    status: 400,
    description:
      'A narrowed ticket would be wider than its parent (later expiry, more uses, other destination) or a ticket wider than its secret.',
    solution: 'Ask only for a subset of what the parent ticket (or the secret) allows.',
  },
  CC_ERR_AGENT_UNKNOWN: {
    status: 401,
    description: 'The agent key is not known (or the agent name does not exist).',
    solution: 'Create the agent with `coatcheck agent create` and use the key it printed.',
  },
  CC_ERR_AGENT_KEY_MALFORMED: {
    status: 401,
    description:
      'The agent key is not shaped like one (`cca_` + 43 base62 characters) or its checksum fails.',
    solution: 'Pass the key exactly as `agent create` printed it.',
  },
  CC_ERR_AGENT_EXPIRED: {
    status: 401,
    description: 'The agent key is past its expiry.',
    solution: 'Create a new agent key.',
  },
  CC_ERR_AGENT_REVOKED: {
    status: 401,
    description: 'The agent was revoked.',
    solution: 'Create a new agent.',
  },
  CC_ERR_ADMIN_UNAUTHORIZED: {
    status: 401,
    description: 'The admin API request lacks a valid admin key.',
    solution: 'Send `Authorization: Bearer <admin key>` (the key file is in the coatcheck home).',
  },
  CC_ERR_AUDIT_UNAVAILABLE: {
    status: 503,
    description: 'The audit log could not be written, so the operation was refused (fail closed).',
    solution: 'Restore the store; nothing was released while the audit log was down.',
  },
  CC_ERR_AUDIT_TAMPERED: {
    status: 500,
    description: '`audit verify` found an edited, removed, inserted or reordered record.',
    solution: 'Investigate the named record; restore the audit log from a trusted copy.',
  },
  CC_ERR_SERVER_UNREACHABLE: {
    status: 503,
    description: 'The CLI was told to use a running server that does not answer.',
    solution: 'Start `coatcheck serve`, or unset COATCHECK_ADMIN_URL to use the store directly.',
  },
  CC_ERR_BODY_TOO_LARGE: {
    status: 413,
    description: 'A request body exceeds the configured limit.',
    solution: 'Send a smaller body or raise the limit in the config.',
  },
  CC_ERR_DETECT_RULE_INVALID: {
    status: 500,
    description:
      'A detection rule is malformed: its id is not kebab-case, its pattern has no capture group or an unbounded quantifier, or a keyword is not lower-case ASCII. The message names the rule id.',
    solution: 'Fix the named rule (see docs/detect.md, "How to add a rule").',
  },
  CC_ERR_DETECT_UNKNOWN_RULE: {
    status: 400,
    description: 'The detector configuration (enable, disable or allowlist) names a rule id that does not exist.',
    solution: 'Use a rule id from the rule list in docs/detect.md.',
  },
  CC_ERR_DETECT_ALLOWLIST_INVALID: {
    status: 400,
    description: 'An allowlist entry is malformed: a value hash that is not 64 hex digits, or a pattern that is not a valid regular expression.',
    solution: 'Give value hashes as full SHA-256 hex digests and patterns as valid JavaScript regular expressions.',
  },
  CC_ERR_DETECT_KNOWN_SECRET_TOO_SHORT: {
    status: 400,
    description: 'A value registered with the known-secret matcher is shorter than the minimum (8 bytes); it would match ordinary text.',
    solution: 'Register only real secrets; short values are found by the pattern rules if they have a known shape.',
  },
  CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE: {
    status: 413,
    description: 'A value registered with the known-secret matcher exceeds 64 KiB.',
    solution: 'Register the key itself, not a document that contains it.',
  },
  CC_ERR_DETECT_TOKENIZE_FAILED: {
    status: 500,
    description: 'The tokenize callback failed for a finding, so the text was not released (fail closed). The message names the rule id and the fingerprint.',
    solution: 'Check the vault the callback writes to; the cause is attached to the error.',
  },
  CC_ERR_DETECT_INPUT_UNREADABLE: {
    status: 400,
    description: '`coatcheck scan` could not read a path it was given; the message names the path.',
    solution: 'Check that the path exists and is readable.',
  },
  CC_ERR_DETECT_STREAM_ENDED: {
    status: 500,
    description: 'A chunk was written to a stream scanner after end() was called.',
    solution: 'Create a new scanner for each stream.',
  },
} as const satisfies Record<string, ErrorCodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class CoatcheckError extends Error {
  readonly code: ErrorCode;
  /** Extra, non-secret facts for JSON output (ids, fields, fingerprints). */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CoatcheckError';
    this.code = code;
    this.details = options?.details;
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Readonly<Record<string, unknown>> } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

export function isCoatcheckError(value: unknown): value is CoatcheckError {
  return value instanceof CoatcheckError;
}

/** Narrow an unknown throwable to a CoatcheckError, wrapping anything else as internal with an incident id. */
export function toCoatcheckError(error: unknown, incidentId: string): CoatcheckError {
  if (error instanceof CoatcheckError) return error;
  return new CoatcheckError('CC_ERR_INTERNAL', `internal error (incident ${incidentId})`, {
    cause: error,
    details: { incident: incidentId },
  });
}

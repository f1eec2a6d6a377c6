import { CoatcheckError, type ErrorCode } from '../../../core/errors.js';
import type { Principal } from '../../../core/principal.js';
import { isTicket, TICKET_LENGTH } from '../../../core/ticket-format.js';
import type { Target } from '../../../vault/destinations.js';
import { checkRules, columnMatcher, type PostgresRules } from '../rules.js';
import { type Classification, moreDangerous, type StatementClass } from '../sql/classify.js';
import type { LineageResult, LineageTracker, StatementLineage } from '../sql/lineage.js';
import type { StatementVerdict } from '../statement-policy.js';
import { normalizeStatement } from './normalize.js';
import type { PreparedEntry } from './protocol-state.js';
import type { RelayServices, StatementEvent } from './relay-services.js';
import { scrubStatement } from './scrub-statement.js';
import { kindOf, type StatementFacts, StatementSplitter } from './statement-facts.js';

/** Statements that create, run or drop prepared statements or cursors: always split and tracked. */
const STATEFUL = new Set([
  'PrepareStmt',
  'ExecuteStmt',
  'DeallocateStmt',
  'DiscardStmt',
  'DeclareCursorStmt',
  'ClosePortalStmt',
  'FetchStmt',
]);

/** One statement of a simple Query, decided. */
export interface Decided {
  readonly facts: StatementFacts;
  readonly cls: StatementClass;
  readonly mask: readonly string[] | undefined;
  readonly prepared: PreparedEntry | null;
  /** Output lineage, when masking is active. */
  lineage?: StatementLineage | null;
}

const ALLOWED: StatementVerdict = { allow: true };

export type DecideStep =
  | Decided
  | { refused: { code: ErrorCode; message: string; cls: StatementEvent['class'] } };

function settleStatement(
  v: StatementVerdict,
  facts: StatementFacts,
  cls: StatementClass,
  prepared: PreparedEntry | null,
): DecideStep {
  return v.allow
    ? { facts, cls, mask: v.mask, prepared }
    : { refused: { code: v.code, message: v.message, cls: cls as StatementEvent['class'] } };
}

/**
 * What the relay asks of each statement before anything is forwarded: its classification,
 * the connection's rules, the statement policy (and a human, when it holds the statement),
 * and its lineage when columns are masked. Socket-free: it reads the session's prepared
 * statements and reports a hold through `onHold`; the relay owns the wire.
 */
export class StatementDecider {
  readonly #services: RelayServices;
  readonly #principal: Principal;
  readonly #target: Target;
  readonly #rules: PostgresRules;
  readonly #statements: ReadonlyMap<string, PreparedEntry>;
  readonly #tracker: LineageTracker | null;
  readonly #onHold: (approvalId: string) => void;
  readonly #splitter: StatementSplitter;
  readonly #policyActive: boolean;
  /** The upstream's standard_conforming_strings (it changes how string literals are read). */
  standardStrings = true;

  constructor(input: {
    services: RelayServices;
    principal: Principal;
    target: Target;
    rules: PostgresRules;
    /** The session's prepared statements (EXECUTE is decided as the statement it runs). */
    statements: ReadonlyMap<string, PreparedEntry>;
    tracker: LineageTracker | null;
    onHold: (approvalId: string) => void;
  }) {
    this.#services = input.services;
    this.#principal = input.principal;
    this.#target = input.target;
    this.#rules = input.rules;
    this.#statements = input.statements;
    this.#tracker = input.tracker;
    this.#onHold = input.onHold;
    this.#splitter = new StatementSplitter(input.services.classifier);
    this.#policyActive =
      input.services.statementPolicy !== undefined && input.services.statementPolicy !== null;
  }

  classify(sql: string): Classification | CoatcheckError {
    try {
      return this.#services.classifier.classify(sql);
    } catch (error) {
      if (error instanceof CoatcheckError) return error;
      throw error;
    }
  }

  split(sql: string, c: Classification): readonly StatementFacts[] | CoatcheckError {
    // Without a policy, a single statement that touches no prepared statement or cursor
    // needs no facts beyond its classification: skip the second parse.
    const only = c.statements.length === 1 ? c.statements[0]! : null;
    if (only !== null && !STATEFUL.has(only) && !this.#policyActive) {
      return [{ source: sql, node: only, kind: kindOf(only), classification: c, tables: [], functions: [] }];
    }
    try {
      return this.#splitter.split(sql);
    } catch (error) {
      if (error instanceof CoatcheckError) return error;
      throw error;
    }
  }

  /** Decide one statement by policy (synchronously when no human is needed). */
  decide(input: {
    cls: StatementClass;
    kind: string;
    tables: readonly string[];
    functions: readonly string[];
    text: string;
    parameters: readonly (string | null)[] | null;
    tickets: readonly string[];
    preparation: boolean;
  }): StatementVerdict | Promise<StatementVerdict> {
    const policy = this.#services.statementPolicy;
    if (policy === undefined || policy === null) return ALLOWED;
    const patterns = this.#services.patterns();
    return policy({
      principal: this.#principal,
      connection: this.#target.connection ?? '',
      ...input,
      // Scrubbed only when a human or a record needs them (a deny or an approval).
      get shown() {
        return scrubStatement(input.text, patterns);
      },
      get shownParameters() {
        return input.parameters === null
          ? null
          : input.parameters.map((p) => (p === null ? null : scrubStatement(p, patterns)));
      },
      onHold: this.#onHold,
    });
  }

  normalized(source: string): string | CoatcheckError {
    if (this.#services.statementPolicy === undefined || this.#services.statementPolicy === null) return '';
    try {
      return normalizeStatement(source, this.standardStrings);
    } catch (error) {
      if (error instanceof CoatcheckError) return error;
      throw error;
    }
  }

  /** Lineage of one Query or Parse; a catalog that cannot be read refuses the statement (fail closed). */
  async analyze(
    sql: string,
    masks: ReadonlyArray<readonly string[] | undefined>,
  ): Promise<
    { ok: true; statements: readonly StatementLineage[] } | { ok: false; code: ErrorCode; message: string }
  > {
    const extra = masks.flatMap((m) => m ?? []);
    let r: LineageResult;
    try {
      r = await this.#tracker!.analyze(sql, extra.length === 0 ? undefined : columnMatcher(extra));
    } catch (error) {
      const e =
        error instanceof CoatcheckError
          ? error
          : new CoatcheckError('CC_ERR_PG_UPSTREAM_UNREACHABLE', 'the upstream catalog could not be read', {
              cause: error,
            });
      return {
        ok: false,
        code: e.code,
        message: `coatcheck: statement refused (${e.code}): masked columns are traced through the upstream catalog, which could not be read`,
      };
    }
    return r;
  }

  /** Tickets written in a Query's text (whatever their placement). */
  ticketsIn(sql: string): string[] {
    if (!sql.includes('cct_')) return [];
    const found: string[] = [];
    for (let at = sql.indexOf('cct_'); at !== -1; at = sql.indexOf('cct_', at + 1)) {
      const text = sql.slice(at, at + TICKET_LENGTH);
      if (isTicket(text)) found.push(text);
    }
    return found;
  }

  decideStatement(f: StatementFacts, tickets: readonly string[]): DecideStep | Promise<DecideStep> {
    let cls = f.classification.class;
    let prepared: PreparedEntry | null = null;
    let kind = f.kind;
    let tables = f.tables;
    let functions = f.functions;
    let text: string | CoatcheckError;
    let parameters: string[] | null = null;
    if (f.execute !== undefined) {
      // EXECUTE runs the prepared statement: it is decided as that statement, with these arguments.
      prepared = this.#statements.get(f.execute.name) ?? null;
      if (prepared === null) {
        return {
          refused: {
            code: 'CC_ERR_PG_STATEMENT_DENIED',
            message: `coatcheck: statement refused: prepared statement "${f.execute.name}" is not known to the gateway`,
            cls,
          },
        };
      }
      const rules = checkRules(prepared.classification, this.#rules, { copyOut: false });
      if (rules !== null)
        return { refused: { code: rules.code, message: rules.message, cls: prepared.classification.class } };
      cls = moreDangerous(prepared.classification.class, cls === 'read' ? 'empty' : cls);
      kind = prepared.kind;
      tables = [...new Set([...prepared.tables, ...tables])].sort();
      functions = [...new Set([...prepared.functions, ...functions])].sort();
      const own = this.normalized(f.source);
      if (own instanceof CoatcheckError)
        return { refused: { code: own.code, message: `coatcheck: ${own.message}`, cls } };
      text = prepared.normalized;
      parameters = [own];
    } else {
      text = this.normalized(f.source);
      if (text instanceof CoatcheckError)
        return { refused: { code: text.code, message: `coatcheck: ${text.message}`, cls } };
    }
    const verdict = this.decide({
      cls,
      kind: f.prepare?.kind ?? kind,
      tables,
      functions,
      text,
      parameters,
      tickets,
      preparation: f.prepare !== undefined,
    });
    if (verdict instanceof Promise) return verdict.then((v) => settleStatement(v, f, cls, prepared));
    return settleStatement(verdict, f, cls, prepared);
  }
}

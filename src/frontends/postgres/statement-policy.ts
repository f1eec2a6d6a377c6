import { createHash } from 'node:crypto';
import { type GateServices, gate } from '../../approvals/gate.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import { TICKET_PATTERN } from '../../core/ticket-format.js';
import { keyedHash } from '../../vault/envelope.js';
import type { StatementClass } from './sql/classify.js';

export type StatementVerdict =
  /** `mask`: column patterns a policy's `@mask` asks to hide in this statement's rows. */
  | { readonly allow: true; readonly mask?: readonly string[] }
  | { readonly allow: false; readonly code: ErrorCode; readonly message: string };

/** One statement to decide, as facts of its parse tree and its whole normalised text. */
export interface StatementRequest {
  readonly principal: Principal;
  readonly connection: string;
  readonly cls: StatementClass;
  /** The statement kind (`delete`, `select`, `execute`, ...). For EXECUTE: the prepared statement's. */
  readonly kind: string;
  readonly tables: readonly string[];
  readonly functions: readonly string[];
  /** The whole normalised statement (never truncated); tickets in it are still tickets. */
  readonly text: string;
  /** The same text scrubbed of tickets, known secrets and detector findings: for approvers and audit. */
  readonly shown: string;
  /** Parameters of this execution (bound values, or EXECUTE's arguments), as text; null when none. */
  readonly parameters: readonly (string | null)[] | null;
  /** The parameters scrubbed like `shown`. */
  readonly shownParameters: readonly (string | null)[] | null;
  /** Tickets the statement or its parameters carry (the approval binds each one). */
  readonly tickets: readonly string[];
  /**
   * The statement is being prepared (protocol Parse, SQL PREPARE), not run: a deny refuses
   * it now; an approval is asked for when it runs (each execution is decided again).
   */
  readonly preparation: boolean;
  readonly onHold: (approvalId: string) => void;
}

/**
 * Per-statement policy: the statement's class becomes the Cedar action (`sql:read`,
 * `sql:write`, …) with facts in the context: `statement` (the whole normalised text),
 * `sql_class`, `sql_kind`, `tables`, `functions`. An allow is decided in place (cached by
 * the engine) and recorded in the statement's `postgres.query` record; a deny or an
 * approval goes through the gate, which audits the decision and holds an
 * approval-required statement until a human decides (`onHold` sends the client a notice).
 * An approval is bound to the whole normalised statement, this execution's parameters and
 * the tickets it carries.
 */
export type StatementPolicy = ((input: StatementRequest) => StatementVerdict | Promise<StatementVerdict>) & {
  /** Whether any policy in force carries `@mask` (then row descriptions must be tracked). */
  hasMasks(): boolean;
};

const ACTIONS: Partial<Record<StatementClass, string>> = {
  read: 'sql:read',
  write: 'sql:write',
  ddl: 'sql:ddl',
  privilege: 'sql:privilege',
  session: 'sql:session',
  'function-call': 'sql:call',
};
const ALLOW: StatementVerdict = { allow: true };

/** A keyed hash (the store's lookup key) where the gateway has one; plain SHA-256 only in bare test wiring. */
function detailHash(key: Buffer | undefined, text: string): string {
  if (key !== undefined) return keyedHash(key, `approval-detail:${text}`);
  return createHash('sha256').update(text).digest('hex');
}

/** What an approver reads: the whole scrubbed statement, then each parameter. */
export function approvalSummary(shown: string, parameters: readonly (string | null)[] | null): string {
  if (parameters === null || parameters.length === 0) return shown;
  const list = parameters.map((p, i) => `$${i + 1} = ${p === null ? 'NULL' : JSON.stringify(p)}`);
  return `${shown}\n-- parameters: ${list.join(', ')}`;
}

/** The statement as it runs, then each parameter on its own line (SQL literal syntax). */
export function statementPreview(text: string, parameters: readonly (string | null)[] | null): string {
  if (parameters === null || parameters.length === 0) return text;
  const lines = parameters.map(
    (p, i) => `--   $${i + 1} = ${p === null ? 'NULL' : `'${p.replace(/'/g, "''")}'`}`,
  );
  return `${text}\n-- parameters:\n${lines.join('\n')}`;
}

/** Null when no policy is configured: the built-in policy allows every statement, so skip the work. */
export function createStatementPolicy(services: GateServices): StatementPolicy | null {
  if (services.policy.engine.source === 'builtin' && services.policy.path === null) return null;
  const decideStatement = (input: StatementRequest): StatementVerdict | Promise<StatementVerdict> => {
    const action = ACTIONS[input.cls];
    if (action === undefined) return ALLOW; // empty statements and transaction control
    const context = {
      statement: input.text.replace(TICKET_PATTERN, '[ticket]'),
      sql_class: input.cls,
      sql_kind: input.kind,
      tables: [...input.tables],
      functions: [...input.functions],
    };
    const resource = { type: 'Connection' as const, id: input.connection, attrs: { type: 'postgres' } };
    const decision = services.policy.engine.decide({ principal: input.principal, action, resource, context });
    if (decision.effect === 'allow' || (decision.effect === 'approval' && input.preparation))
      return decision.mask.length > 0 ? { allow: true, mask: decision.mask } : ALLOW;
    const parameters = input.parameters === null ? '' : JSON.stringify(input.parameters);
    return gate(services, {
      principal: input.principal,
      action,
      resource,
      context,
      operation: {
        kind: 'sql',
        connection: input.connection,
        action,
        summary: approvalSummary(input.shown, input.shownParameters),
        detail: {
          statement: input.shown,
          statement_hash: detailHash(services.detailKey, input.text),
          parameters: input.shownParameters === null ? null : JSON.stringify(input.shownParameters),
          parameters_hash: detailHash(services.detailKey, parameters),
          tickets: input.tickets.map((t) => detailHash(services.detailKey, t)).join(','),
        },
        // Raw here: the approvals module cleans it (tickets, secrets, findings) before keeping it.
        preview: () => statementPreview(input.text, input.parameters),
      },
      onHold: (approval) => input.onHold(approval.id),
    }).then(
      // An allow's policy.decision record must be durable before the statement runs.
      async (result): Promise<StatementVerdict> => {
        await result.recorded;
        return result.decision.mask.length > 0 ? { allow: true, mask: result.decision.mask } : ALLOW;
      },
      (error: unknown) => {
        if (error instanceof CoatcheckError)
          return { allow: false as const, code: error.code, message: `coatcheck: ${error.message}` };
        throw error;
      },
    );
  };
  return Object.assign(decideStatement, {
    hasMasks: () => services.policy.engine.policies.some((p) => p.annotations.mask !== undefined),
  });
}

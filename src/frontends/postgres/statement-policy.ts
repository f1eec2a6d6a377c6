import { type GateServices, gate } from '../../approvals/gate.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import { TICKET_PATTERN } from '../../core/ticket-format.js';
import type { StatementClass } from './sql/classify.js';

export type StatementVerdict =
  /** `mask`: column patterns a policy's `@mask` asks to hide in this statement's rows. */
  | { readonly allow: true; readonly mask?: readonly string[] }
  | { readonly allow: false; readonly code: ErrorCode; readonly message: string };

/**
 * Per-statement policy: the statement's class becomes the Cedar action (`sql:read`,
 * `sql:write`, …) with the statement text in `context.statement`. An allow is decided in
 * place (cached by the engine) and recorded in the statement's `postgres.query` record; a
 * deny or an approval goes through the gate, which audits the decision and holds an
 * approval-required statement until a human decides (`onHold` sends the client a notice).
 */
export type StatementPolicy = ((input: {
  principal: Principal;
  connection: string;
  sql: string;
  cls: StatementClass;
  onHold: (approvalId: string) => void;
}) => StatementVerdict | Promise<StatementVerdict>) & {
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

/** Statement text for policy context and approvers: tickets never leave as themselves. */
function redact(sql: string): string {
  return sql.replace(TICKET_PATTERN, '[ticket]').slice(0, 8192);
}

/** Null when no policy is configured: the built-in policy allows every statement, so skip the work. */
export function createStatementPolicy(services: GateServices): StatementPolicy | null {
  if (services.policy.engine.source === 'builtin' && services.policy.path === null) return null;
  const decideStatement = (
    input: Parameters<StatementPolicy>[0],
  ): StatementVerdict | Promise<StatementVerdict> => {
    const action = ACTIONS[input.cls];
    if (action === undefined) return ALLOW; // empty statements and transaction control
    const statement = redact(input.sql);
    const context = { statement, sql_class: input.cls };
    const resource = { type: 'Connection' as const, id: input.connection, attrs: { type: 'postgres' } };
    const decision = services.policy.engine.decide({ principal: input.principal, action, resource, context });
    if (decision.effect === 'allow')
      return decision.mask.length > 0 ? { allow: true, mask: decision.mask } : ALLOW;
    return gate(services, {
      principal: input.principal,
      action,
      resource,
      context,
      operation: {
        kind: 'sql',
        connection: input.connection,
        action,
        summary: statement.slice(0, 500),
        detail: { statement },
      },
      onHold: (approval) => input.onHold(approval.id),
    }).then(
      (result): StatementVerdict =>
        result.decision.mask.length > 0 ? { allow: true, mask: result.decision.mask } : ALLOW,
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

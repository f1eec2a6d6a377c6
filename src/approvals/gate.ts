import type { AuditLog } from '../audit/audit-log.js';
import { CoatcheckError } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import type { CedarValue, Decision } from '../policy/policy-engine.js';
import type { PolicyHolder } from '../policy/policy-holder.js';
import type { Approvals, ApprovalView, Operation } from './approvals.js';

export interface GateServices {
  readonly policy: PolicyHolder;
  readonly approvals: Approvals;
  readonly audit: AuditLog;
  /** How long a data-path operation is held waiting for an approver. */
  readonly holdTimeoutMs: number;
  /**
   * Key for hashing operation details kept in approval records (statement text, parameters,
   * tickets): a keyed hash, so a low-entropy value inside cannot be guessed from the store.
   */
  readonly detailKey?: Buffer;
}

/** Longest operation summary kept in a `policy.decision` record (the approval keeps it whole). */
const MAX_DECISION_SUMMARY = 16 * 1024;

function boundedSummary(summary: string): string {
  if (summary.length <= MAX_DECISION_SUMMARY) return summary;
  return `${summary.slice(0, MAX_DECISION_SUMMARY)}… (${summary.length - MAX_DECISION_SUMMARY} more characters; the approval holds the whole text)`;
}

export interface GateRequest {
  readonly principal: Principal;
  /** Cedar action: `sql:write`, `http:POST`, `exchange`, `mcp:call`. */
  readonly action: string;
  readonly resource: {
    readonly type: 'Connection' | 'Secret';
    readonly id: string;
    readonly attrs?: Record<string, CedarValue>;
  };
  readonly context: Record<string, CedarValue>;
  /** The exact operation, for approval binding. */
  readonly operation: Operation;
  /** Told the approval id when the operation starts waiting (a PostgreSQL NoticeResponse, a log line). */
  readonly onHold?: (approval: ApprovalView) => void;
  readonly signal?: AbortSignal;
}

export interface GateResult {
  readonly decision: Decision;
  readonly approval: ApprovalView | null;
  /**
   * Resolves once the decision's audit record is durable. For an allow the gate does not
   * wait for it (the front-end's own release records share the same group commit); the
   * front-end must await it before it forwards anything.
   */
  readonly recorded: Promise<unknown>;
}

/**
 * The policy step of the exchange pipeline: decide, audit the decision (durably: a
 * decision that cannot be recorded is not acted on), and for approval-required
 * operations hold until a human decides — or refuse with a stable code.
 */
export async function gate(services: GateServices, request: GateRequest): Promise<GateResult> {
  const engine = services.policy.engine;
  const decision = engine.decide({
    principal: request.principal,
    action: request.action,
    resource: request.resource,
    context: request.context,
  });
  const recorded = services.audit.append({
    type: 'policy.decision',
    actor: request.principal.ref,
    data: {
      action: request.action,
      resource: `${request.resource.type}::${request.resource.id}`,
      effect: decision.effect,
      policies: [...decision.policies],
      source: engine.source,
      summary: boundedSummary(request.operation.summary),
      errors: decision.errors.length > 0 ? [...decision.errors] : undefined,
    },
  });
  if (decision.effect === 'allow') {
    recorded.catch(() => undefined); // awaited by the caller before it forwards
    return { decision, approval: null, recorded };
  }
  await recorded;
  if (decision.effect === 'deny') {
    const why =
      decision.policies.length > 0
        ? `forbidden by policy ${decision.policies.join(', ')}`
        : `no policy permits ${request.action} on ${request.resource.type} ${request.resource.id} (default deny)`;
    throw new CoatcheckError('CC_ERR_POLICY_DENIED', why, {
      details: { action: request.action, policies: [...decision.policies] },
    });
  }
  const ready = await services.approvals.use(request.principal, request.operation);
  if (ready !== null) return { decision, approval: ready, recorded };
  const pending = await services.approvals.request(request.principal, request.operation, {
    approvers: decision.approvers,
    quorum: decision.quorum,
  });
  request.onHold?.(pending);
  const outcome = await services.approvals.waitForDecision(
    pending.id,
    services.holdTimeoutMs,
    request.signal,
  );
  if (outcome.status === 'approved') {
    const used = await services.approvals.use(request.principal, request.operation);
    if (used !== null) return { decision, approval: used, recorded };
  }
  if (outcome.status === 'denied') {
    throw new CoatcheckError('CC_ERR_APPROVAL_DENIED', `approval ${pending.id} was denied`, {
      details: { approval: pending.id },
    });
  }
  throw new CoatcheckError(
    'CC_ERR_APPROVAL_REQUIRED',
    `approval ${pending.id} is ${outcome.status === 'pending' ? 'still pending' : outcome.status}; retry once it is approved`,
    { details: { approval: pending.id, status: outcome.status } },
  );
}

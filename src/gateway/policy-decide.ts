import { type GateServices, gate } from '../approvals/gate.js';
import type { Decide, DecisionInput } from './pipeline.js';

/**
 * The pipeline's policy step, backed by the Cedar policy set and just-in-time approvals.
 * Denials and failed approvals throw with their own codes (CC_ERR_POLICY_DENIED,
 * CC_ERR_APPROVAL_*); an approval-required operation is held here until decided.
 */
export function createPolicyDecide(services: GateServices): Decide {
  return async (input: DecisionInput) => {
    const attributes = input.operation.attributes;
    const context: Record<string, string> = {};
    for (const key of [
      'method',
      'path',
      'host',
      'statement',
      'sql_class',
      'tool',
      'workflow',
      'subtask',
      'source_ip',
      // Kubernetes: the request in the API server's terms (src/frontends/kubernetes).
      'verb',
      'api_group',
      'resource',
      'subresource',
      'namespace',
      'name',
      'impersonate_user',
      'impersonate_groups',
    ] as const) {
      const value = attributes[key];
      if (value !== undefined && value !== '') context[key] = value;
    }
    // A subtask's workflow and node come from its authenticated identity, never from the request.
    for (const key of ['workflow', 'subtask'] as const) {
      const value = input.principal.kind === 'subtask' ? input.principal.attributes[key] : undefined;
      if (typeof value === 'string') context[key] = value;
      else if (input.principal.kind === 'subtask') delete context[key];
    }
    const result = await gate(services, {
      principal: input.principal,
      action: input.operation.action,
      resource: { type: 'Connection', id: input.connection.name, attrs: { type: input.connection.type } },
      context,
      operation: {
        kind: input.operation.action.startsWith('sql:')
          ? 'sql'
          : input.operation.action.startsWith('http:')
            ? 'http'
            : 'other',
        connection: input.connection.name,
        action: input.operation.action,
        summary: input.operation.description,
        detail: { ...attributes },
        ...(input.operation.preview === undefined ? {} : { preview: input.operation.preview }),
      },
      // Read only when an approval is waited for (the session's signal is made on first use).
      get signal() {
        return input.signal;
      },
    });
    return {
      verdict: 'allow',
      reasons: [
        ...result.decision.policies,
        ...(result.approval === null ? [] : [`approval:${result.approval.id}`]),
      ],
      recorded: result.recorded,
      mask: result.decision.mask,
    };
  };
}

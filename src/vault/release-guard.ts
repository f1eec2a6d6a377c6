import type { AuditGuard } from '../audit/audit-log.js';
import type { Principal } from '../core/principal.js';
import type { DeadReason } from '../store/types.js';
import { refuse } from './model.js';

/**
 * What a release depends on, re-checked in the transaction that writes its audit record
 * (ADR 0013): the ticket chain, its secret and the principal (an agent, or a workflow
 * node). Caches may lag a revocation on another replica; this check cannot.
 */
export function releaseGuard(principal: Principal, tickets: readonly string[], secretId: string): AuditGuard {
  const agent =
    principal.kind === 'agent' && principal.ref.startsWith('agent:') ? principal.ref.slice(6) : null;
  const node = principal.kind === 'subtask' ? principal.attributes.subtask : undefined;
  // A subtask's key works only while the agent that started its run is live: checked here
  // too, as the agent's own key is, since the key's check may be served from a cache.
  const startedBy = principal.kind === 'subtask' ? principal.attributes.startedBy : undefined;
  const starter = typeof startedBy === 'string' && startedBy.startsWith('agent:') ? startedBy.slice(6) : null;
  const agents = agent !== null ? [agent] : starter !== null ? [starter] : [];
  const ids = {
    tickets,
    agents,
    workflows: typeof node === 'string' ? [node] : [],
    secrets: [secretId],
  };
  return {
    ids,
    refuse: (dead) => {
      const [id, reason] = dead.entries().next().value as [string, DeadReason];
      const details = { checkedAt: 'commit', ...(tickets.length > 0 ? { ticket: tickets[0] } : {}) };
      if (id === agent) {
        const code = reason === 'expired' ? 'CC_ERR_AGENT_EXPIRED' : 'CC_ERR_AGENT_REVOKED';
        return refuse(code, `agent ${id} is no longer live`, { ...details, agent: id });
      }
      if (id === starter) {
        return refuse(
          'CC_ERR_WORKFLOW_REVOKED',
          `the agent that started workflow node ${String(node)} is no longer live`,
          {
            ...details,
            subtask: node,
          },
        );
      }
      if (id === node) {
        const code = reason === 'expired' ? 'CC_ERR_WORKFLOW_EXPIRED' : 'CC_ERR_WORKFLOW_ENDED';
        return refuse(code, `workflow node ${id} is no longer active`, { ...details, subtask: id });
      }
      if (id === secretId)
        return refuse('CC_ERR_TICKET_SECRET_ERASED', `secret ${id} was erased`, { ...details, secret: id });
      const code = reason === 'expired' ? 'CC_ERR_TICKET_EXPIRED' : 'CC_ERR_TICKET_REVOKED';
      return refuse(code, `ticket ${tickets[0]} can no longer be exchanged (${id} is ${reason})`, details);
    },
  };
}

/**
 * Who is asking. Agent keys produce `kind: 'agent'`; OIDC-verified JWTs will produce
 * `kind: 'oidc'` with the same shape, so policy, tickets and audit treat both alike.
 */
export interface Principal {
  readonly kind: 'agent' | 'oidc' | 'admin' | 'subtask';
  /**
   * Stable reference used for ticket binding and audit: `agent:agt_…`, `oidc:<issuer>#<sub>`,
   * `admin`, and for workflow nodes `workflow:wfl_…` (the root) or `subtask:wfl_…`.
   */
  readonly ref: string;
  /** Human-readable name (agent name, JWT subject or email). */
  readonly name: string;
  readonly groups: readonly string[];
  readonly attributes: Readonly<Record<string, string | number | boolean | readonly string[]>>;
  /** Epoch ms after which the identity is no longer valid (agent key expiry, JWT exp). */
  readonly expiresAt: number | null;
}

export function agentRef(agentId: string): string {
  return `agent:${agentId}`;
}

/** The principal ref of a workflow node: the root is `workflow:<id>`, every other node `subtask:<id>`. */
export function workflowNodeRef(id: string, isRoot: boolean): string {
  return `${isRoot ? 'workflow' : 'subtask'}:${id}`;
}

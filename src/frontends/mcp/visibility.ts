import type { FrontendDeps } from '../../gateway/deps.js';
import type { ToolVisibility } from './mcp-session.js';

/** tools/list shows what policy allows or holds for approval; nothing is requested by listing. */
export function toolVisibility(deps: Pick<FrontendDeps, 'gate'>): ToolVisibility {
  return (principal, connection, tool) =>
    deps.gate.policy.engine.decide({
      principal,
      action: 'mcp:call',
      resource: { type: 'Connection', id: connection, attrs: { type: 'mcp' } },
      context: { tool },
    }).effect !== 'deny';
}

import type { FrontendDeps } from '../../gateway/deps.js';
import { bodyBudget, type HttpRoute, type HttpRouteContext } from '../../gateway/http-mount.js';
import { McpGateway } from './mcp-gateway.js';
import { toolVisibility } from './visibility.js';

/**
 * The MCP gateway as a route of the HTTP listener: `/mcp/<connection>` (docs/mcp.md),
 * with its own pipeline (sessions and metrics labelled `mcp`).
 */
export function mcpRoute(deps: FrontendDeps): (context: HttpRouteContext) => HttpRoute & {
  readonly engine: McpGateway;
} {
  return ({ mount, relays, services }) => {
    const pipeline = mount.pipeline('mcp', { ...services });
    const engine = new McpGateway(pipeline, {
      bodyLimit: deps.config.http.bodyLimit,
      bodyBudget: bodyBudget(deps),
      upstreamTimeoutMs: deps.config.http.upstreamTimeoutMs,
      maxTicketsPerRequest: deps.config.http.maxTicketsPerRequest,
      visible: toolVisibility(deps),
      ...(relays === undefined ? {} : { relays }),
    });
    return {
      prefix: '/mcp/',
      engine,
      serve: (req, res) => engine.serve(req, res),
      close: () => engine.close(),
    };
  };
}

import type { Logger } from 'pino';
import { type HttpListener, httpFrontend } from '../frontends/http/start.js';
import type { LlmEngine } from '../frontends/llm/llm-engine.js';
import { llmRoute } from '../frontends/llm/route.js';
import type { McpGateway } from '../frontends/mcp/mcp-gateway.js';
import { mcpRoute } from '../frontends/mcp/route.js';
import type { FrontendDeps } from '../gateway/deps.js';
import { type Frontend, GatewayDriver } from '../gateway/driver.js';
import type { HttpOverrides } from '../gateway/http-mount.js';

/**
 * The composition of front-ends on listeners. The HTTP listener serves the reverse proxy,
 * with the LLM guard and the MCP gateway mounted on it as routes; the front-ends do not
 * know each other, this file wires them.
 */
export interface HttpFrontend extends HttpListener {
  /** The LLM prompt guard at /llm/<connection>/v1/… (docs/llm.md). */
  readonly llm: LlmEngine;
  /** The MCP gateway at /mcp/<connection> (docs/mcp.md). */
  readonly mcp: McpGateway;
}

/** The HTTP listener with its routes: reverse proxy, `/llm/`, `/mcp/`. */
export function httpGateway(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  overrides: HttpOverrides = {},
): Frontend<HttpFrontend> {
  const llm = llmRoute(deps, overrides.inspector === undefined ? {} : { inspector: overrides.inspector });
  const mcp = mcpRoute(deps);
  let llmEngine: LlmEngine | null = null;
  let mcpEngine: McpGateway | null = null;
  const base = httpFrontend(deps, listen, {
    ...overrides,
    routes: [
      (context) => {
        const route = llm(context);
        llmEngine = route.engine;
        return route;
      },
      (context) => {
        const route = mcp(context);
        mcpEngine = route.engine;
        return route;
      },
    ],
  });
  return {
    name: base.name,
    async start(mount) {
      const listener = await base.start(mount);
      return { ...listener, llm: llmEngine!, mcp: mcpEngine! };
    },
  };
}

/** The HTTP front-end (with the LLM and MCP routes) on a driver of its own: tests and embedding. */
export async function startHttpFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  log: Logger,
  overrides: HttpOverrides = {},
): Promise<HttpFrontend> {
  const driver = new GatewayDriver({ registry: deps.metrics, log, store: deps.store, clock: deps.clock });
  return driver.start(httpGateway(deps, listen, overrides));
}

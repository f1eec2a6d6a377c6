import type { Readable, Writable } from 'node:stream';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Logger } from 'pino';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { FrontendDeps } from '../../gateway/deps.js';
import { type Frontend, GatewayDriver, type Mount } from '../../gateway/driver.js';
import { createFoundSecrets } from '../../gateway/found-secrets.js';
import { createIndexedInspector, sharedKnownSecretIndex } from '../../gateway/known-secret-index.js';
import { createPolicyDecide } from '../../gateway/policy-decide.js';
import { GatewaySession } from '../../gateway/session.js';
import { McpSession } from './mcp-session.js';
import { toolVisibility } from './visibility.js';

export interface McpStdioOptions {
  readonly connection: string;
  /** The agent key (COATCHECK_AGENT_KEY). */
  readonly agentKey: string | null;
  readonly stdin: Readable;
  readonly stdout: Writable;
}

/** A running stdio session: `done` settles with its outcome when the client closes stdin (or it is ended). */
export interface McpStdio {
  readonly done: Promise<ErrorCode | 'ok'>;
}

/**
 * `coatcheck mcp stdio CONNECTION`: the MCP gateway for clients that launch a command
 * (Claude Desktop, IDEs). One MCP session over this process's stdin/stdout, the same
 * pipeline as /mcp/<connection>; it ends when the client closes stdin. Runs on a driver
 * of its own; a refusal is thrown (the CLI prints it), an unexpected failure becomes
 * CC_ERR_INTERNAL with a logged incident id.
 */
export async function runMcpStdio(
  deps: FrontendDeps,
  log: Logger,
  options: McpStdioOptions,
): Promise<ErrorCode | 'ok'> {
  const driver = new GatewayDriver({ registry: deps.metrics, log, store: deps.store, clock: deps.clock });
  try {
    const stdio = await driver.start(mcpStdioFrontend(deps, options));
    return await stdio.done;
  } finally {
    await driver.stop();
  }
}

/** The stdio MCP session as a driver front-end (frontend label `mcp`, mount `mcp-stdio`). */
export function mcpStdioFrontend(deps: FrontendDeps, options: McpStdioOptions): Frontend<McpStdio> {
  return { name: 'mcp-stdio', start: async (mount) => ({ done: runSession(mount, deps, options) }) };
}

async function runSession(
  mount: Mount,
  deps: FrontendDeps,
  options: McpStdioOptions,
): Promise<ErrorCode | 'ok'> {
  const pipeline = mount.pipeline('mcp', {
    vault: deps.vault,
    agents: deps.identity,
    connections: deps.connections,
    audit: deps.audit,
    store: deps.store,
    clock: deps.clock,
    inspector: createIndexedInspector(sharedKnownSecretIndex(deps.vault, deps.store)),
    decide: createPolicyDecide(deps.gate),
  });
  let refusal: CoatcheckError | null = null;
  let result: ErrorCode | 'ok' = 'ok';
  await mount.serve(
    (error) => {
      refusal = error;
    },
    async () => {
      const session = pipeline.openSession(new GatewaySession('mcp', deps.clock));
      let outcome: ErrorCode | 'ok' = 'ok';
      let mcp: McpSession | null = null;
      try {
        if (options.agentKey === null) {
          throw new CoatcheckError(
            'CC_ERR_HTTP_PROXY_AUTH_REQUIRED',
            'set COATCHECK_AGENT_KEY to an agent key',
          );
        }
        const principal = await pipeline.authenticate(session, options.agentKey);
        const connection = await pipeline.resolveConnection(session, options.connection, ['mcp']);
        mcp = await McpSession.open({
          pipeline,
          session,
          principal,
          connection,
          foundSecrets: createFoundSecrets(deps.vault, sharedKnownSecretIndex(deps.vault, deps.store)),
          visible: toolVisibility(deps),
          maxTickets: deps.config.http.maxTicketsPerRequest,
          upstreamTimeoutMs: deps.config.http.upstreamTimeoutMs,
        });
        const transport = new StdioServerTransport(options.stdin, options.stdout);
        const closed = new Promise<void>((resolve) => {
          transport.onclose = () => resolve();
          options.stdin.once('end', () => resolve());
          session.signal.addEventListener('abort', () => resolve());
        });
        // At shutdown the driver's deadline ends the session like the client closing stdin.
        mount.onDeadline(() => session.terminate('CC_ERR_GATEWAY_STOPPING'));
        await mcp.connect(transport);
        await closed;
        outcome = session.terminatedBy ?? 'ok';
        result = outcome;
      } catch (error) {
        const failure = mount.fail(error);
        outcome = failure.code;
        throw failure;
      } finally {
        await mcp?.close();
        pipeline.closeSession(session, outcome, { transport: 'stdio', calls: mcp?.calls ?? 0 });
      }
    },
  );
  if (refusal !== null) throw refusal;
  return result;
}

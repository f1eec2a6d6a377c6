import type { Readable, Writable } from 'node:stream';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import { createFoundSecrets } from '../../gateway/found-secrets.js';
import { createKnownSecretInspector } from '../../gateway/inspector.js';
import { gatewayMetricsFor } from '../../gateway/metrics.js';
import { ExchangePipeline } from '../../gateway/pipeline.js';
import { createPolicyDecide } from '../../gateway/policy-decide.js';
import { createStoreRecorder, GatewaySession } from '../../gateway/session.js';
import type { Context } from '../../server/context.js';
import { McpSession } from './mcp-session.js';

export interface McpStdioOptions {
  readonly connection: string;
  /** The agent key (COATCHECK_AGENT_KEY). */
  readonly agentKey: string | null;
  readonly stdin: Readable;
  readonly stdout: Writable;
}

/**
 * `coatcheck mcp stdio CONNECTION`: the MCP gateway for clients that launch a command
 * (Claude Desktop, IDEs). One MCP session over this process's stdin/stdout, the same
 * pipeline as /mcp/<connection>; it ends when the client closes stdin.
 */
export async function runMcpStdio(ctx: Context, options: McpStdioOptions): Promise<ErrorCode | 'ok'> {
  const log = ctx.log;
  const metrics = gatewayMetricsFor(ctx.metrics);
  const recorder = createStoreRecorder(ctx.store, log, metrics);
  const pipeline = new ExchangePipeline('mcp', {
    vault: ctx.vault,
    agents: ctx.identity,
    connections: ctx.connections,
    audit: ctx.audit,
    store: ctx.store,
    clock: ctx.clock,
    log,
    metrics,
    recorder,
    inspector: createKnownSecretInspector(() => ctx.vault.knownSecrets()),
    decide: createPolicyDecide(ctx.gate),
  });
  const session = pipeline.openSession(new GatewaySession('mcp', ctx.clock));
  let outcome: ErrorCode | 'ok' = 'ok';
  let mcp: McpSession | null = null;
  try {
    if (options.agentKey === null) {
      throw new CoatcheckError('CC_ERR_HTTP_PROXY_AUTH_REQUIRED', 'set COATCHECK_AGENT_KEY to an agent key');
    }
    const principal = await pipeline.authenticate(session, options.agentKey);
    const connection = await pipeline.resolveConnection(session, options.connection, ['mcp']);
    mcp = await McpSession.open({
      pipeline,
      session,
      principal,
      connection,
      foundSecrets: createFoundSecrets(ctx.vault),
      visible: (p, name, tool) =>
        ctx.policy.engine.decide({
          principal: p,
          action: 'mcp:call',
          resource: { type: 'Connection', id: name, attrs: { type: 'mcp' } },
          context: { tool },
        }).effect !== 'deny',
      maxTickets: ctx.config.http.maxTicketsPerRequest,
      upstreamTimeoutMs: ctx.config.http.upstreamTimeoutMs,
    });
    const transport = new StdioServerTransport(options.stdin, options.stdout);
    const closed = new Promise<void>((resolve) => {
      transport.onclose = () => resolve();
      options.stdin.once('end', () => resolve());
      session.signal.addEventListener('abort', () => resolve());
    });
    await mcp.connect(transport);
    await closed;
    outcome = session.terminatedBy ?? 'ok';
    return outcome;
  } catch (error) {
    outcome = error instanceof CoatcheckError ? error.code : 'CC_ERR_INTERNAL';
    throw error;
  } finally {
    await mcp?.close();
    pipeline.closeSession(session, outcome, { transport: 'stdio', calls: mcp?.calls ?? 0 });
    pipeline.close();
    await recorder.flush();
  }
}

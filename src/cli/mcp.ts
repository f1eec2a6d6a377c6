import type { Readable, Writable } from 'node:stream';
import type { Command } from 'commander';
import type { Context } from '../server/context.js';
import type { CliIo } from './io.js';

/**
 * `coatcheck mcp stdio CONNECTION`: an MCP server on stdin/stdout for clients that launch
 * a command. It authenticates with COATCHECK_AGENT_KEY and runs in-process against the
 * home (like `serve`); stdout carries only the MCP protocol, logs go to stderr.
 */
export function registerMcpCommands(program: Command, io: CliIo, open: () => Promise<Context>): void {
  const mcp = program.command('mcp').description('the MCP gateway');
  mcp
    .command('stdio <connection>')
    .description(
      'serve one MCP session on stdin/stdout for an mcp connection (agent key in COATCHECK_AGENT_KEY)',
    )
    .action(async (connection: string) => {
      const ctx = await open();
      try {
        const { runMcpStdio } = await import('../frontends/mcp/mcp-stdio.js');
        const { frontendDeps } = await import('../server/gateway-deps.js');
        await runMcpStdio(frontendDeps(ctx), ctx.log, {
          connection,
          agentKey: io.env.COATCHECK_AGENT_KEY?.trim() || null,
          stdin: io.stdin as unknown as Readable,
          stdout: io.stdout as unknown as Writable,
        });
      } finally {
        await ctx.close();
      }
    });
}

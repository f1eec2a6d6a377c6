import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentRef } from '../../../src/core/principal.js';
import { CLI_ENTRY, cli } from '../../helpers/cli.js';
import { makeTestHome, type TestHome } from '../../helpers/home.js';

const SECRET = 'stdio-db-password-6a5b4c3d2e1f';
const FIXTURE = fileURLToPath(new URL('./fixture-server.mjs', import.meta.url));

describe('coatcheck connection add --command, and coatcheck mcp stdio', () => {
  let home: TestHome;
  let agentKey: string;
  let ticket: string;
  let log: string;

  beforeAll(async () => {
    home = await makeTestHome();
    log = join(home.dir, 'upstream.jsonl');
    writeFileSync(log, '');
    const env = { COATCHECK_HOME: home.home.dir };
    const added = await cli(
      [
        'connection',
        'add',
        'tools',
        '--type',
        'mcp',
        '--command',
        `'${process.execPath}' "${FIXTURE}" ${log.replace(/ /g, '\\ ')}`,
        '--json',
      ],
      { env },
    );
    expect(added.code).toBe(0);
    expect(JSON.parse(added.stdout).url).toMatch(/^stdio:/);
    const ctx = await home.open();
    try {
      await ctx.vault.addSecret(
        { name: 'db', value: Buffer.from(SECRET), allow: ['tools'], placements: ['body'] },
        'admin:test',
      );
      const created = await ctx.agents.create({ name: 'desktop' }, 'admin:test');
      agentKey = created.key;
      ticket = (
        await ctx.vault.issueTicket(
          { secret: 'db', principal: agentRef(created.agent.id), destinations: ['tools'] },
          'admin:test',
        )
      ).ticket;
    } finally {
      await ctx.close();
    }
  });

  afterAll(() => home?.remove());

  it('refuses --command for other connection types, and a missing --url', async () => {
    const env = { COATCHECK_HOME: home.home.dir };
    const wrong = await cli(['connection', 'add', 'x', '--type', 'http', '--command', 'node s.js'], { env });
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toContain('--command is for mcp connections, instead of --url');
    const unterminated = await cli(['connection', 'add', 'y', '--type', 'mcp', '--command', "node 's.js"], {
      env,
    });
    expect(unterminated.stderr).toContain('CC_ERR_MCP_BAD_COMMAND');
  });

  it('serves one MCP session on stdio: the agent key from the environment, tickets exchanged', async () => {
    const client = new Client({ name: 'desktop', version: '1.0.0' });
    await client.connect(
      new StdioClientTransport({
        command: process.execPath,
        args: ['--import', 'tsx', CLI_ENTRY, 'mcp', 'stdio', 'tools'],
        env: { PATH: process.env.PATH ?? '', COATCHECK_HOME: home.home.dir, COATCHECK_AGENT_KEY: agentKey },
        cwd: fileURLToPath(new URL('../../..', import.meta.url)),
        stderr: 'ignore',
      }),
    );
    try {
      const { tools } = await client.listTools();
      expect(tools.map((t) => t.name)).toContain('store');
      const result = await client.callTool({ name: 'store', arguments: { text: ticket } });
      expect(result.content).toEqual([{ type: 'text', text: 'stored' }]);
      const calls = readFileSync(log, 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { tool?: string; arguments?: unknown });
      expect(calls.at(-1)).toEqual({ tool: 'store', arguments: { text: SECRET } });
    } finally {
      await client.close();
    }
  }, 60_000);
});

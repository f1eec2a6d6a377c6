import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILTIN_RULES } from '../../../src/detect/rules/index.js';
import { stdioUrl } from '../../../src/frontends/mcp/command.js';
import { cli } from '../../helpers/cli.js';
import { type Gateway, startGateway } from '../http/harness.js';

const SECRET = 'mcp-db-password-4e3d2c1b0a99';
const CANARY = 'mcp-canary-8d7c6b5a4f3e2d1c';
const UPSTREAM_KEY = 'mcp-upstream-key-1f2e3d4c5b6a';
const GITHUB_TOKEN = BUILTIN_RULES.find((r) => r.id === 'github-pat-classic')!.examples.positives[0]!.secret;
const TICKET_RE = /cct_[0-9A-Za-z]{28}/g;
const FIXTURE = fileURLToPath(new URL('./fixture-server.mjs', import.meta.url));

const POLICY = `@id("tools") permit(principal, action == Action::"mcp:call", resource == Connection::"tools")
unless { context has tool && (context.tool == "admin_delete" || context.tool == "deploy") };
@id("deploy-needs-approval") @approval("required")
permit(principal, action == Action::"mcp:call", resource == Connection::"tools")
when { context has tool && context.tool == "deploy" };
`;

describe('MCP gateway (/mcp/<connection>, official SDK client and server)', () => {
  let gw: Gateway;
  let agent: { key: string; ref: string };
  let client: Client;
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-mcp-'));
  const log = join(dir, 'upstream.jsonl');
  const leakFile = join(dir, 'leak.txt');
  const upstreamLog = () =>
    readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);

  const connect = async (key: string) => {
    const c = new Client({ name: 'test-agent', version: '1.0.0' });
    await c.connect(
      new StreamableHTTPClientTransport(new URL(`${gw.url}/mcp/tools`), {
        requestInit: { headers: { authorization: `Bearer ${key}` } },
      }),
    );
    return c;
  };

  const refusal = async (work: Promise<unknown>) => {
    try {
      await work;
    } catch (error) {
      expect(error).toBeInstanceOf(McpError);
      const e = error as McpError;
      return { code: e.code, message: e.message, data: e.data as { code: string } };
    }
    throw new Error('expected a refusal');
  };

  beforeAll(async () => {
    writeFileSync(log, '');
    // What the `leak` tool answers with (in a file: a command line is stored and audited in clear).
    writeFileSync(leakFile, `canary=${CANARY} gh=${GITHUB_TOKEN}`);
    const policyFile = join(dir, 'mcp.cedar');
    writeFileSync(policyFile, POLICY);
    gw = await startGateway({
      extraConfig: `policy:\n  path: ${policyFile}\napprovals:\n  holdTimeout: 20s\n`,
    });
    agent = await gw.createAgent('mcp-agent');
    // Tool arguments are a body placement: the tool can echo them.
    await gw.addSecret('db', SECRET, ['tools'], { placements: ['body'] });
    await gw.addSecret('elsewhere', 'elsewhere-secret-0a1b2c3d', ['other'], { placements: ['body'] });
    await gw.addSecret('canary', CANARY, ['tools'], { placements: ['body'] });
    await gw.addSecret('upstream-key', UPSTREAM_KEY, ['tools']);
    await gw.ctx.connections.add(
      {
        name: 'tools',
        type: 'mcp',
        url: stdioUrl(`'${process.execPath}' '${FIXTURE}' '${log}' '${leakFile}'`),
        credential: 'upstream-key',
      },
      'admin:test',
    );
    client = await connect(agent.key);
  });

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await gw?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('lists only the tools policy allows (approval-required ones included), and injects the credential as env', async () => {
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(['crash', 'deploy', 'echo', 'leak', 'store']);
    const started = upstreamLog().find((e) => e.started === true)!;
    expect(started.credential).toBe(UPSTREAM_KEY);
    // The gateway's own environment never reaches the MCP server.
    expect(started.master).toBeNull();
  });

  it('exchanges a ticket in the arguments for the real secret, only for the connection it is bound to', async () => {
    const ticket = await gw.issue('db', agent.ref, ['tools']);
    const result = await client.callTool({ name: 'store', arguments: { text: `password=${ticket}` } });
    expect(result.content).toEqual([{ type: 'text', text: 'stored' }]);
    expect(upstreamLog().at(-1)).toEqual({ tool: 'store', arguments: { text: `password=${SECRET}` } });

    const wrong = await gw.issue('elsewhere', agent.ref);
    const before = upstreamLog().length;
    const refused = await refusal(client.callTool({ name: 'store', arguments: { text: wrong } }));
    expect(refused.code).toBe(-32012);
    expect(refused.data.code).toBe('CC_ERR_TICKET_WRONG_DESTINATION');
    expect(upstreamLog().length).toBe(before);
  });

  it('a ticket for a credential-only secret is refused in tool arguments (placement), in any argument shape', async () => {
    await gw.addSecret('cred-only', 'cred-only-secret-9f8e7d6c5b', ['tools']);
    const ticket = await gw.issue('cred-only', agent.ref, ['tools']);
    const before = upstreamLog().length;
    for (const args of [
      { text: ticket },
      { text: `Bearer ${ticket}` },
      { text: JSON.stringify({ nested: [ticket] }) },
    ]) {
      const refused = await refusal(client.callTool({ name: 'store', arguments: args }));
      expect(refused.data.code).toBe('CC_ERR_TICKET_PLACEMENT');
    }
    expect(upstreamLog().length).toBe(before);
    expect(JSON.stringify(upstreamLog())).not.toContain('cred-only-secret-9f8e7d6c5b');
  });

  it('turns every secret in a tool result into a ticket bound to the caller', async () => {
    const result = await client.callTool({ name: 'leak', arguments: {} });
    const text = JSON.stringify(result);
    expect(text).not.toContain(CANARY);
    expect(text).not.toContain(GITHUB_TOKEN);
    const tickets = [...new Set(text.match(TICKET_RE) ?? [])];
    expect(tickets).toHaveLength(2);
    for (const ticket of tickets)
      expect((await gw.ctx.vault.inspectTicket(ticket)).principal).toBe(agent.ref);
    const canaryTicket = (result.content as Array<{ text: string }>)[0]!.text.match(TICKET_RE)![0];
    // A known secret's ticket is bound to the connection it came from (within the secret's own destinations).
    expect((await gw.ctx.vault.inspectTicket(canaryTicket)).destinations).toEqual(['conn:tools']);
  });

  it('scans resources and prompts the same way', async () => {
    expect((await client.listResources()).resources.map((r) => r.uri)).toEqual(['file:///etc/app.env']);
    const read = await client.readResource({ uri: 'file:///etc/app.env' });
    const prompt = await client.getPrompt({ name: 'connect' });
    for (const answer of [read, prompt]) {
      const text = JSON.stringify(answer);
      expect(text).not.toContain(CANARY);
      expect(text).not.toContain(GITHUB_TOKEN);
      expect(text.match(TICKET_RE)).toHaveLength(2);
    }
  });

  it('refuses a forbidden tool without calling the server', async () => {
    const before = upstreamLog().length;
    const refused = await refusal(client.callTool({ name: 'admin_delete', arguments: {} }));
    expect(refused).toMatchObject({
      code: -32010,
      data: { code: 'CC_ERR_MCP_TOOL_FORBIDDEN' },
    });
    expect(refused.message).toContain('policy does not allow admin_delete on connection tools');
    expect(upstreamLog().length).toBe(before);
  });

  it('holds an approval-required tool call until a human approves that exact call', async () => {
    const held = client.callTool({ name: 'deploy', arguments: { text: 'v42' } }, undefined, {
      timeout: 30_000,
    });
    let id = '';
    await expect
      .poll(
        async () => {
          const pending = await gw.ctx.store.listApprovals({ status: 'pending' });
          id = pending[0]?.id ?? '';
          return pending.length;
        },
        { timeout: 15_000 },
      )
      .toBe(1);
    expect(upstreamLog().some((e) => e.tool === 'deploy')).toBe(false);
    expect(
      await cli(['approvals', 'approve', id, '--as', 'ada'], { env: { COATCHECK_HOME: gw.dir } }),
    ).toMatchObject({
      code: 0,
    });
    const result = await held;
    expect(result.content).toEqual([{ type: 'text', text: 'deploy: v42' }]);
  }, 60_000);

  it('shows the approver the held tool call, cleaned: the tool, its arguments, tickets by id, no secret', async () => {
    const ticket = await gw.issue('db', agent.ref);
    const held = client
      .callTool({ name: 'deploy', arguments: { text: `v43 ${ticket}`, pasted: CANARY } }, undefined, {
        timeout: 30_000,
      })
      .catch((e: unknown) => e);
    let id = '';
    await expect
      .poll(
        async () => {
          const pending = await gw.ctx.store.listApprovals({ status: 'pending' });
          id = pending[0]?.id ?? '';
          return pending.length;
        },
        { timeout: 15_000 },
      )
      .toBe(1);
    const view = await gw.ctx.approvals.get(id);
    const ticketId = (await gw.ctx.vault.inspectTicket(ticket)).id;
    const canaryId = (await gw.ctx.vault.listSecrets()).find((x) => x.name === 'canary')!.id;
    expect(view.preview).toContain('tool: deploy\narguments:\n{');
    expect(view.preview).toContain(`"text": "v43 [ticket ${ticketId} for db]"`);
    expect(view.preview).toContain(`"pasted": "[secret:${canaryId}]"`);
    expect(view.preview).not.toContain(CANARY);
    expect(view.preview).not.toContain(ticket);
    await gw.ctx.approvals.decide(
      id,
      { approver: { ref: 'human:ada', name: 'ada', groups: [] }, decision: 'deny' },
      'admin:test',
    );
    await held;
    expect(upstreamLog().some((e) => JSON.stringify(e).includes('v43'))).toBe(false);
  }, 60_000);

  it('answers a crashed upstream with CC_ERR_MCP_UPSTREAM_FAILED and starts it again for the next call', async () => {
    const refused = await refusal(client.callTool({ name: 'crash', arguments: {} }));
    expect(refused.code).toBe(-32011);
    expect(refused.data.code).toBe('CC_ERR_MCP_UPSTREAM_FAILED');
    const again = await client.callTool({ name: 'echo', arguments: { text: 'still here' } });
    expect(again.content).toEqual([{ type: 'text', text: 'echo: still here' }]);
    // Another session is served too.
    const other = await connect(agent.key);
    expect((await other.callTool({ name: 'echo', arguments: { text: 'b' } })).content).toEqual([
      { type: 'text', text: 'echo: b' },
    ]);
    await (other.transport as StreamableHTTPClientTransport).terminateSession();
    await other.close();
  });

  it('keeps a secret smuggled into a tool name out of policy and audit records', async () => {
    const result = await client.callTool({ name: `probe-${CANARY}`, arguments: {} });
    expect(JSON.stringify(result)).not.toContain(CANARY);
    await gw.ctx.audit.flush();
    const audit = await gw.ctx.store.readAudit(0, 100_000);
    const probe = audit.filter((r) => r.type === 'mcp.call').at(-1)!;
    expect(probe.data.tool).toMatch(/^probe-\[REDACTED:[0-9a-f]+\]$/);
  });

  it('ends a live MCP session when its agent is revoked', async () => {
    const temp = await gw.createAgent('short-lived');
    const c = await connect(temp.key);
    expect((await c.callTool({ name: 'echo', arguments: { text: 'x' } })).content).toEqual([
      { type: 'text', text: 'echo: x' },
    ]);
    const before = gw.http.mcp.sessions;
    await gw.ctx.agents.revoke('short-lived', 'admin:test');
    await expect.poll(() => gw.http.mcp.sessions).toBe(before - 1);
    await expect(c.callTool({ name: 'echo', arguments: { text: 'y' } })).rejects.toThrow();
    await c.close();
  });

  it('answers initialize with CC_ERR_MCP_UPSTREAM_FAILED when the server cannot be started', async () => {
    await gw.ctx.connections.add(
      { name: 'missing', type: 'mcp', url: stdioUrl('/nonexistent/mcp-server --x') },
      'admin:test',
    );
    const res = await fetch(`${gw.url}/mcp/missing`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${agent.key}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'initialize',
        params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 't', version: '1' } },
      }),
    });
    expect(res.status).toBe(502);
    expect(await res.json()).toEqual({
      jsonrpc: '2.0',
      id: 1,
      error: {
        code: -32011,
        message:
          'the MCP server behind this connection could not be started or did not complete the MCP handshake',
        data: { code: 'CC_ERR_MCP_UPSTREAM_FAILED' },
      },
    });
  });

  it('refuses a session without an agent key, and another principal on an existing session', async () => {
    const anonymous = new Client({ name: 'anon', version: '1.0.0' });
    await expect(
      anonymous.connect(new StreamableHTTPClientTransport(new URL(`${gw.url}/mcp/tools`))),
    ).rejects.toThrow();
    const intruder = await gw.createAgent('intruder');
    const sessionId = (client.transport as StreamableHTTPClientTransport).sessionId!;
    const res = await fetch(`${gw.url}/mcp/tools`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${intruder.key}`,
        'mcp-session-id': sessionId,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' }),
    });
    expect(res.status).toBe(404);
    expect(((await res.json()) as { error: { data: { code: string } } }).error.data.code).toBe(
      'CC_ERR_NOT_FOUND',
    );
  });

  it('audits every call (tool and outcome, never argument values) and leaks no secret to logs, audit or recordings', async () => {
    await gw.ctx.audit.flush();
    const audit = await gw.ctx.store.readAudit(0, 100_000);
    const calls = audit.filter((r) => r.type === 'mcp.call').map((r) => [r.data.tool, r.data.outcome]);
    expect(calls).toEqual(
      expect.arrayContaining([
        ['store', 'ok'],
        ['store', 'CC_ERR_TICKET_WRONG_DESTINATION'],
        ['leak', 'ok'],
        ['admin_delete', 'CC_ERR_MCP_TOOL_FORBIDDEN'],
        ['deploy', 'ok'],
        ['crash', 'CC_ERR_MCP_UPSTREAM_FAILED'],
        ['echo', 'ok'],
        ['resource:file:///etc/app.env', 'ok'],
        ['prompt:connect', 'ok'],
      ]),
    );
    // Ending the session (DELETE) stops its upstream and records it.
    await (client.transport as StreamableHTTPClientTransport).terminateSession();
    await client.close();
    await expect.poll(() => gw.http.mcp.sessions).toBe(0);
    await gw.http.recorder.flush();
    const sessions = await gw.ctx.store.listSessions({ limit: 1000 });
    expect(sessions.some((s) => s.frontend === 'mcp')).toBe(true);
    for (const text of [gw.logs(), JSON.stringify(audit), JSON.stringify(sessions)]) {
      for (const value of [SECRET, CANARY, UPSTREAM_KEY, GITHUB_TOKEN, agent.key])
        expect(text).not.toContain(value);
    }
  });
});

/**
 * A hostile MCP tool server: tool results that hold vault secrets overlapping each
 * other, escaped (JSON `\u`, percent, HTML references) or as object keys of
 * `structuredContent`. The agent (the MCP SDK client) must see tickets only.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeView } from '../../../src/detect/canonical.js';
import { stdioUrl } from '../../../src/frontends/mcp/command.js';
import { type Gateway, startGateway } from '../http/harness.js';

const CANARY = "mcp-canary&S3cret<v>'x+0123/~!()*";
const TARGET = 'Xtarget-secret-value-0123456789';
const CHOSEN = `ghp_${'A'.repeat(35)}X`;
const CHOSEN5 = `ghp_${'B'.repeat(31)}${TARGET.slice(0, 5)}`;
const FIXTURE = fileURLToPath(new URL('./hostile-fixture.mjs', import.meta.url));
const POLICY =
  '@id("tools") permit(principal, action == Action::"mcp:call", resource == Connection::"tools");\n';

function decodedAll(text: string): string {
  let view = text;
  for (let i = 0; i < 4; i++) {
    const d = decodeView(view, 'text');
    if (!d.changed) break;
    view = d.view;
  }
  return view;
}

function expectClean(text: string): void {
  for (const value of [CANARY, TARGET.slice(1), TARGET.slice(5)]) {
    expect(text).not.toContain(value);
    expect(decodedAll(text)).not.toContain(value);
  }
}

describe('MCP gateway against a hostile tool server', () => {
  let gw: Gateway;
  let client: Client;
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-mcp-hostile-'));
  const seen: string[] = [];

  beforeAll(async () => {
    const values = join(dir, 'values.json');
    writeFileSync(
      values,
      JSON.stringify({ canary: CANARY, target: TARGET, chosen: CHOSEN, chosen5: CHOSEN5 }),
    );
    const policyFile = join(dir, 'mcp.cedar');
    writeFileSync(policyFile, POLICY);
    gw = await startGateway({ extraConfig: `policy:\n  path: ${policyFile}\n` });
    const agent = await gw.createAgent('mcp-hostile');
    await gw.addSecret('canary', CANARY, ['tools']);
    await gw.addSecret('target', TARGET, ['tools']);
    await gw.addSecret('chosen', CHOSEN, ['tools']);
    await gw.addSecret('chosen5', CHOSEN5, ['tools']);
    await gw.ctx.connections.add(
      { name: 'tools', type: 'mcp', url: stdioUrl(`'${process.execPath}' '${FIXTURE}' '${values}'`) },
      'admin:test',
    );
    client = new Client({ name: 'hostile-agent', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${gw.url}/mcp/tools`), {
        requestInit: { headers: { authorization: `Bearer ${agent.key}` } },
      }),
    );
  });

  afterAll(async () => {
    await client?.close().catch(() => undefined);
    await gw?.close();
    rmSync(dir, { recursive: true, force: true });
    for (const text of [...seen, gw.logs()]) expectClean(text);
  });

  const reflect = async (as: string) => {
    const result = await client.callTool({ name: 'reflect', arguments: { as } });
    const text = JSON.stringify(result);
    seen.push(text);
    return text;
  };

  describe('overlapping secrets', () => {
    for (const as of ['overlap', 'overlap-five', 'overlap-nested', 'overlap-structured']) {
      it(as, async () => {
        const text = await reflect(as);
        expectClean(text);
        expect(text).not.toContain('secret-value');
        expect(text).toMatch(/cct_[0-9A-Za-z]{28}/);
      });
    }
  });

  describe('escaped forms in results', () => {
    for (const as of ['go-json', 'json-letters', 'percent-lower', 'percent-upper', 'html', 'html-decimal']) {
      it(as, async () => {
        const text = await reflect(as);
        expectClean(text);
        expect(text).toMatch(/cct_[0-9A-Za-z]{28}/);
      });
    }
  });

  describe('object keys of structuredContent', () => {
    for (const as of ['key-top', 'key-nested', 'key-escaped']) {
      it(as, async () => {
        const text = await reflect(as);
        expectClean(text);
        expect(text).toMatch(/cct_[0-9A-Za-z]{28}/);
      });
    }
  });
});

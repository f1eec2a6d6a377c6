/**
 * An LLM call held for approval: the approver's preview names the call and its model, says
 * what the approval covers, and shows the prompt with every secret (raw or escaped) masked.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeView } from '../../../src/detect/canonical.js';
import { type Gateway, startGateway } from '../http/harness.js';
import { type FakeProvider, startFakeProvider } from './fake-provider.js';

const CANARY = "llm-preview&S3cret<v>'x+0123/~!()*";

function decodedAll(text: string): string {
  let view = text;
  for (let i = 0; i < 4; i++) {
    const d = decodeView(view, 'text');
    if (!d.changed) break;
    view = d.view;
  }
  return view;
}

describe('LLM guard: approval preview', () => {
  let gw: Gateway;
  let provider: FakeProvider;
  let agent: { key: string; ref: string };
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-llm-preview-'));

  beforeAll(async () => {
    provider = await startFakeProvider();
    const policyFile = join(dir, 'llm.cedar');
    writeFileSync(
      policyFile,
      '@id("models-need-approval") @approval("required") permit(principal, action == Action::"llm:call", resource);\n',
    );
    gw = await startGateway({
      extraConfig: `policy:\n  path: ${policyFile}\napprovals:\n  holdTimeout: 20s\n`,
    });
    agent = await gw.createAgent('llm-preview');
    await gw.addSecret('canary', CANARY, ['db']);
    await gw.addSecret('provider-key', 'sk-provider-key-0a1b2c3d4e5f', ['openai']);
    await gw.ctx.connections.add(
      { name: 'openai', type: 'llm', url: `${provider.url}/v1`, credential: 'provider-key' },
      'admin:test',
    );
  });

  afterAll(async () => {
    await gw?.close();
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('shows the call, its model and its prompt cleaned; a denial sends nothing', async () => {
    const escaped = JSON.stringify(CANARY).replace(/[&<>'+]/g, (c) => `\\u00${c.charCodeAt(0).toString(16)}`);
    const body = `{"model":"fake-1","messages":[{"role":"user","content":"raw ${JSON.stringify(CANARY).slice(1, -1)} escaped ${escaped.slice(1, -1)}"}]}`;
    const held = request(`${gw.url}/llm/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agent.key}` },
      body,
    }).then(async (r) => ({ status: r.statusCode, text: await r.body.text() }));
    let id = '';
    await expect
      .poll(
        async () => {
          const pending = await gw.ctx.approvals.list('pending');
          id = pending[0]?.id ?? '';
          return pending.length;
        },
        { timeout: 15_000 },
      )
      .toBe(1);
    const preview = (await gw.ctx.approvals.get(id)).preview ?? '';
    const canaryId = (await gw.ctx.vault.listSecrets()).find((s) => s.name === 'canary')!.id;
    expect(preview).toContain(`POST ${provider.url}/v1/chat/completions\nmodel: fake-1\n`);
    expect(preview).toContain('the approval covers any call with this method, path and model');
    expect(preview).toContain(`raw [secret:${canaryId}] escaped [secret:${canaryId}]`);
    expect(preview).not.toContain(agent.key);
    expect(decodedAll(preview)).not.toContain(CANARY);
    expect(decodedAll(preview)).not.toContain('S3cret');
    const before = provider.received.length;
    await gw.ctx.approvals.decide(
      id,
      { approver: { ref: 'human:ada', name: 'ada', groups: [] }, decision: 'deny' },
      'admin:test',
    );
    expect((await held).status).toBe(403);
    expect(provider.received.length).toBe(before);
  }, 60_000);
});

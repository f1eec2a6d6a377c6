import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Gateway, startGateway } from '../http/harness.js';
import { type FakeProvider, startFakeProvider } from './fake-provider.js';

/**
 * Item 2 on the LLM guard: a vault secret in a model's answer (the request carried no
 * ticket) becomes a ticket scoped to the caller and the LLM connection only, with the
 * bounded found-ticket lifetime — not the secret's full destination list for an hour.
 */
const CANARY = 'llm-scope-canary-R5tY8uI2oP6aS1dF';
const PROVIDER_KEY = 'sk-provider-key-scope-0a9b8c7d6e5f';
const TICKET_RE = /cct_[0-9A-Za-z]{28}/g;

let gw: Gateway;
let provider: FakeProvider;
let agent: { key: string; ref: string };
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-llm-scope-'));
const seen: string[] = [];

const chat = async (content: string) => {
  const res = await request(`${gw.url}/llm/openai/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${agent.key}` },
    body: JSON.stringify({ model: 'gpt-test', messages: [{ role: 'user', content }] }),
  });
  const text = await res.body.text();
  seen.push(text);
  expect(res.statusCode).toBe(200);
  return text;
};

beforeAll(async () => {
  provider = await startFakeProvider();
  const policy = join(dir, 'llm.cedar');
  writeFileSync(policy, '@id("all") permit(principal, action, resource);\n');
  gw = await startGateway({ extraConfig: `policy:\n  path: ${policy}\n` });
  agent = await gw.createAgent('chatty');
  await gw.addSecret('wide', CANARY, ['openai', 'db', 'host:127.0.0.1']);
  await gw.addSecret('openai-key', PROVIDER_KEY, ['openai']);
  await gw.ctx.connections.add(
    { name: 'openai', type: 'llm', url: `${provider.url}/v1`, credential: 'openai-key' },
    'admin:test',
  );
});

afterAll(async () => {
  await gw?.close();
  await provider?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('LLM guard: tickets for secrets in model answers', () => {
  it('a secret in the answer is bound to the caller and this connection, for at most the found-ticket lifetime', async () => {
    provider.say = ` the password is ${CANARY}`;
    const started = Date.now();
    const text = await chat('what is the password?');
    provider.say = '';
    expect(text).not.toContain(CANARY);
    const ticket = text.match(TICKET_RE)![0];
    const view = await gw.ctx.vault.inspectTicket(ticket);
    expect(view).toMatchObject({ principal: agent.ref, parentId: null, destinations: ['conn:openai'] });
    expect(Date.parse(view.expiresAt!)).toBeLessThanOrEqual(started + 15 * 60_000 + 5_000);
  });

  it('a secret the agent pastes in its prompt gets a ticket with the bounded lifetime too', async () => {
    const started = Date.now();
    await chat(`use ${CANARY} for the database`);
    const sent = provider.received.at(-1)!.body;
    expect(sent).not.toContain(CANARY);
    const view = await gw.ctx.vault.inspectTicket(sent.match(TICKET_RE)![0]);
    expect(view.principal).toBe(agent.ref);
    expect(Date.parse(view.expiresAt!)).toBeLessThanOrEqual(started + 15 * 60_000 + 5_000);
  });

  it('no canary in logs or audit', async () => {
    await gw.ctx.audit.flush();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const place of [seen.join('\n'), gw.logs(), audit]) expect(place).not.toContain(CANARY);
  });
});

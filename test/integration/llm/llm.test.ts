import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILTIN_RULES } from '../../../src/detect/rules/index.js';
import { type Gateway, startGateway } from '../http/harness.js';
import { type FakeProvider, startFakeProvider } from './fake-provider.js';

const CANARY = 'llm-canary-9f8e7d6c5b4a3921';
const PROVIDER_KEY = 'sk-provider-key-7a6b5c4d3e2f1a0b';
const GITHUB_TOKEN = BUILTIN_RULES.find((r) => r.id === 'github-pat-classic')!.examples.positives[0]!.secret;
const TICKET_RE = /cct_[0-9A-Za-z]{28}/g;

describe('LLM prompt guard (/llm/<connection>/v1/…)', () => {
  let gw: Gateway;
  let provider: FakeProvider;
  let agent: { key: string; ref: string };
  const policyDir = mkdtempSync(join(tmpdir(), 'coatcheck-llm-policy-'));

  beforeAll(async () => {
    provider = await startFakeProvider();
    const policyFile = join(policyDir, 'llm.cedar');
    writeFileSync(
      policyFile,
      '@id("models") permit(principal, action == Action::"llm:call", resource) unless { resource == Connection::"blocked" };\n',
    );
    gw = await startGateway({ extraConfig: `policy:\n  path: ${policyFile}\n` });
    agent = await gw.createAgent('writer');
    await gw.addSecret('db-password', CANARY, ['db']);
    await gw.addSecret('openai-key', PROVIDER_KEY, ['openai', 'anthropic']);
    await gw.ctx.connections.add(
      { name: 'openai', type: 'llm', url: `${provider.url}/v1`, credential: 'openai-key' },
      'admin:test',
    );
    await gw.ctx.connections.add(
      { name: 'anthropic', type: 'llm', url: provider.url, credential: 'openai-key' },
      'admin:test',
    );
    await gw.ctx.connections.add({ name: 'blocked', type: 'llm', url: provider.url }, 'admin:test');
  });

  afterAll(async () => {
    await gw?.close();
    await provider?.close();
    rmSync(policyDir, { recursive: true, force: true });
  });

  const post = async (path: string, body: unknown, headers: Record<string, string> = {}) => {
    const res = await request(`${gw.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agent.key}`, ...headers },
      body: JSON.stringify(body),
    });
    return { status: res.statusCode, headers: res.headers, text: await res.body.text() };
  };

  const expectClean = (text: string) => {
    expect(text).not.toContain(CANARY);
    expect(text).not.toContain(GITHUB_TOKEN);
    expect(text).not.toContain(agent.key);
  };

  it('replaces every secret in messages, tool calls and tool results with tickets bound to the agent, and injects the provider key', async () => {
    const before = provider.received.length;
    const res = await post('/llm/openai/v1/chat/completions', {
      model: 'gpt-test',
      messages: [
        { role: 'system', content: `You may use the database password ${CANARY}.` },
        { role: 'user', content: [{ type: 'text', text: `my token is ${GITHUB_TOKEN}, keep it` }] },
        {
          role: 'assistant',
          tool_calls: [
            {
              id: 'c1',
              type: 'function',
              function: { name: 'login', arguments: JSON.stringify({ password: CANARY }) },
            },
          ],
        },
        { role: 'tool', tool_call_id: 'c1', content: `login ok; session secret ${CANARY}` },
      ],
    });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text).choices[0].message.content).toBe('ok');
    expect(provider.received.length).toBe(before + 1);
    const got = provider.received.at(-1)!;
    expect(got.url).toBe('/v1/chat/completions');
    expectClean(got.body);
    expectClean(JSON.stringify(got.headers));
    expect(got.headers.authorization).toBe(`Bearer ${PROVIDER_KEY}`);
    expect(got.headers['proxy-authorization']).toBeUndefined();

    const sent = JSON.parse(got.body);
    const tickets = [...new Set(got.body.match(TICKET_RE) ?? [])];
    // One ticket per distinct value: the vault secret (3 places) and the detected GitHub token.
    expect(tickets).toHaveLength(2);
    const systemTicket = (sent.messages[0].content as string).match(TICKET_RE)![0];
    expect(sent.messages[3].content).toBe(`login ok; session secret ${systemTicket}`);
    expect(JSON.parse(sent.messages[2].tool_calls[0].function.arguments)).toEqual({ password: systemTicket });
    for (const ticket of tickets) {
      const view = await gw.ctx.vault.inspectTicket(ticket);
      expect(view.principal).toBe(agent.ref);
    }
    // The known secret's ticket keeps the secret's destinations: the model's tool call can be
    // exchanged by the front-end that serves `db`, and nowhere else.
    expect((await gw.ctx.vault.inspectTicket(systemTicket)).destinations).toEqual(['conn:db']);
    const ghTicket = tickets.find((t) => t !== systemTicket)!;
    expect((await gw.ctx.vault.inspectTicket(ghTicket)).destinations).toEqual([]);
  });

  it('serves the Anthropic Messages API with the agent key in x-api-key and injects the provider key there', async () => {
    const res = await request(`${gw.url}/llm/anthropic/v1/messages`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        'x-api-key': agent.key,
        'anthropic-version': '2023-06-01',
      },
      body: JSON.stringify({
        model: 'claude-test',
        system: [{ type: 'text', text: `db password: ${CANARY}` }],
        messages: [
          {
            role: 'user',
            content: [{ type: 'tool_result', tool_use_id: 't1', content: [{ type: 'text', text: CANARY }] }],
          },
        ],
      }),
    });
    expect(res.statusCode).toBe(200);
    expect(JSON.parse(await res.body.text()).content[0].text).toBe('ok');
    const got = provider.received.at(-1)!;
    expect(got.url).toBe('/v1/messages');
    expect(got.headers['x-api-key']).toBe(PROVIDER_KEY);
    expect(got.headers.authorization).toBeUndefined();
    expect(got.headers['anthropic-version']).toBe('2023-06-01');
    expectClean(got.body);
    expect(got.body.match(TICKET_RE)).toHaveLength(2);
  });

  it('refuses a base64 attachment that holds a secret, and lets a clean one through', async () => {
    const before = provider.received.length;
    const dirty = Buffer.from(`%PDF-1.4 config: password=${CANARY}\n`).toString('base64');
    const refused = await post('/llm/anthropic/v1/messages', {
      model: 'claude-test',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: dirty } },
          ],
        },
      ],
    });
    expect(refused.status).toBe(422);
    const error = JSON.parse(refused.text).error;
    expect(error.code).toBe('CC_ERR_LLM_ATTACHMENT_SECRET');
    expect(error.message).toMatch(
      /^the attachment at messages\.0\.content\.0\.source\.data contains a secret \(known-secret, fingerprint [0-9a-f]+\); it was not sent$/,
    );
    const dataUrl = `data:image/png;base64,${Buffer.from(`\x89PNG....${GITHUB_TOKEN}....`, 'latin1').toString('base64')}`;
    const refusedUrl = await post('/llm/openai/v1/chat/completions', {
      model: 'gpt-test',
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: dataUrl } }] }],
    });
    expect(refusedUrl.status).toBe(422);
    expect(JSON.parse(refusedUrl.text).error.code).toBe('CC_ERR_LLM_ATTACHMENT_SECRET');
    expect(provider.received.length).toBe(before);

    const clean = `data:image/png;base64,${Buffer.alloc(600, 7).toString('base64')}`;
    const ok = await post('/llm/openai/v1/chat/completions', {
      model: 'gpt-test',
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: clean } }] }],
    });
    expect(ok.status).toBe(200);
    expect(JSON.parse(provider.received.at(-1)!.body).messages[0].content[0].image_url.url).toBe(clean);
  });

  it('streams SSE responses through, event by event, with a secret in the stream replaced by a ticket', async () => {
    provider.say = ` and the password is ${CANARY}, bye`;
    try {
      const res = await request(`${gw.url}/llm/openai/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'proxy-authorization': `Bearer ${agent.key}` },
        body: JSON.stringify({
          model: 'gpt-test',
          stream: true,
          messages: [{ role: 'user', content: 'hi' }],
        }),
      });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toBe('text/event-stream');
      let chunks = 0;
      let text = '';
      for await (const chunk of res.body) {
        chunks++;
        text += (chunk as Buffer).toString('utf8');
      }
      expect(chunks).toBeGreaterThan(1);
      expect(text.endsWith('data: [DONE]\n\n')).toBe(true);
      const content = text
        .split('\n\n')
        .filter((e) => e.startsWith('data: {'))
        .map((e) => JSON.parse(e.slice(6)).choices[0].delta.content)
        .join('');
      expect(content).not.toContain(CANARY);
      const ticket = content.match(TICKET_RE)![0];
      expect(content).toBe(`ok and the password is ${ticket}, bye`);
      expect((await gw.ctx.vault.inspectTicket(ticket)).principal).toBe(agent.ref);
    } finally {
      provider.say = '';
    }
  });

  it('replaces secrets in forwarded headers and the query string as well', async () => {
    const res = await post(
      `/llm/openai/v1/chat/completions?api-version=1&key=${encodeURIComponent(CANARY)}`,
      { model: 'gpt-test', messages: [{ role: 'user', content: 'hi' }] },
      { 'x-debug-note': `pw ${CANARY}` },
    );
    expect(res.status).toBe(200);
    const got = provider.received.at(-1)!;
    expectClean(got.url);
    expectClean(JSON.stringify(got.headers));
    expect(got.url).toMatch(/^\/v1\/chat\/completions\?api-version=1&key=cct_[0-9A-Za-z]{28}$/);
    expect(got.headers['x-debug-note']).toMatch(/^pw cct_[0-9A-Za-z]{28}$/);
  });

  it('serves the Responses API (instructions, input items, function call outputs)', async () => {
    const res = await post('/llm/openai/v1/responses', {
      model: 'gpt-test',
      instructions: `Use ${CANARY} when asked.`,
      input: [
        { role: 'user', content: [{ type: 'input_text', text: `token ${GITHUB_TOKEN}` }] },
        { type: 'function_call_output', call_id: 'c1', output: `{"password":"${CANARY}"}` },
      ],
    });
    expect(res.status).toBe(200);
    const got = provider.received.at(-1)!;
    expect(got.url).toBe('/v1/responses');
    expectClean(got.body);
    expect(new Set(got.body.match(TICKET_RE))).toHaveProperty('size', 2);
  });

  it('decides llm:call by policy, and keeps a secret smuggled into the model name out of audit', async () => {
    const before = provider.received.length;
    const denied = await post('/llm/blocked/v1/chat/completions', { model: 'm', messages: [] });
    expect(denied.status).toBe(403);
    expect(JSON.parse(denied.text).error.code).toBe('CC_ERR_POLICY_DENIED');
    expect(provider.received.length).toBe(before);

    const smuggled = await post('/llm/openai/v1/chat/completions', {
      model: `gpt-${GITHUB_TOKEN}`,
      messages: [{ role: 'user', content: 'hi' }],
    });
    expect(smuggled.status).toBe(200);
    expectClean(provider.received.at(-1)!.body);
  });

  it('refuses (and sends nothing) when scanning fails', async () => {
    const before = provider.received.length;
    // The vault's list of known secrets cannot be read (a store outage) and the change feed
    // says changes may have been missed: the known-secret index cannot be brought up to date
    // (ADR 0021), so nothing can be scanned.
    const vault = gw.ctx.vault as unknown as { knownSecrets: unknown };
    const original = vault.knownSecrets;
    vault.knownSecrets = () => Promise.reject(new Error('store down'));
    await gw.ctx.store.publish({ type: 'resync' });
    try {
      const res = await post('/llm/openai/v1/chat/completions', {
        model: 'gpt-test',
        messages: [{ role: 'user', content: 'nothing secret here' }],
      });
      expect(res.status).toBe(502);
      expect(JSON.parse(res.text).error).toMatchObject({
        code: 'CC_ERR_LLM_SCAN_FAILED',
        message: 'the request could not be scanned for secrets; it was not sent to the model provider',
      });
      expect(provider.received.length).toBe(before);
    } finally {
      vault.knownSecrets = original;
      await gw.ctx.store.publish({ type: 'resync' });
    }
  });

  it('refuses without an agent key, on unknown routes, and for non-llm connections', async () => {
    const noKey = await request(`${gw.url}/llm/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    expect(noKey.statusCode).toBe(407);
    expect(JSON.parse(await noKey.body.text()).error.code).toBe('CC_ERR_HTTP_PROXY_AUTH_REQUIRED');
    const route = await post('/llm/openai/v1/embeddings', { input: 'x' });
    expect(route.status).toBe(404);
    expect(JSON.parse(route.text).error.code).toBe('CC_ERR_LLM_ROUTE');
    const notJson = await request(`${gw.url}/llm/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agent.key}` },
      body: '{"messages": [',
    });
    expect(notJson.statusCode).toBe(400);
    expect(JSON.parse(await notJson.body.text()).error.code).toBe('CC_ERR_LLM_BAD_REQUEST');
  });

  it('leaves no canary in logs, audit records or recordings, and audits each request', async () => {
    await gw.ctx.audit.flush();
    await gw.http.recorder.flush();
    const audit = await gw.ctx.store.readAudit(0, 100_000);
    const sessions = await gw.ctx.store.listSessions({ limit: 1000 } as never);
    for (const text of [gw.logs(), JSON.stringify(audit), JSON.stringify(sessions)]) {
      expect(text).not.toContain(CANARY);
      expect(text).not.toContain(GITHUB_TOKEN);
      expect(text).not.toContain(PROVIDER_KEY);
      expect(text).not.toContain(agent.key);
    }
    const requests = audit.filter((r) => r.type === 'llm.request');
    expect(requests.length).toBeGreaterThanOrEqual(4);
    expect(requests[0]!.data).toMatchObject({
      connection: 'openai',
      endpoint: '/v1/chat/completions',
      model: 'gpt-test',
    });
    expect(sessions.some((s) => s.frontend === 'llm')).toBe(true);
  });
});

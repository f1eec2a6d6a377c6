/**
 * A hostile agent against the LLM guard: prompts with overlapping secrets, escaped
 * secrets and secrets in object keys (duplicate keys included) must reach the provider as
 * tickets only; answers with overlapping or escaped secrets must reach the agent as
 * tickets only.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeView } from '../../../src/detect/canonical.js';
import { type Gateway, startGateway } from '../http/harness.js';
import { type FakeProvider, startFakeProvider } from './fake-provider.js';

const CANARY = "llm-canary&S3cret<v>'x+0123/~!()*";
const TARGET = 'Xtarget-secret-value-0123456789';
const CHOSEN = `ghp_${'A'.repeat(35)}X`;
const CHOSEN5 = `ghp_${'B'.repeat(31)}${TARGET.slice(0, 5)}`;

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
  expect(text).not.toContain('secret-value');
}

const hex = (c: string) => c.charCodeAt(0).toString(16).padStart(2, '0');
const pct = (s: string) => [...s].map((c) => (/[A-Za-z0-9]/.test(c) ? c : `%${hex(c)}`)).join('');

describe('LLM guard against hostile prompts and answers', () => {
  let gw: Gateway;
  let provider: FakeProvider;
  let agent: { key: string; ref: string };
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-llm-hostile-'));
  const seen: string[] = [];

  beforeAll(async () => {
    provider = await startFakeProvider();
    const policyFile = join(dir, 'llm.cedar');
    writeFileSync(policyFile, '@id("models") permit(principal, action == Action::"llm:call", resource);\n');
    gw = await startGateway({ extraConfig: `policy:\n  path: ${policyFile}\n` });
    agent = await gw.createAgent('llm-hostile');
    await gw.addSecret('canary', CANARY, ['db']);
    await gw.addSecret('target', TARGET, ['db']);
    await gw.addSecret('chosen', CHOSEN, ['db']);
    await gw.addSecret('chosen5', CHOSEN5, ['db']);
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
    for (const text of [...seen, ...provider.received.map((r) => r.body), gw.logs()]) expectClean(text);
  });

  const post = async (body: unknown) => {
    const res = await request(`${gw.url}/llm/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agent.key}` },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.body.text();
    seen.push(text);
    return { status: res.statusCode, text };
  };
  const chat = (content: string, extra: Record<string, unknown> = {}) => ({
    model: 'fake-1',
    messages: [{ role: 'user', content }],
    ...extra,
  });
  const sent = () => provider.received.at(-1)!.body;

  describe('prompts: overlapping secrets', () => {
    for (const [name, content] of [
      ['overlap', `use ${CHOSEN}${TARGET.slice(1)} now`],
      ['overlap-five', `use ${CHOSEN5}${TARGET.slice(5)} now`],
      ['overlap-nested', `use ${CHOSEN.slice(0, -1)}${TARGET}${CHOSEN.slice(1)}`],
      ['overlap-twice', `${CHOSEN}${TARGET.slice(1)} ${CHOSEN5}${TARGET.slice(5)}`],
    ] as const) {
      it(name, async () => {
        const res = await post(chat(content));
        expect(res.status).toBe(200);
        expectClean(sent());
        expect(sent()).toMatch(/cct_[0-9A-Za-z]{28}/);
      });
    }
  });

  describe('prompts: escaped secrets', () => {
    for (const [name, content] of [
      ['go-json', `{"token":${JSON.stringify(CANARY).replace(/[&<>'+]/g, (c) => `\\u00${hex(c)}`)}}`],
      [
        'json-letters',
        [...CANARY].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join(''),
      ],
      ['percent', `curl /p?q=${pct(CANARY)}`],
      ['percent-upper', `curl /p?q=${pct(CANARY).replace(/%[0-9a-f]{2}/g, (m) => m.toUpperCase())}`],
      ['html', `<p>${CANARY.replace(/&/g, '&amp;').replace(/'/g, '&#39;').replace(/\+/g, '&#x2b;')}</p>`],
      ['html-decimal', [...CANARY].map((c) => `&#${c.charCodeAt(0)};`).join('')],
    ] as const) {
      it(name, async () => {
        const res = await post(chat(content));
        expect(res.status).toBe(200);
        expectClean(sent());
        expect(sent()).toMatch(/cct_[0-9A-Za-z]{28}/);
      });
    }
  });

  describe('prompts: object keys', () => {
    it('a secret as a key of request metadata', async () => {
      const res = await post(chat('hi', { metadata: { [CANARY]: 'x' } }));
      expect(res.status).toBe(200);
      expectClean(sent());
    });

    it('a secret in a key of a nested object (tool schema)', async () => {
      const res = await post(
        chat('hi', {
          response_format: {
            type: 'json_schema',
            json_schema: { name: 's', schema: { properties: { [`p-${TARGET}`]: { type: 'string' } } } },
          },
        }),
      );
      expect(res.status).toBe(200);
      expectClean(sent());
    });

    it('a percent-escaped secret in a key', async () => {
      const res = await post(chat('hi', { metadata: { [pct(CANARY)]: 1 } }));
      expect(res.status).toBe(200);
      expectClean(sent());
    });

    it('a body that repeats a key is refused (the provider may read the other one)', async () => {
      const before = provider.received.length;
      const body = `{"model":"fake-1","messages":[{"role":"user","content":"${TARGET}"}],"messages":[{"role":"user","content":"hi"}]}`;
      const res = await post(body);
      expect(res.status).toBe(400);
      expect(JSON.parse(res.text).error.code).toBe('CC_ERR_LLM_BAD_REQUEST');
      expect(provider.received.length).toBe(before);
    });
  });

  describe('answers', () => {
    for (const [name, say] of [
      ['overlap', ` ${CHOSEN}${TARGET.slice(1)}`],
      ['overlap-five', ` ${CHOSEN5}${TARGET.slice(5)}`],
      ['html', ` <p>${CANARY.replace(/&/g, '&amp;').replace(/'/g, '&#39;')}</p>`],
      ['percent', ` /p?q=${pct(CANARY)}`],
    ] as const) {
      for (const stream of [false, true]) {
        it(`${name}${stream ? ' (streamed)' : ''}`, async () => {
          provider.say = say;
          try {
            const res = await post(chat('hi', { stream }));
            expect(res.status).toBe(200);
            expectClean(res.text);
            expect(res.text).toMatch(/cct_[0-9A-Za-z]{28}/);
          } finally {
            provider.say = '';
          }
        });
      }
    }
  });
});

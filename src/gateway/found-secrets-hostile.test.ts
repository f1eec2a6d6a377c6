import { describe, expect, it } from 'vitest';
import { SecretValue } from '../core/secret-value.js';
import { createFoundSecrets, hasDuplicateKeys, type JsonValue, rewriteJsonStrings } from './found-secrets.js';

const TARGET = 'Xtarget-secret-value-0123456789';
const CHOSEN = `ghp_${'A'.repeat(35)}X`;

function scanner() {
  const known = [
    { id: 'sec_target', name: 't', allow: [], value: new SecretValue(Buffer.from(TARGET)) },
    { id: 'sec_chosen', name: 'c', allow: [], value: new SecretValue(Buffer.from(CHOSEN)) },
    { id: 'sec_amp', name: 'a', allow: [], value: new SecretValue(Buffer.from("p&ss<w>rd+'/!()*~")) },
  ];
  const vault = {
    knownSecrets: async () => known,
    reissueForResponse: async (secretId: string) => ({
      ticket: `<${secretId}>`,
      view: { id: `tkt_${secretId}`, secretId },
    }),
    tokenizeFound: async () => ({ ticket: '<found>', view: { id: 'tkt_f', secretId: 'sec_f' } }),
  };
  return createFoundSecrets(vault as never).begin({
    principal: 'agent:a',
    source: 'test',
    actor: 'gateway:test',
  });
}

describe('found secrets against hostile content (MCP results, LLM prompts)', () => {
  it('replaces the union when a registered value ends where the target begins', async () => {
    const scan = await scanner();
    const out = await scan.text(`result: ${CHOSEN}${TARGET.slice(1)} end`);
    expect(out).not.toContain(TARGET.slice(1));
    expect(out).not.toContain(TARGET.slice(2, 20));
  });

  it('variants: target first, chained through three, nested', async () => {
    const scan = await scanner();
    for (const text of [
      `${TARGET}${CHOSEN.slice(1)}`,
      `${CHOSEN}${TARGET.slice(1)}${CHOSEN.slice(1)}`,
      `[${CHOSEN.slice(0, -1)}${TARGET}]`,
    ]) {
      const out = await scan.text(text);
      expect(out).not.toMatch(/target-secret/);
    }
  });

  it('finds known secrets written with escapes of ordinary characters', async () => {
    const scan = await scanner();
    for (const form of [
      'p\\u0026ss\\u003cw\\u003erd\\u002b\\u0027/!()*~', // Go / .NET JSON
      'p%26ss%3Cw%3Erd%2B%27%2F%21%28%29%2A%7E', // Python quote(safe='')
      'p%26ss%3cw%3erd%2b%27%2f%21%28%29%2a%7e', // lower case
      'p&amp;ss&lt;w&gt;rd&#x2b;&#39;&sol;&#33;()*~', // HTML
      '\\u0070&amp;ss&#60;w&#X3E;rd%2B\\u0027/!()*~', // mixed
      '\\u0058target-secret-value-0123456789', // a \\u escape of a letter
    ]) {
      const out = await scan.text(`value: ${form} end`);
      expect(out, form).toMatch(/^value: <sec_(amp|target)> end$/);
    }
  });

  it('inspects object keys, nested, when asked', async () => {
    const scan = await scanner();
    const out = await rewriteJsonStrings(
      { a: { b: [{ [`k-${TARGET}`]: 1 }] }, [TARGET]: TARGET } as JsonValue,
      (text) => scan.text(text),
      undefined,
      { keys: true },
    );
    expect(JSON.stringify(out)).not.toContain('target-secret');
    expect(JSON.stringify(out)).toBe('{"a":{"b":[{"k-<sec_target>":1}]},"<sec_target>":"<sec_target>"}');
  });

  it('tells a document that repeats a key', () => {
    expect(hasDuplicateKeys('{"a":1,"b":{"a":2}}')).toBe(false);
    expect(hasDuplicateKeys('{"a":1,"a":2}')).toBe(true);
    expect(hasDuplicateKeys('{"x":[{"m":"\\"a\\":"}],"m":{"k":1, "\\u006b" : 2}}')).toBe(true);
    expect(hasDuplicateKeys('["a","a"]')).toBe(false);
  });
});

import { describe, expect, it } from 'vitest';
import { SecretValue } from '../core/secret-value.js';
import { createFoundSecrets, type JsonValue, rewriteJsonStrings } from './found-secrets.js';

describe('rewriteJsonStrings', () => {
  it('visits every string value in document order and keeps keys and other values', async () => {
    const seen: string[] = [];
    const out = await rewriteJsonStrings(
      { a: 'x', b: [1, 'y', { c: 'z', d: null, e: true }] },
      async (text, site) => {
        seen.push(`${site.path.join('.')}=${text}`);
        return text.toUpperCase();
      },
    );
    expect(out).toEqual({ a: 'X', b: [1, 'Y', { c: 'Z', d: null, e: true }] });
    expect(seen).toEqual(['a=x', 'b.1=y', 'b.2.c=z']);
  });

  it('refuses nesting deeper than the limit', async () => {
    let deep: JsonValue = 'x';
    for (let i = 0; i < 70; i++) deep = [deep];
    await expect(rewriteJsonStrings(deep, async (t) => t)).rejects.toMatchObject({
      code: 'CC_ERR_INVALID_ARGUMENT',
    });
  });
});

describe('createFoundSecrets', () => {
  const known = [
    { id: 'sec_1', name: 'db', allow: ['db'], value: new SecretValue(Buffer.from('known-secret-value-123')) },
  ];

  it('replaces known secrets through reissueForResponse and new findings through tokenizeFound, one ticket per value', async () => {
    const calls: string[] = [];
    const vault = {
      knownSecrets: async () => known,
      reissueForResponse: async (secretId: string) => {
        calls.push(`reissue:${secretId}`);
        return { ticket: 'cct_KNOWN', view: { id: 'tkt_1', secretId } };
      },
      tokenizeFound: async (_value: Buffer, input: { kind: string; destinations: readonly string[] }) => {
        calls.push(`found:${input.kind}:${input.destinations.length}`);
        return { ticket: 'cct_FOUND', view: { id: 'tkt_2', secretId: 'sec_2' } };
      },
    };
    const found = createFoundSecrets(vault as never);
    const scan = await found.begin({ principal: 'agent:a', source: 'test', actor: 'gateway:test' });
    const token = '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';
    expect(await scan.text(`a known-secret-value-123 and ${token} and known-secret-value-123`)).toBe(
      'a cct_KNOWN and cct_FOUND and cct_KNOWN',
    );
    expect(calls).toEqual(['reissue:sec_1', 'found:github-pat-classic:0']);
    expect(scan.replaced).toBe(3);
  });

  it('a known secret too large for the matcher fails the scan instead of being left out; a short one is skipped', async () => {
    const vault = (value: Buffer) => ({
      knownSecrets: async () => [{ id: 'sec_x', name: 'x', allow: ['x'], value: new SecretValue(value) }],
      reissueForResponse: async () => ({ ticket: 'cct_KNOWN', view: { id: 'tkt_1', secretId: 'sec_x' } }),
      tokenizeFound: async () => ({ ticket: 'cct_FOUND', view: { id: 'tkt_2', secretId: 'sec_2' } }),
    });
    // Only a row the vault did not write can be this large (secret add refuses it).
    await expect(
      createFoundSecrets(vault(Buffer.alloc(64 * 1024 + 1, 'y')) as never).begin({
        principal: 'agent:a',
        source: 't',
        actor: 'a',
      }),
    ).rejects.toMatchObject({ code: 'CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE' });
    const scan = await createFoundSecrets(vault(Buffer.from('short7x')) as never).begin({
      principal: 'agent:a',
      source: 't',
      actor: 'a',
    });
    expect(await scan.text('nothing here')).toBe('nothing here');
  });

  it('fails closed when the vault fails', async () => {
    const vault = {
      knownSecrets: async () => known,
      reissueForResponse: async () => {
        throw new Error('down');
      },
      tokenizeFound: async () => {
        throw new Error('down');
      },
    };
    const scan = await createFoundSecrets(vault as never).begin({
      principal: 'agent:a',
      source: 't',
      actor: 'a',
    });
    await expect(scan.text('x known-secret-value-123')).rejects.toMatchObject({
      code: 'CC_ERR_DETECT_TOKENIZE_FAILED',
    });
  });
});

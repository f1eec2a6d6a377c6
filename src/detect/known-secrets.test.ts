import { describe, expect, it } from 'vitest';
import { createDetector } from './detector.js';
import { createKnownSecretMatcher, encodedForms } from './known-secrets.js';
import { createRng } from './synth.js';

const rng = createRng('known-secrets');

describe('createKnownSecretMatcher', () => {
  it('finds every raw occurrence and reports the id, not the value', () => {
    const m = createKnownSecretMatcher();
    m.add('sec_1', 'hunter2-but-longer');
    const text = 'a hunter2-but-longer b hunter2-but-longer';
    expect(m.find(text, 'text')).toEqual([
      { secretId: 'sec_1', encoding: 'raw', start: 2, end: 20 },
      { secretId: 'sec_1', encoding: 'raw', start: 23, end: 41 },
    ]);
  });

  it.each([0, 1, 2])('finds a secret inside base64 at alignment %i (standard and url-safe)', (align) => {
    const m = createKnownSecretMatcher();
    const secret = Buffer.from(`s3cr3t~${rng.chars('abcdefghij', 12)}?>>`);
    m.add('b64', secret);
    const blob = Buffer.concat([Buffer.from('xyzw'.slice(0, align + 3)), secret, Buffer.from('tail-bytes')]);
    const std = blob.toString('base64');
    const url = blob.toString('base64url');
    expect(m.find(`body=${std}`, 'text').map((x) => x.encoding)).toContain('base64');
    const urlEnc = m.find(`body=${url}`, 'text').map((x) => x.encoding);
    expect(urlEnc.some((e) => e === 'base64url' || e === 'base64')).toBe(true);
  });

  it('finds URL-encoded and JSON-escaped forms', () => {
    const m = createKnownSecretMatcher();
    const secret = 'p@ss "wörd"/\n&=ok';
    m.add('pw', secret);
    const url = `https://x/?q=${encodeURIComponent(secret)}`;
    const json = JSON.stringify({ v: secret });
    expect(m.find(url, 'text')).toEqual([
      { secretId: 'pw', encoding: 'url', start: 13, end: 13 + encodeURIComponent(secret).length },
    ]);
    expect(m.find(json, 'text').map((x) => x.encoding)).toEqual(['json']);
    const asciiJson = json.replace('ö', '\\u00f6');
    expect(m.find(asciiJson, 'text').map((x) => x.encoding)).toEqual(['json']);
    // Byte mode: the same secret in a UTF-8 buffer.
    expect(m.find(Buffer.from(`x ${secret} y`).toString('latin1'), 'bytes')).toEqual([
      { secretId: 'pw', encoding: 'raw', start: 2, end: 2 + Buffer.byteLength(secret) },
    ]);
  });

  it('forgets removed secrets and replaces re-added ones', () => {
    const m = createKnownSecretMatcher();
    m.add('a', 'first-secret-value');
    expect(m.has('a')).toBe(true);
    m.add('a', 'second-secret-value');
    expect(m.find('first-secret-value', 'text')).toEqual([]);
    expect(m.find('second-secret-value', 'text')).toHaveLength(1);
    expect(m.remove('a')).toBe(true);
    expect(m.remove('a')).toBe(false);
    expect(m.size).toBe(0);
    expect(m.find('second-secret-value', 'text')).toEqual([]);
  });

  it('refuses values that are too short or too large', () => {
    const m = createKnownSecretMatcher();
    expect(() => m.add('s', 'short')).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_KNOWN_SECRET_TOO_SHORT',
        message: 'known secret s is shorter than 8 bytes',
      }),
    );
    expect(() => m.add('l', Buffer.alloc(64 * 1024 + 1, 1))).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE',
        message: 'known secret l exceeds 64 KiB',
      }),
    );
  });

  it('scales to 20,000 secrets and still finds each one exactly', () => {
    const m = createKnownSecretMatcher();
    const values: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      const v = rng.chars('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', 24);
      values.push(v);
      m.add(`s${i}`, v);
    }
    expect(m.size).toBe(20_000);
    const picks = [0, 777, 19_999];
    const text = picks.map((i) => `line ${i}: ${values[i]}`).join('\n');
    expect(m.find(text, 'text').map((x) => x.secretId)).toEqual(['s0', 's777', 's19999']);
  });

  it('keeps finding the survivors after many removals (compaction)', () => {
    const m = createKnownSecretMatcher();
    const values = Array.from({ length: 2_000 }, (_, i) => `value-${i}-${rng.chars('abcdefghijklmnop', 12)}`);
    values.forEach((v, i) => {
      m.add(`s${i}`, v);
    });
    for (let i = 0; i < 1_500; i++) m.remove(`s${i}`);
    expect(m.size).toBe(500);
    expect(m.find(`${values[10]} ${values[1_600]}`, 'text').map((x) => x.secretId)).toEqual(['s1600']);
    m.add('s10', values[10]!);
    expect(m.find(`${values[10]} ${values[1_999]}`, 'text').map((x) => x.secretId)).toEqual(['s10', 's1999']);
  });

  it('has no encoded form shorter than the hashed prefix', () => {
    for (const f of encodedForms(Buffer.from('12345678'))) expect(f.text.length).toBeGreaterThanOrEqual(8);
  });

  it('reports known secrets through the detector with the secret id', () => {
    const known = createKnownSecretMatcher();
    const d = createDetector({ knownSecrets: known });
    known.add('vault:db', 'correct horse battery');
    const text = `{"note": "correct horse battery"}`;
    expect(d.scan(text)).toEqual([
      expect.objectContaining({
        ruleId: 'known-secret',
        family: 'known-secret',
        secretId: 'vault:db',
        encoding: 'raw',
        start: 10,
        end: 31,
      }),
    ]);
  });
});

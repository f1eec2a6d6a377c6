import { describe, expect, it } from 'vitest';
import { createKnownSecretMatcher } from '../../src/detect/known-secrets.js';
import { scrubLine } from '../../src/recording/recordings.js';

/**
 * The writer's scrub takes a fast path on JSON lines whose only escapes are JSON's own
 * short ones (the plain and JSON-escaped forms are matched on the line as it is) and
 * decodes views otherwise. Every way a secret can hide in a recorded string is attacked.
 */
describe('the recording writer scrubs every known secret, on the fast path and the decoding one', () => {
  const secrets = {
    quote: 'quote"secret-1234',
    newline: 'newline\nsecret-5678',
    control: 'ctl\u0001secret-9999',
    plain: 'plainsecret-abcdef',
    slash: 'back\\slash-secret-42',
    unicode: 'ünïcode-secret-7777',
  };
  const matcher = createKnownSecretMatcher();
  for (const [id, value] of Object.entries(secrets)) matcher.add(`sec_${id}`, Buffer.from(value));
  const line = (text: string) => JSON.stringify({ at: 1, kind: 'http.body', dir: 'out', data: { text } });
  const variants: Array<[string, string]> = [
    ['a quote, escaped by JSON', `pre ${secrets.quote} post`],
    ['a newline, escaped by JSON', `pre ${secrets.newline} post`],
    ['a control character (\\u0001 in the line)', `x${secrets.control}y`],
    ['plain', `{"token":"${secrets.plain}"}`],
    ['percent-encoded', `q=${encodeURIComponent(secrets.plain).replace('-', '%2D')}`],
    ['a literal \\u escape in the payload', `"\\u0070lainsecret-abcdef"`],
    ['an HTML entity', `<p>&#x70;lainsecret-abcdef</p>`],
    ['a backslash, escaped by JSON', `p ${secrets.slash} q`],
    ['non-ASCII', `« ${secrets.unicode} »`],
    ['non-ASCII as \\u escapes', JSON.stringify(secrets.unicode).replace('ü', '\\u00fc')],
  ];

  for (const [what, text] of variants) {
    it(`finds a secret hidden as ${what}`, () => {
      let hits = 0;
      const out = scrubLine(line(text), matcher, () => hits++);
      expect(hits).toBeGreaterThan(0);
      expect(out).toMatch(/\[secret:sec_[a-z]+\]/);
      // Nothing is left in any form the matcher knows, decoded views included.
      expect(matcher.find(out, 'text')).toEqual([]);
      for (const value of Object.values(secrets))
        expect(JSON.parse(out).data.text ?? '').not.toContain(value);
    });
  }

  it('leaves a line without secrets untouched', () => {
    const clean = line('{"query":"nothing to see \\"here\\""} 100% & more');
    expect(scrubLine(clean, matcher, () => expect.unreachable())).toBe(clean);
  });
});

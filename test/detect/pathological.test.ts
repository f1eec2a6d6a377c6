import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createDetector } from '../../src/detect/detector.js';
import { createKnownSecretMatcher } from '../../src/detect/known-secrets.js';
import { BUILTIN_RULES } from '../../src/detect/rules/index.js';
import { createStreamScanner } from '../../src/detect/stream-scanner.js';

// These inputs defeat backtracking regex engines with unbounded or nested quantifiers. The
// assertions are about results; "fast enough" is vitest's per-test timeout (30 s), not a
// timing assertion. bench/detect.ts measures speed.
const all = createDetector({ pii: true });

const PATHOLOGICAL: readonly [string, () => string][] = [
  ['1 MB of a', () => 'a'.repeat(1 << 20)],
  ['AKIA x 100k', () => 'AKIA'.repeat(100_000)],
  ['password= x 50k', () => 'password='.repeat(50_000)],
  ['password=" x 50k', () => 'password: "'.repeat(50_000)],
  ['PEM headers without END', () => '-----BEGIN RSA PRIVATE KEY-----\nMIIE'.repeat(20_000)],
  ['eyJ. x 100k', () => 'eyJ.'.repeat(100_000)],
  ['JWT-shaped run', () => `eyJ${'a'.repeat(200_000)}.eyJ${'b'.repeat(200_000)}`],
  ['scheme://user: x 30k', () => 'postgres://user:'.repeat(30_000)],
  ['https://a: x 30k', () => 'https://a:'.repeat(30_000)],
  ['https://a:@ x 30k', () => 'https://a:@'.repeat(30_000)],
  ['1 MB of digits', () => '4'.repeat(1 << 20)],
  ['digits and dashes', () => '4111-'.repeat(200_000)],
  ['colons and hex', () => 'ab:'.repeat(300_000)],
  ['@ x 500k', () => 'a@'.repeat(500_000)],
  ['dots', () => '1.'.repeat(400_000)],
  ['bearer x 100k', () => 'Bearer '.repeat(100_000)],
  ['key= x 100k', () => 'api_key='.repeat(100_000)],
  ['long base64 line', () => 'QUJD'.repeat(250_000)],
  ['xox tokens', () => 'xoxb-1234567890-'.repeat(50_000)],
  ['secret runs', () => `secret${'='.repeat(500_000)}`],
  // Gateway-context rules (encoded URIs, Basic anywhere, CSV header lookbehind, prose).
  ['encoded scheme x 30k', () => 'postgres%3A%2F%2Fu%3A'.repeat(30_000)],
  ['encoded twice x 30k', () => 'https%253A%252F%252Fa%253A%2525'.repeat(20_000)],
  ['encoded password run', () => `redis%3A%2F%2F%3A${'%2540'.repeat(200_000)}`],
  ['raw @ run in userinfo', () => `postgres://u:${'@'.repeat(300_000)}`],
  ['Basic x 100k', () => 'Basic QUJD '.repeat(100_000)],
  ['CSV header then 40-char fields', () => `aws_secret_access_key\n${`${'A'.repeat(40)},`.repeat(25_000)}`],
  ['CSV header repeated', () => 'secret access key\n,'.repeat(50_000)],
  ['CSV header then long lines', () => `Secret access key\n${`${'b'.repeat(999)}\n`.repeat(1_000)}`],
  ['escaped newlines after header', () => `secret_access_key${'\\n\\t'.repeat(200_000)}`],
  ['password is x 50k', () => 'the password you need is '.repeat(50_000)],
  ['password + many words', () => `password ${'word '.repeat(200_000)}`],
  ['telegram encoded colons', () => '123456789%253AAA'.repeat(50_000)],
];

describe('pathological inputs', () => {
  it.each(PATHOLOGICAL)('%s completes and finds nothing spurious', (_name, make) => {
    const text = make();
    const findings = all.scan(text);
    // None of these contains a real credential: at most PII-shaped numbers.
    for (const f of findings) expect(f.family).toBe('pii');
  });

  it('streams a pathological input in odd chunks without error', () => {
    const s = createStreamScanner({ detector: all });
    const text = 'password='.repeat(50_000);
    for (let i = 0; i < text.length; i += 4093) s.write(text.slice(i, i + 4093));
    expect(s.end()).toEqual([]);
  });

  it('known-secret matcher handles repetitive text', () => {
    const known = createKnownSecretMatcher();
    known.add('a', 'aaaaaaaaaaaaaaaaaaaaaaab');
    const found = known.find('a'.repeat(1 << 20), 'text');
    expect(found).toEqual([]);
  });
});

describe('garbage never throws', () => {
  it('arbitrary strings', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 2000 }), (s) => {
        expect(Array.isArray(all.scan(s))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 4000 }), (b) => {
        expect(Array.isArray(all.scan(Buffer.from(b)))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('keyword soup', () => {
    const words = [...new Set(BUILTIN_RULES.flatMap((r) => r.keywords))];
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.constantFrom(...words),
            fc.string({ maxLength: 8 }),
            fc.constantFrom('=', ':', '"', ' ', '\n'),
          ),
          {
            maxLength: 300,
          },
        ),
        (parts) => {
          const text = parts.join('');
          const findings = all.scan(text);
          for (const f of findings) {
            expect(f.start).toBeGreaterThanOrEqual(0);
            expect(f.end).toBeGreaterThan(f.start);
            expect(f.end).toBeLessThanOrEqual(text.length);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

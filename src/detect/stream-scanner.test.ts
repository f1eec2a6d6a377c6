import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createDetector } from './detector.js';
import { createKnownSecretMatcher } from './known-secrets.js';
import { BUILTIN_RULES } from './rules/index.js';
import { createStreamScanner } from './stream-scanner.js';
import { createRng } from './synth.js';
import type { Finding } from './types.js';

const detector = createDetector();

function streamAll(chunks: readonly (Buffer | string)[], d = detector): Finding[] {
  const s = createStreamScanner({ detector: d });
  const out: Finding[] = [];
  for (const c of chunks) out.push(...s.write(c));
  out.push(...s.end());
  return out;
}

function splitAt(buf: Buffer, cuts: readonly number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let at = 0;
  for (const p of points) {
    out.push(buf.subarray(at, p));
    at = p;
  }
  out.push(buf.subarray(at));
  return out;
}

const FILLER = [
  'INFO request served ',
  '{"id": 42, "ok": true}\n',
  'SELECT * FROM users;\n',
  'lorem ipsum dolor sit amet ',
  'token count 17 ',
  'ünïcödé ✓ ',
  '\n',
];
const samples = BUILTIN_RULES.filter((r) => r.defaultEnabled).map((r) => r.sample);

const docArb = fc
  .array(
    fc.oneof(
      fc.constantFrom(...FILLER),
      fc.tuple(fc.nat(samples.length - 1), fc.nat()).map(([i, seed]) => {
        const s = samples[i]!(createRng(seed));
        return ` ${s.key}=${s.value}\n`;
      }),
    ),
    { maxLength: 40 },
  )
  .map((parts) => Buffer.from(parts.join('')));

describe('createStreamScanner', () => {
  it('gives the same findings for any split as for the whole text', () => {
    fc.assert(
      fc.property(docArb, fc.array(fc.nat(), { maxLength: 12 }), (doc, cuts) => {
        const whole = detector.scan(doc);
        expect(streamAll(splitAt(doc, cuts))).toEqual(whole);
      }),
      { numRuns: 150 },
    );
  });

  it('finds a private key split into one-byte chunks, with absolute byte offsets', () => {
    const rule = BUILTIN_RULES.find((r) => r.id === 'private-key-openssh')!;
    const s = rule.sample(createRng(1));
    const doc = Buffer.from(`prefix ✓ ${'x'.repeat(20_000)}\n${s.value}\n`);
    const chunks = [...doc].map((b) => Buffer.from([b]));
    const found = streamAll(chunks);
    expect(found.map((f) => f.ruleId)).toEqual(['private-key-openssh']);
    expect(doc.subarray(found[0]!.start, found[0]!.end).toString()).toBe(s.secret);
  });

  it('keeps memory bounded on a long stream', () => {
    const s = createStreamScanner({ detector });
    let max = 0;
    const chunk = Buffer.from('harmless log line with nothing in it\n'.repeat(100));
    for (let i = 0; i < 2_000; i++) {
      s.write(chunk);
      max = Math.max(max, s.buffered);
    }
    s.end();
    expect(s.offset).toBe(2_000 * chunk.length);
    expect(max).toBeLessThan(3 * (detector.maxMatchLength + 64) + chunk.length + 1);
  });

  it('finds known secrets straddling chunks', () => {
    const known = createKnownSecretMatcher();
    known.add('db', 'vault-held-password-123');
    const d = createDetector({ knownSecrets: known });
    const doc = Buffer.from(`${'.'.repeat(30_000)} vault-held-password-123 end`);
    const found = streamAll(splitAt(doc, [30_010]), d);
    expect(found).toEqual([
      expect.objectContaining({ ruleId: 'known-secret', secretId: 'db', start: 30_001, end: 30_024 }),
    ]);
  });

  it('refuses writes after end', () => {
    const s = createStreamScanner({ detector });
    s.end();
    expect(() => s.write('x')).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_DETECT_STREAM_ENDED',
        message: 'write after end on a stream scanner',
      }),
    );
  });
});

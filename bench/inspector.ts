/**
 * Response inspector micro-benchmark: one Aho-Corasick pass (plus decoded views) against
 * the former approach (one `indexOf` per pattern), at 100, 1k and 10k known secrets.
 *
 *   node --import tsx bench/inspector.ts            # 4 MB body
 *   BENCH_MB=16 node --import tsx bench/inspector.ts
 *
 * Prints MB/s for a JSON-like body without escapes and one full of escapes (`\u0026`,
 * `%2F`, `&amp;`), fed in 64 KiB chunks, and the build time of the pattern set.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { buildPatterns, PatternScan } from '../src/gateway/inspector.js';

const MB = 1024 * 1024;
const size = Number(process.env['BENCH_MB'] ?? 4) * MB;
const CHUNK = 64 * 1024;

function body(escaped: boolean): Buffer {
  const parts: string[] = [];
  let n = 0;
  let i = 0;
  while (n < size) {
    const line = escaped
      ? `{"id":${i},"name":"item \\u0026 co","url":"/a%2Fb?q=x%20y","html":"&lt;b&gt;${i}&amp;"},\n`
      : `{"id":${i},"name":"item number ${i}","status":"shipped","total":${i * 3}.25},\n`;
    parts.push(line);
    n += line.length;
    i++;
  }
  return Buffer.from(parts.join(''));
}

async function scanAll(scan: PatternScan, input: Buffer): Promise<void> {
  for (let at = 0; at < input.length; at += CHUNK) await scan.push(input.subarray(at, at + CHUNK));
  await scan.end();
}

/** The former matcher's cost: one indexOf per pattern over every chunk. */
function indexOfAll(patterns: readonly { bytes: Buffer }[], input: Buffer): number {
  let found = 0;
  for (let at = 0; at < input.length; at += CHUNK) {
    const chunk = input.subarray(at, at + CHUNK);
    for (const p of patterns) if (chunk.indexOf(p.bytes) !== -1) found++;
  }
  return found;
}

const plain = body(false);
const escaped = body(true);
for (const count of [100, 1000, 10_000]) {
  const secrets = Array.from({ length: count }, (_, i) => ({
    id: `sec_${i}`,
    value: Buffer.from(`s${i}-${randomBytes(18).toString('base64url')}`),
  }));
  let t = performance.now();
  const set = buildPatterns(secrets);
  const build = performance.now() - t;
  const row: string[] = [`${String(count).padStart(6)} secrets`, `build ${build.toFixed(0)} ms`];
  // Warm up (JIT) on a slice of each body.
  await scanAll(new PatternScan(set, { reissue: async () => 'cct_x' }), plain.subarray(0, MB));
  await scanAll(new PatternScan(set, { reissue: async () => 'cct_x' }), escaped.subarray(0, MB));
  for (const [name, input] of [
    ['plain', plain],
    ['escaped', escaped],
  ] as const) {
    const scan = new PatternScan(set, { reissue: async () => 'cct_x' });
    t = performance.now();
    await scanAll(scan, input);
    row.push(`${name} ${(input.length / MB / ((performance.now() - t) / 1000)).toFixed(1)} MB/s`);
  }
  t = performance.now();
  indexOfAll(set.patterns, plain);
  row.push(`indexOf-per-pattern ${(plain.length / MB / ((performance.now() - t) / 1000)).toFixed(1)} MB/s`);
  console.log(row.join('  '));
}

// Binary output (an archive, scp -O, `cat` of an image): random bytes hold a `%`, `\` or `&`
// every ~85 bytes and a decodable escape every few KB; decoded views are built only around
// those, as wide as the longest pattern (an RSA key in PEM: ~2.3 KB with its base64 forms).
const binary = randomBytes(size);
const pem = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
  type: 'pkcs8',
  format: 'pem',
}) as string;
for (const [name, secrets] of [
  ['1 short secret', [{ id: 'short', value: Buffer.from(`s-${randomBytes(18).toString('base64url')}`) }]],
  ['1 PEM private key', [{ id: 'pem', value: Buffer.from(pem) }]],
  [
    '100 short secrets',
    Array.from({ length: 100 }, (_, i) => ({
      id: `sec_${i}`,
      value: Buffer.from(`s${i}-${randomBytes(18).toString('base64url')}`),
    })),
  ],
] as const) {
  const set = buildPatterns(secrets);
  await scanAll(new PatternScan(set, { reissue: async () => 'cct_x' }), binary.subarray(0, MB));
  const scan = new PatternScan(set, { reissue: async () => 'cct_x' });
  const t = performance.now();
  await scanAll(scan, binary);
  console.log(
    `binary body, ${name} (longest pattern ${set.maxLength} B): ${(binary.length / MB / ((performance.now() - t) / 1000)).toFixed(1)} MB/s`,
  );
}

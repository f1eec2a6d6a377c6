/**
 * The known-secret scans alone, for profiling and back-to-back runs (issue 16):
 *
 *   node --import tsx bench/known-secret-scan.ts                 # index 1k and 100k, matcher 1k
 *   BENCH_SECRETS=100000 BENCH_WHAT=index node --cpu-prof --cpu-prof-dir=/tmp/prof \
 *     --import tsx bench/known-secret-scan.ts
 *
 * `index`: what the gateways run, the shared known-secret index's pattern set
 * (src/gateway/known-secret-index.ts) through a PatternScan, the corpus pushed in 64 KiB
 * chunks, as in bench/detect.ts's last section. `matcher`: the detector's matcher
 * (createKnownSecretMatcher) `find` over the whole corpus as one latin1 text, as in its
 * "matcher alone" figure. The corpus is bench/detect.ts's (same seed, BENCH_MB, default 10);
 * secrets are 24-40 random characters. Prints MB per CPU-second and the load average, and a
 * digest of what the scan returned (the index: the rewritten body; the matcher: its matches),
 * to compare two trees' results. BENCH_PLANT=1 plants 200 of the secrets in the corpus (raw,
 * in base64, and partly percent- or JSON-escaped) so that there is something to find.
 */
import { createHash } from 'node:crypto';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { createKnownSecretMatcher } from '../src/detect/known-secrets.js';
import { createRng } from '../src/detect/synth.js';
import { PatternScan } from '../src/gateway/inspector.js';
import { createKnownSecretIndex } from '../src/gateway/known-secret-index.js';
import { buildCorpus, MB } from './detect-corpus.js';

const TARGET_MB = Number(process.env['BENCH_MB'] ?? 10);
const COUNTS = (process.env['BENCH_SECRETS'] ?? '1000,100000').split(',').map(Number);
const WHAT = (process.env['BENCH_WHAT'] ?? 'index,matcher').split(',');
const REPEATS = Number(process.env['BENCH_REPEATS'] ?? 3);
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

const plain = buildCorpus(TARGET_MB, createRng('bench-detect'));

function values(n: number): Array<readonly [string, Buffer]> {
  const rng = createRng(`bench-known-secret-scan-${n}`);
  return Array.from(
    { length: n },
    (_, i) => [`s${i}`, Buffer.from(rng.chars(ALPHABET, 24 + rng.int(17)))] as const,
  );
}

/** The corpus, with 200 of `secrets` planted at line starts in several forms when BENCH_PLANT=1. */
function corpusFor(secrets: ReadonlyArray<readonly [string, Buffer]>): Buffer {
  if (process.env['BENCH_PLANT'] !== '1') return plain;
  const rng = createRng('bench-known-secret-scan-plant');
  const partly = (value: string, form: (c: string) => string) =>
    [...value].map((c, k) => (k % 5 === 2 ? form(c) : c)).join('');
  const hex = (c: string) => c.charCodeAt(0).toString(16);
  const at = Array.from({ length: 200 }, () => rng.int(plain.length)).sort((a, b) => a - b);
  const parts: Buffer[] = [];
  let from = 0;
  at.forEach((position, k) => {
    const lineStart = plain.lastIndexOf(0x0a, position) + 1;
    if (lineStart < from) return;
    const value = secrets[(k * 7919) % secrets.length]![1].toString('latin1');
    const forms = [
      value,
      Buffer.from(`{"k":"${value}"}`).toString('base64'),
      partly(value, (c) => `%${hex(c).toUpperCase()}`),
      partly(value, (c) => `\\u00${hex(c)}`),
    ];
    parts.push(plain.subarray(from, lineStart), Buffer.from(`secret=${forms[k % forms.length]} `, 'latin1'));
    from = lineStart;
  });
  parts.push(plain.subarray(from));
  return Buffer.concat(parts);
}

function cpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}
const load = () => os.loadavg()[0]!.toFixed(2);
const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const digestOf = (parts: Iterable<Buffer | string>) => {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(part);
  return hash.digest('hex').slice(0, 16);
};

console.log(`corpus ${(plain.length / MB).toFixed(1)} MB, node ${process.version}, load ${load()}`);

for (const n of COUNTS) {
  const secrets = values(n);
  const corpus = corpusFor(secrets);
  if (WHAT.includes('index')) {
    const index = createKnownSecretIndex(
      {
        knownSecrets: async () => secrets.map(([id, value]) => ({ id, value: { reveal: () => value } })),
        knownSecret: async () => null,
      },
      { subscribe: () => () => undefined, feedCurrent: () => true },
    );
    const t = performance.now();
    const set = await index.current();
    const built = (performance.now() - t) / 1000;
    let found = 0;
    let output = '';
    const scanAll = async (input: Buffer) => {
      const scan = new PatternScan(set, { reissue: async (id) => `cct_${id}` });
      const out: Buffer[] = [];
      for (let at = 0; at < input.length; at += 64 * 1024)
        out.push(await scan.push(input.subarray(at, at + 64 * 1024)));
      out.push(await scan.end());
      found = 0;
      for (const count of scan.findings.values()) found += count;
      output = digestOf(out);
    };
    // Warm up on the whole corpus: a 2 MB warm-up left the first timed pass at half speed.
    await scanAll(corpus);
    const rates: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      const c = cpuSeconds();
      await scanAll(corpus);
      rates.push(corpus.length / MB / (cpuSeconds() - c));
    }
    console.log(
      `index   ${String(n).padStart(7)} secrets: ${median(rates).toFixed(1)} MB per CPU-second (median of ${REPEATS}: ${rates.map((x) => x.toFixed(1)).join(' ')}), ${found} found, output ${output}, built in ${built.toFixed(1)} s, load ${load()}`,
    );
    index.close();
  }
  if (WHAT.includes('matcher')) {
    const known = createKnownSecretMatcher();
    for (const [id, value] of secrets) known.add(id, value);
    const text = corpus.toString('latin1');
    known.find(text.slice(0, 2 * MB), 'bytes', corpus.subarray(0, 2 * MB));
    const rates: number[] = [];
    let found: ReturnType<typeof known.find> = [];
    for (let r = 0; r < REPEATS; r++) {
      const c = cpuSeconds();
      found = known.find(text, 'bytes', corpus);
      rates.push(corpus.length / MB / (cpuSeconds() - c));
    }
    // Sorted whole: equal spans of two secrets may come in another order on another tree.
    const matches = found
      .map((m) => `${m.secretId}:${m.encoding}:${m.start}:${m.end}:${m.viaView === true}\n`)
      .sort();
    console.log(
      `matcher ${String(n).padStart(7)} secrets: ${median(rates).toFixed(1)} MB per CPU-second (median of ${REPEATS}: ${rates.map((x) => x.toFixed(1)).join(' ')}), ${found.length} found, matches ${digestOf(matches)}, load ${load()}`,
    );
  }
}

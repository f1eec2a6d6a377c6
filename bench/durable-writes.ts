// What the durable writes cost the HTTP front-end's event loop: an upper bound for moving
// them off it (issue 16). The reference case of bench/http.ts (one ticket in a header, a 4 KB
// JSON response, SQLite store, wrk -c16), three ways, each gateway in a process of its own:
//
//   as shipped      every exchange audited (durable before release), every session recorded
//   no recording    the session recorder drops what it is given
//   no durable      the recorder drops, and every audit append resolves at once with a record
//   writes          that is never sealed, written or flushed (no guard checked, no ticket use
//                   counted): what the request costs with no write on its thread at all
//
// The last two are measurement stubs, here only: the gateway never runs without its audit.
// Rounds rotate the order; prints req/s and CPU a request (the gateway process's), median
// and range, and each as a ratio to "as shipped".
//
// Run: node --import tsx bench/durable-writes.ts   (BENCH_SECONDS=5 BENCH_WARMUP=3
// BENCH_ROUNDS=3; needs wrk: apt-get install -y wrk)
import { execFile } from 'node:child_process';
import { loadavg } from 'node:os';
import { promisify } from 'node:util';
import pino from 'pino';
import type { AuditDraft } from '../src/audit/audit-log.js';
import { GatewayDriver } from '../src/gateway/driver.js';
import { httpGateway } from '../src/server/frontends.js';
import type { AuditRecord } from '../src/store/types.js';
import { openReferenceHome, startUpstream } from './reference-case.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const VARIANTS = ['as shipped', 'no recording', 'no durable writes'] as const;
type Variant = (typeof VARIANTS)[number];
const run = promisify(execFile);

async function wrk(url: string, headers: Record<string, string>, seconds: number): Promise<number> {
  const args = ['-t1', '-c16', `-d${seconds}s`];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`);
  const { stdout } = await run('wrk', [...args, url]);
  const match = /Requests\/sec:\s+([\d.]+)/.exec(stdout);
  if (match === null) throw new Error(`wrk printed no rate:\n${stdout}`);
  return Number(match[1]);
}

/** One variant in this process: a gateway on a new home, warmed up, then measured. */
async function measure(variant: Variant, upstreamPort: number): Promise<{ rps: number; cpu: number }> {
  const reference = await openReferenceHome(upstreamPort, 'coatcheck-bench-writes-');
  const { ctx, headers } = reference;
  try {
    if (variant === 'no durable writes') {
      // Measurement stub: answers as a committed record would, writes nothing.
      let seq = 1_000_000;
      ctx.audit.append = async (draft: AuditDraft): Promise<AuditRecord> => {
        seq += 1;
        return { ...draft, seq, chain: '', chainSeq: seq, ts: Date.now(), prevHash: '', hash: '' };
      };
    }
    const driver = new GatewayDriver({
      registry: ctx.metrics,
      log: pino({ level: 'warn' }),
      store: ctx.store,
      clock: ctx.clock,
      ...(variant === 'as shipped'
        ? {}
        : { recorder: { record: () => undefined, flush: async () => undefined } }),
    });
    const gateway = await driver.start(httpGateway(ctx, { host: '127.0.0.1', port: 0 }, {}));
    try {
      const url = `${gateway.url}${reference.path}`;
      await wrk(url, headers, WARMUP);
      const before = process.cpuUsage();
      const rps = await wrk(url, headers, SECONDS);
      const cpu = process.cpuUsage(before);
      return { rps, cpu: (cpu.user + cpu.system) / (rps * SECONDS) };
    } finally {
      await gateway.close();
    }
  } finally {
    await reference.close();
  }
}

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const spread = (xs: readonly number[], digits = 0) =>
  `${median(xs).toFixed(digits)} [${Math.min(...xs).toFixed(digits)}-${Math.max(...xs).toFixed(digits)}]`;

async function main() {
  const child = process.env.BENCH_DURABLE_VARIANT as Variant | undefined;
  if (child !== undefined) {
    process.stdout.write(
      `${JSON.stringify(await measure(child, Number(process.env.BENCH_UPSTREAM_PORT)))}\n`,
    );
    return;
  }
  const upstream = await startUpstream();
  const results = new Map<Variant, Array<{ rps: number; cpu: number }>>(VARIANTS.map((v) => [v, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < VARIANTS.length; i++) {
      const variant = VARIANTS[(i + round) % VARIANTS.length]!;
      const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL(import.meta.url).pathname], {
        env: { ...process.env, BENCH_DURABLE_VARIANT: variant, BENCH_UPSTREAM_PORT: String(upstream.port) },
      });
      results.get(variant)!.push(JSON.parse(stdout.trim().split('\n').at(-1)!));
    }
  }
  upstream.stop();
  console.log(
    `durable writes on the event loop: one ticket, 4 KB JSON response, SQLite store, wrk -c16 ${SECONDS}s after ${WARMUP}s, ${ROUNDS} rounds in rotated order; load average ${loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );
  const shipped = results.get('as shipped')!;
  for (const variant of VARIANTS) {
    const r = results.get(variant)!;
    const rpsRatio = r.map((x, i) => x.rps / shipped[i]!.rps);
    const cpuRatio = r.map((x, i) => x.cpu / shipped[i]!.cpu);
    console.log(
      `${variant.padEnd(18)} ${spread(r.map((x) => x.rps))} req/s (${spread(rpsRatio, 2)} of as shipped), ${spread(r.map((x) => x.cpu))} µs CPU a request (${spread(cpuRatio, 2)})`,
    );
  }
}

await main();

// Does the HTTP path scale with the vault (issue 16)? Requests/s through the reverse proxy
// (one header ticket, a 4 KB JSON response scanned for known secrets) with 1 vs 100k secrets
// in the vault and 1 vs 1M live tickets, measured side by side in one run (three gateways
// in this process, each with its own SQLite home; the load alternates between them in
// rotated order), and the stall other requests see while a secret is added or a ticket
// revoked at 100k secrets.
//
// Run: npm run bench:scale
//   BENCH_SECRETS=100000 BENCH_TICKETS=1000000 BENCH_SECONDS=5 BENCH_CONNECTIONS=16
//   BENCH_REPEATS=3 BENCH_STALL_SECONDS=3   (BENCH_ONLY=index: the index section alone;
//   BENCH_PROFILE_DIR=DIR: a CPU profile of each stall window, to find what holds the loop)
//
// Secrets and tickets are written straight through the store in bulk (sealed under the
// keyring like the vault seals them, one transaction each), so setup takes seconds, not
// the hours 100k audited additions would. Load comes from wrk (one thread) when on PATH,
// else autocannon. Goals: each ratio within 10% (>= 0.90); the stall (the most the event
// loop was held up, and the slowest request, during the change and the 3 s after it) under
// 1 ms above what the same window shows without a change. The machine is shared: the load
// average is printed beside every number, and the ratios are the point.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Session as InspectorSession } from 'node:inspector';
import { createRequire } from 'node:module';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import pino from 'pino';
import { request } from 'undici';
import { resolveHome } from '../src/config/home.js';
import { newId } from '../src/core/ids.js';
import { agentRef } from '../src/core/principal.js';
import { buildPatterns } from '../src/gateway/inspector.js';
import { createKnownSecretIndex } from '../src/gateway/known-secret-index.js';
import { initHome, openContext } from '../src/server/context.js';
import { startHttpFrontend } from '../src/server/frontends.js';
import type { SecretRecord, StoreChange, TicketRecord } from '../src/store/types.js';
import { KeyService } from '../src/vault/key-service.js';

const SECRETS = Number(process.env.BENCH_SECRETS ?? 100_000);
const TICKETS = Number(process.env.BENCH_TICKETS ?? 1_000_000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const REPEATS = Math.max(1, Number(process.env.BENCH_REPEATS ?? 3));
const STALL_SECONDS = Number(process.env.BENCH_STALL_SECONDS ?? 3);
const run = promisify(execFile);
const load = () => `load ${loadavg()[0]!.toFixed(2)}`;
const WRK = (() => {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code !== 'ENOENT';
  }
})();
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-scale-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

async function rps(url: string, headers: Record<string, string>): Promise<number> {
  if (WRK) {
    const script = join(dir, 'load.lua');
    writeFileSync(
      script,
      [
        ...Object.entries(headers).map(([k, v]) => `wrk.headers["${k}"] = "${v}"`),
        'done = function(summary) io.write(string.format(\'{"requests":%d,"duration":%d,"errors":%d}\\n\', summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.timeout)) end',
        '',
      ].join('\n'),
    );
    const { stdout } = await run('wrk', ['-t1', `-c${CONNECTIONS}`, `-d${SECONDS}s`, '-s', script, url]);
    const line = stdout.split('\n').find((l) => l.startsWith('{"requests"'));
    if (line === undefined) throw new Error(`wrk printed no summary:\n${stdout}`);
    const r = JSON.parse(line) as { requests: number; duration: number; errors: number };
    // Timeouts on a loaded machine count as errors in wrk's summary; the rate is still the rate.
    if (r.errors > 0) console.log(`    (${r.errors} errors or timeouts under load at ${url})`);
    return r.requests / (r.duration / 1e6);
  }
  const bin = createRequire(import.meta.url).resolve('autocannon/autocannon.js');
  const args = [bin, '-j', '-c', String(CONNECTIONS), '-d', String(SECONDS)];
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}=${v}`);
  const { stdout } = await run(process.execPath, [...args, url], { maxBuffer: 16 * 1024 * 1024 });
  const r = JSON.parse(stdout) as { requests: { average: number }; non2xx: number; errors: number };
  if (r.non2xx + r.errors > 0) console.log(`    (${r.non2xx + r.errors} errors under load at ${url})`);
  return r.requests.average;
}

async function spawnUpstream() {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', new URL('./http-upstream.ts', import.meta.url).pathname],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const port = await new Promise<number>((resolve) =>
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
  );
  return { child, port };
}

type Ctx = Awaited<ReturnType<typeof openContext>>;

/** `count` secrets sealed as the vault seals them, written in one transaction. */
async function bulkSecrets(ctx: Ctx, count: number): Promise<void> {
  const keys = new KeyService(ctx.keys);
  const now = Date.now();
  await ctx.store.transaction(async (tx) => {
    for (let i = 0; i < count; i++) {
      const id = newId('sec');
      const value = Buffer.from(`bulk-${i}-${randomBytes(12).toString('base64url')}-secret-value`);
      const { dataKey, ciphertext } = keys.sealValue(id, value);
      const record: SecretRecord = {
        id,
        name: `bulk-${i}`,
        kind: 'generic',
        allow: ['up'],
        placements: ['header:authorization'],
        ...(await keys.wrapDataKey(tx, id, dataKey)),
        ciphertext,
        fingerprint: keys.fingerprint(value),
        createdAt: now,
        erasedAt: null,
      };
      dataKey.fill(0);
      await tx.insertSecret(record);
    }
  });
}

/** `count` live tickets for `secretId` (bound to `principal`), written in one transaction. */
async function bulkTickets(ctx: Ctx, count: number, secretId: string, principal: string): Promise<void> {
  const keys = new KeyService(ctx.keys);
  const now = Date.now();
  await ctx.store.transaction(async (tx) => {
    for (let i = 0; i < count; i++) {
      const record: TicketRecord = {
        id: newId('tkt'),
        hash: keys.ticketHash(`bulk-ticket-${i}`),
        secretId,
        principal,
        destinations: ['up'],
        expiresAt: now + 86_400_000,
        maxUses: null,
        uses: 0,
        parentId: null,
        createdAt: now,
        revokedAt: null,
      };
      await tx.insertTicket(record);
    }
  });
}

interface Gateway {
  readonly label: string;
  readonly url: string;
  readonly headers: Record<string, string>;
  readonly ctx: Ctx;
  readonly agent: string;
  close(): Promise<void>;
}

async function gateway(label: string, upstream: string, secrets: number, tickets: number): Promise<Gateway> {
  const home = resolveHome(join(dir, label), {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, 'log:\n  level: warn\n');
  const ctx = await openContext(home, { env: {} });
  const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
  const view = await ctx.vault.addSecret(
    { name: 's0', value: Buffer.from('bench-secret-value-0-0123456789abcdef'), allow: ['up'] },
    'admin:bench',
  );
  const { ticket } = await ctx.vault.issueTicket(
    { secret: 's0', principal: agentRef(agent.id) },
    'admin:bench',
  );
  await ctx.connections.add({ name: 'up', type: 'http', url: upstream }, 'admin:bench');
  let t = performance.now();
  if (secrets > 1) await bulkSecrets(ctx, secrets - 1);
  if (tickets > 1) await bulkTickets(ctx, tickets - 1, view.id, agentRef(agent.id));
  // Written behind the vault's back: tell every cache, as another process's commit would.
  await ctx.store.publish({ type: 'resync' });
  const setup = performance.now() - t;
  const frontend = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'warn' }));
  const url = `${frontend.url}/c/up/json4k`;
  const headers = { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` };
  // The first request waits for the known-secret list to be loaded and indexed.
  t = performance.now();
  const first = await request(url, { headers });
  if (first.statusCode !== 200) throw new Error(`${label}: status ${first.statusCode}`);
  await first.body.dump();
  console.log(
    `  ${label}: ${secrets} secrets, ${tickets} tickets; bulk write ${(setup / 1000).toFixed(1)} s; first response ${(performance.now() - t).toFixed(0)} ms (${load()})`,
  );
  return {
    label,
    url,
    headers,
    ctx,
    agent: agentRef(agent.id),
    close: async () => {
      await frontend.close();
      await ctx.close();
    },
  };
}

const median = (values: readonly number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

/**
 * Sequential requests to `gw` for STALL_SECONDS after `change` starts: the slowest request
 * and the most the event loop was held up (monitorEventLoopDelay, 1 ms resolution).
 */
/** BENCH_PROFILE_DIR: a CPU profile of each stall window is written there (label-repeat.cpuprofile). */
const PROFILE_DIR = process.env.BENCH_PROFILE_DIR;

async function profiled<T>(name: string, work: () => Promise<T>): Promise<T> {
  if (PROFILE_DIR === undefined) return work();
  const session = new InspectorSession();
  session.connect();
  const post = (method: string, params?: object) =>
    new Promise<unknown>((resolve, reject) =>
      session.post(method, params, (error, result) => (error ? reject(error) : resolve(result))),
    );
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
  try {
    return await work();
  } finally {
    const { profile } = (await post('Profiler.stop')) as { profile: unknown };
    mkdirSync(PROFILE_DIR, { recursive: true });
    writeFileSync(
      join(PROFILE_DIR, `${name.replace(/[^a-z0-9-]+/gi, '-')}.cpuprofile`),
      JSON.stringify(profile),
    );
    session.disconnect();
  }
}

async function stallDuring(
  gw: Gateway,
  change: () => Promise<unknown>,
): Promise<{ loop: number; slowest: number; requests: number }> {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  const until = performance.now() + STALL_SECONDS * 1000;
  let slowest = 0;
  let requests = 0;
  let failed = 0;
  histogram.enable();
  const changing = change();
  while (performance.now() < until) {
    const started = performance.now();
    try {
      const res = await request(gw.url, { headers: gw.headers });
      await res.body.dump();
      if (res.statusCode !== 200) failed++;
    } catch {
      // A connection dropped while the gateway was held up counts as a failed request.
      failed++;
    }
    slowest = Math.max(slowest, performance.now() - started);
    requests++;
  }
  await changing;
  histogram.disable();
  // The timer's own 1 ms period is not a stall.
  if (failed > 0) console.log(`    (${failed} of ${requests} requests failed during the window)`);
  return { loop: Math.max(0, histogram.max / 1e6 - 1), slowest, requests };
}

/**
 * The index alone, beside what it replaced, in this run: at SECRETS secrets, the longest the
 * event loop is held while one secret is added (incremental: one small segment; the old
 * way: the whole pattern set rebuilt at once, `buildPatterns`), and how long until a
 * response scan finds the new secret.
 */
async function indexStall(): Promise<void> {
  const values = new Map<string, Buffer>();
  for (let i = 0; i < SECRETS; i++)
    values.set(`s${i}`, Buffer.from(`bulk-${i}-${randomBytes(12).toString('base64url')}`));
  const listeners: Array<(c: StoreChange) => void> = [];
  const index = createKnownSecretIndex(
    {
      knownSecrets: async () => [...values].map(([id, value]) => ({ id, value: { reveal: () => value } })),
      knownSecret: async (id) => {
        const value = values.get(id);
        return value === undefined ? null : { id, value: { reveal: () => value } };
      },
    },
    {
      subscribe: (l) => {
        listeners.push(l);
        return () => undefined;
      },
      feedCurrent: () => true,
    },
  );
  let t = performance.now();
  await index.current();
  const built = performance.now() - t;
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  const rounds: number[] = [];
  const quiet: number[] = [];
  const visible: number[] = [];
  for (let r = 0; r < REPEATS; r++) {
    // The same window without a change: the machine's own noise.
    histogram.reset();
    histogram.enable();
    await new Promise((resolve) => setTimeout(resolve, 200));
    histogram.disable();
    quiet.push(Math.max(0, histogram.max / 1e6 - 1));
    histogram.reset();
    histogram.enable();
    const id = `added-${r}`;
    values.set(id, Buffer.from(`added-${r}-${randomBytes(12).toString('base64url')}`));
    t = performance.now();
    for (const l of listeners) l({ type: 'secret.added', id });
    const set = await index.current();
    visible.push(performance.now() - t);
    await new Promise((resolve) => setTimeout(resolve, 200));
    histogram.disable();
    rounds.push(Math.max(0, histogram.max / 1e6 - 1));
    if (!set.mayContain(values.get(id)!)) throw new Error('the added secret is not found');
  }
  index.close();
  const secrets = [...values].map(([id, value]) => ({ id, value }));
  t = performance.now();
  buildPatterns(secrets);
  const rebuild = performance.now() - t;
  console.log(`\nthe index alone at ${SECRETS} secrets (this run, ${load()}):`);
  console.log(`  first build, in slices: ${(built / 1000).toFixed(1)} s`);
  console.log(
    `  add one secret: event loop held up to ${median(rounds).toFixed(1)} ms (median of ${REPEATS}; ${median(quiet).toFixed(1)} ms in the same window without a change), found by scans after ${median(visible).toFixed(1)} ms`,
  );
  console.log(
    `  the old way, the whole set rebuilt at once (buildPatterns): ${rebuild.toFixed(0)} ms with the event loop held`,
  );
}

async function main() {
  console.log(
    `scale bench: ${WRK ? 'wrk, one thread' : 'autocannon'}, ${CONNECTIONS} connections, ${SECONDS}s per run, ${REPEATS} repeats rotated, node ${process.version}, ${cpus().length} CPUs, ${load()}`,
  );
  if (process.env.BENCH_ONLY === 'index') {
    await indexStall();
    return;
  }
  const { child: upstream, port } = await spawnUpstream();
  const upstreamUrl = `http://127.0.0.1:${port}`;
  const gateways: Gateway[] = [];
  try {
    console.log('setup:');
    const base = await gateway('base', upstreamUrl, 1, 1);
    const secrets = await gateway('secrets', upstreamUrl, SECRETS, 1);
    const tickets = await gateway('tickets', upstreamUrl, 1, TICKETS);
    gateways.push(base, secrets, tickets);
    // Warm-up (JIT, connection pools).
    const skipRps = process.env.BENCH_SKIP_RPS === '1';
    if (!skipRps) for (const gw of gateways) await rps(gw.url, gw.headers);

    const runs = new Map<string, number[]>(gateways.map((g) => [g.label, []]));
    const ratios = { secrets: [] as number[], tickets: [] as number[] };
    for (let repeat = 0; repeat < (skipRps ? 0 : REPEATS); repeat++) {
      const order = gateways.map((_, i) => gateways[(i + repeat) % gateways.length]!);
      const row = new Map<string, number>();
      for (const gw of order) {
        const r = await rps(gw.url, gw.headers);
        row.set(gw.label, r);
        runs.get(gw.label)!.push(r);
      }
      ratios.secrets.push(row.get('secrets')! / row.get('base')!);
      ratios.tickets.push(row.get('tickets')! / row.get('base')!);
      console.log(
        `  repeat ${repeat + 1}: ${[...row].map(([l, r]) => `${l} ${r.toFixed(0)} req/s`).join(', ')} (${load()})`,
      );
    }
    const fmtRatio = (values: number[]) =>
      `${median(values).toFixed(2)} [${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)}]`;
    const verdict = (values: number[]) => (median(values) >= 0.9 ? 'met' : 'missed');
    console.log(
      '\nreq/s, one header ticket, 4 KB JSON response scanned (ratio to 1 secret / 1 ticket, median [range]):',
    );
    if (!skipRps) console.log(`  1 secret, 1 ticket:      ${median(runs.get('base')!).toFixed(0)} req/s`);
    if (!skipRps)
      console.log(
        `  ${SECRETS} secrets:          ${median(runs.get('secrets')!).toFixed(0)} req/s  ratio ${fmtRatio(ratios.secrets)}  goal >= 0.90: ${verdict(ratios.secrets)}`,
      );
    if (!skipRps)
      console.log(
        `  ${TICKETS} live tickets:   ${median(runs.get('tickets')!).toFixed(0)} req/s  ratio ${fmtRatio(ratios.tickets)}  goal >= 0.90: ${verdict(ratios.tickets)}`,
      );

    console.log(
      `\nstall at ${SECRETS} secrets (sequential requests for ${STALL_SECONDS} s from the change on):`,
    );
    // Each change beside a window without one, REPEATS rounds in rotated order: the machine's
    // own noise (other processes preempting this one) shows in the windows without a change.
    const changes: Array<[string, () => Promise<unknown>]> = [
      ['no change', async () => undefined],
      [
        'add a secret',
        () =>
          secrets.ctx.vault.addSecret(
            {
              name: `added-${randomBytes(6).toString('hex')}`,
              value: Buffer.from(`added-secret-${randomBytes(12).toString('base64url')}`),
              allow: ['up'],
            },
            'admin:bench',
          ),
      ],
      [
        'revoke a ticket',
        async () => {
          const { ticket } = await secrets.ctx.vault.issueTicket(
            { secret: 's0', principal: secrets.agent },
            'admin:bench',
          );
          await secrets.ctx.vault.revokeTicket(ticket, 'admin:bench');
        },
      ],
    ];
    const stalls = new Map<string, { loop: number[]; slowest: number[] }>(
      changes.map(([label]) => [label, { loop: [], slowest: [] }]),
    );
    for (let repeat = 0; repeat < REPEATS; repeat++) {
      for (let i = 0; i < changes.length; i++) {
        const [label, change] = changes[(i + repeat) % changes.length]!;
        const r = await profiled(`${label}-${repeat + 1}`, () => stallDuring(secrets, change));
        stalls.get(label)!.loop.push(r.loop);
        stalls.get(label)!.slowest.push(r.slowest);
      }
      console.log(`  round ${repeat + 1} done (${load()})`);
    }
    const quiet = stalls.get('no change')!;
    for (const [label, r] of stalls) {
      const extra = median(r.loop) - median(quiet.loop);
      console.log(
        `  ${label.padEnd(16)} event loop held up (max per window, median) ${median(r.loop).toFixed(1)} ms, slowest request ${median(r.slowest).toFixed(1)} ms${
          label === 'no change'
            ? ''
            : `; stall ${Math.max(0, extra).toFixed(1)} ms above no change  goal < 1 ms: ${extra < 1 ? 'met' : 'missed'}`
        }`,
      );
    }

    await indexStall();
  } finally {
    for (const gw of gateways) await gw.close().catch(() => undefined);
    upstream.kill();
  }
}

await main();
process.exit(0);

// HTTP front-end overhead: requests/s and latency (p50, p99) direct to an upstream vs
// through the gateway, for four cases: pass-through, one header ticket, a 16 KB JSON
// body with three tickets, and a 1 MiB response scanned for known secrets. Then the
// forward proxy (HTTPS_PROXY: CONNECT, TLS interception with a minted certificate, TLS
// again to the upstream) beside the reverse proxy, against an HTTPS upstream, with the
// same client for the direct baseline (bench/http-proxy-load.ts; BENCH_PROXY=0 skips it).
//
// Run: npm run bench:http   (BENCH_SECONDS=5 BENCH_CONNECTIONS=16 by default)
//
// The upstream runs in its own process, the load generator (autocannon) in another, and
// the gateway in this one (SQLite store in a temp dir, audit group commit as configured
// by default, session recordings on). All three share the machine: on few cores the
// absolute numbers say more about the machine than the gateway; the ratio is the point.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { request } from 'undici';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { startForwardProxy } from '../src/frontends/http/forward-proxy.js';
import { initHome, openContext } from '../src/server/context.js';
import { startHttpFrontend } from '../src/server/frontends.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const run = promisify(execFile);
const autocannonBin = createRequire(import.meta.url).resolve('autocannon/autocannon.js');

interface Result {
  rps: number;
  p50: number;
  p99: number;
  errors: number;
}

async function load(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string },
): Promise<Result> {
  const args = [
    autocannonBin,
    '-j',
    '-c',
    String(CONNECTIONS),
    '-d',
    String(SECONDS),
    '-m',
    options.method ?? 'GET',
  ];
  for (const [k, v] of Object.entries(options.headers ?? {})) args.push('-H', `${k}=${v}`);
  if (options.body !== undefined) args.push('-b', options.body);
  args.push(url);
  const { stdout } = await run(process.execPath, args, { maxBuffer: 16 * 1024 * 1024 });
  const r = JSON.parse(stdout) as {
    requests: { average: number };
    latency: { p50: number; p99: number };
    errors: number;
    non2xx: number;
    timeouts: number;
  };
  return {
    rps: r.requests.average,
    p50: r.latency.p50,
    p99: r.latency.p99,
    errors: r.errors + r.non2xx + r.timeouts,
  };
}

/** Unloaded latency: one request at a time, so the machine's other processes do not compete. */
async function sequential(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string },
  count = Number(process.env.BENCH_SEQUENTIAL ?? 1000),
): Promise<{ p50: number; p99: number }> {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    const res = await request(url, {
      method: (options.method ?? 'GET') as 'GET',
      headers: options.headers,
      body: options.body,
    });
    await res.body.dump();
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return { p50: times[Math.floor(count * 0.5)]!, p99: times[Math.floor(count * 0.99)]! };
}

/** A test CA and a certificate for 127.0.0.1 signed by it (openssl CLI), for the HTTPS upstream. */
function upstreamCerts(dir: string): { caFile: string; keyFile: string; certFile: string } {
  const ssl = (args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const f = (name: string) => join(dir, name);
  ssl([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.crt'),
    '-days',
    '1',
    '-subj',
    '/CN=bench CA',
  ]);
  writeFileSync(f('ext'), 'subjectAltName=IP:127.0.0.1\n');
  ssl(['req', ...ec, '-keyout', f('up.key'), '-out', f('up.csr'), '-subj', '/CN=127.0.0.1']);
  ssl(
    ['x509', '-req', '-in', f('up.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial'].concat(
      ['-out', f('up.crt'), '-days', '1', '-extfile', f('ext')],
    ),
  );
  return { caFile: f('ca.crt'), keyFile: f('up.key'), certFile: f('up.crt') };
}

async function spawnUpstream(env: NodeJS.ProcessEnv = {}, script = './http-upstream.ts') {
  const child = spawn(process.execPath, ['--import', 'tsx', new URL(script, import.meta.url).pathname], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
  });
  const port = await new Promise<number>((resolve) =>
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
  );
  return { child, port };
}

interface ProxyLoad {
  url: string;
  ca: string;
  proxy?: { uri: string; token: string; ca: string };
  headers: Record<string, string>;
}

async function proxyLoad(input: ProxyLoad): Promise<Result> {
  const { stdout } = await run(
    process.execPath,
    [
      '--import',
      'tsx',
      new URL('./http-proxy-load.ts', import.meta.url).pathname,
      JSON.stringify({ ...input, connections: CONNECTIONS, seconds: SECONDS }),
    ],
    { maxBuffer: 1024 * 1024 },
  );
  return JSON.parse(stdout) as Result;
}

async function main() {
  const { child: upstream, port } = await spawnUpstream();
  const upstreamUrl = `http://127.0.0.1:${port}`;

  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-http-'));
  const certs = upstreamCerts(dir);
  const { child: tlsUpstream, port: tlsPort } = await spawnUpstream({
    BENCH_TLS_KEY: certs.keyFile,
    BENCH_TLS_CERT: certs.certFile,
  });
  const tlsUrl = `https://127.0.0.1:${tlsPort}`;
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, `log:\n  level: warn\nhttp:\n  upstreamCaFile: ${certs.caFile}\n`);
  const ctx = await openContext(home, { env: {} });
  const gateway = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'warn' }));
  const proxy = await startForwardProxy(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'warn' }), {
    upstreamCaFile: certs.caFile,
  });
  try {
    const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
    const tickets: string[] = [];
    for (let i = 0; i < 3; i++) {
      await ctx.vault.addSecret(
        {
          name: `s${i}`,
          value: Buffer.from(`bench-secret-value-${i}-0123456789abcdef`),
          allow: ['up', 'ups', `127.0.0.1:${tlsPort}`],
          // The JSON-body case puts tickets in the body: the secret must allow that placement.
          placements: ['body'],
        },
        'admin:bench',
      );
      tickets.push(
        (await ctx.vault.issueTicket({ secret: `s${i}`, principal: agentRef(agent.id) }, 'admin:bench'))
          .ticket,
      );
    }
    await ctx.connections.add({ name: 'up', type: 'http', url: upstreamUrl }, 'admin:bench');
    await ctx.connections.add({ name: 'ups', type: 'http', url: tlsUrl }, 'admin:bench');
    const auth = { 'proxy-authorization': `Bearer ${key}` };
    const json = JSON.stringify({
      a: tickets[0],
      items: Array.from({ length: 270 }, (_, i) => ({
        id: i,
        text: 'lorem ipsum dolor sit amet consectetur ad',
      })),
      b: { nested: tickets[1] },
      c: [tickets[2]],
    });
    const cases: Array<
      [
        string,
        string,
        { method?: string; headers?: Record<string, string>; body?: string },
        { method?: string; headers?: Record<string, string>; body?: string },
      ]
    > = [
      ['pass-through (GET, no ticket)', '/small', {}, { headers: auth }],
      [
        'one header ticket',
        '/small',
        { headers: { authorization: 'Bearer direct' } },
        { headers: { ...auth, authorization: `Bearer ${tickets[0]}` } },
      ],
      [
        `16 KB JSON body, 3 tickets (${(json.length / 1024).toFixed(1)} KB)`,
        '/echo',
        { method: 'POST', headers: { 'content-type': 'application/json' }, body: json },
        { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: json },
      ],
      ['1 MiB response, scanned', '/big', {}, { headers: auth }],
    ];
    console.log(
      `HTTP front-end bench: ${CONNECTIONS} connections, ${SECONDS}s per run, node ${process.version}, ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'})`,
    );
    console.log(
      `${'case'.padEnd(36)} ${'direct req/s'.padStart(12)} ${'gw req/s'.padStart(10)} ${'ratio'.padStart(6)} ${'direct p50/p99 ms'.padStart(18)} ${'gw p50/p99 ms'.padStart(14)} ${'errors'.padStart(7)}`,
    );
    const results: Array<[string, { p50: number; p99: number }, { p50: number; p99: number }]> = [];
    // BENCH_ONLY=<substring of a case's label> runs those cases alone (then the peer and the
    // forward proxy are skipped), for alternating two builds case by case.
    const only = process.env.BENCH_ONLY;
    for (const [label, path, direct, through] of cases) {
      if (only !== undefined && !label.includes(only)) continue;
      const d = await load(`${upstreamUrl}${path}`, direct);
      // The gateway runs in this process: its CPU time per request is steadier than req/s
      // on a shared machine (and excludes time blocked on the disk).
      const cpu = process.cpuUsage();
      const g = await load(`${gateway.url}/c/up${path}`, through);
      const used = process.cpuUsage(cpu);
      const cpuPerRequest = (used.user + used.system) / Math.max(1, g.rps * SECONDS);
      results.push([
        label,
        await sequential(`${upstreamUrl}${path}`, direct),
        await sequential(`${gateway.url}/c/up${path}`, through),
      ]);
      console.log(
        `${label.padEnd(36)} ${d.rps.toFixed(0).padStart(12)} ${g.rps.toFixed(0).padStart(10)} ${(g.rps / d.rps).toFixed(2).padStart(6)} ${`${d.p50}/${d.p99}`.padStart(18)} ${`${g.p50}/${g.p99}`.padStart(14)} ${String(d.errors + g.errors).padStart(7)}   gateway CPU ${cpuPerRequest.toFixed(0)} µs/req`,
      );
    }
    if (only !== undefined) return;
    // The reference peer: @fastify/http-proxy doing plain pass-through, in its own process.
    const { child: peer, port: peerPort } = await spawnUpstream(
      { BENCH_PEER_UPSTREAM: upstreamUrl },
      './http-peer.ts',
    );
    try {
      const d = await load(`${upstreamUrl}/small`, {});
      const p = await load(`http://127.0.0.1:${peerPort}/small`, {});
      const g = await load(`${gateway.url}/c/up/small`, {
        headers: { ...auth, authorization: `Bearer ${tickets[0]}` },
      });
      console.log(
        `\nreference peer, back to back: direct ${d.rps.toFixed(0)} req/s; @fastify/http-proxy pass-through ${p.rps.toFixed(0)} req/s (${(p.rps / d.rps).toFixed(2)} of direct, p50 ${p.p50} ms); coatcheck with one ticket ${g.rps.toFixed(0)} req/s (${(g.rps / p.rps).toFixed(2)} of the peer, p50 ${g.p50} ms)`,
      );
    } finally {
      peer.kill();
    }

    console.log('\nunloaded latency, one request at a time (ms)');
    console.log(
      `${'case'.padEnd(36)} ${'direct p50/p99'.padStart(16)} ${'gw p50/p99'.padStart(16)} ${'added p50'.padStart(10)}`,
    );
    for (const [label, d, g] of results) {
      console.log(
        `${label.padEnd(36)} ${`${d.p50.toFixed(2)}/${d.p99.toFixed(2)}`.padStart(16)} ${`${g.p50.toFixed(2)}/${g.p99.toFixed(2)}`.padStart(16)} ${(g.p50 - d.p50).toFixed(2).padStart(10)}`,
      );
    }

    if (process.env.BENCH_PROXY !== '0') {
      // Forward proxy beside the reverse proxy, HTTPS upstream, one client for all three.
      const caPem = readFileSync(certs.caFile, 'utf8');
      const ticketHeader = { authorization: `Bearer ${tickets[0]}` };
      console.log(
        `\nforward proxy (CONNECT + TLS interception) vs reverse proxy, HTTPS upstream, undici client, ${CONNECTIONS} connections`,
      );
      console.log(
        `${'case'.padEnd(36)} ${'direct req/s'.padStart(12)} ${'reverse'.padStart(8)} ${'ratio'.padStart(6)} ${'forward'.padStart(8)} ${'ratio'.padStart(6)} ${'p50/p99 ms d|r|f'.padStart(22)} ${'errors'.padStart(7)}`,
      );
      for (const [label, path, headers] of [
        ['pass-through (GET, no ticket)', '/small', {}],
        ['one header ticket', '/small', ticketHeader],
        ['1 MiB response, scanned', '/big', {}],
      ] as Array<[string, string, Record<string, string>]>) {
        const d = await proxyLoad({
          url: `${tlsUrl}${path}`,
          ca: caPem,
          headers: { authorization: 'Bearer direct' },
        });
        const r = await proxyLoad({
          url: `${gateway.url}/c/ups${path}`,
          ca: caPem,
          headers: { ...headers, 'proxy-authorization': `Bearer ${key}` },
        });
        const f = await proxyLoad({
          url: `${tlsUrl}${path}`,
          ca: caPem,
          proxy: { uri: proxy.url, token: `Bearer ${key}`, ca: proxy.ca.cert },
          headers,
        });
        console.log(
          `${label.padEnd(36)} ${d.rps.toFixed(0).padStart(12)} ${r.rps.toFixed(0).padStart(8)} ${(r.rps / d.rps).toFixed(2).padStart(6)} ${f.rps.toFixed(0).padStart(8)} ${(f.rps / d.rps).toFixed(2).padStart(6)} ${`${d.p50}/${d.p99}|${r.p50}/${r.p99}|${f.p50}/${f.p99}`.padStart(22)} ${String(d.errors + r.errors + f.errors).padStart(7)}`,
        );
      }
    }
  } finally {
    await proxy.close();
    tlsUpstream.kill();
    await gateway.close();
    await ctx.close();
    upstream.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

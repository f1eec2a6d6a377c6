import { type ChildProcess, execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { type PostgresFrontend, startPostgresFrontend } from '../../../src/frontends/postgres/start.js';
import { type RelayListener, startRelayListener } from '../../../src/relay/listener.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { type HttpFrontend, startHttpFrontend } from '../../../src/server/frontends.js';
import { openProxyCa } from '../../../src/vault/proxy-ca.js';
import { CLI_ENTRY } from '../../helpers/cli.js';
import { createTopology, type Topology } from '../../helpers/netns.js';
import { pgBin } from '../postgres/harness.js';

/** What the target's HTTP server answers on /big: this many bytes (for the bench). */
export const TARGET_HTTP_PORT = 8080;
export const TARGET_PG_PORT = 5432;

/**
 * The relay's world (docs/relay.md): a target namespace with a PostgreSQL and an HTTP
 * server, a relay namespace between it and this process, and a gateway here (PostgreSQL
 * and HTTP front-ends, the relay listener) that cannot reach the target itself.
 */
export interface RelayWorld {
  readonly net: Topology;
  readonly ctx: Context;
  readonly pg: PostgresFrontend;
  readonly http: HttpFrontend;
  readonly relayListener: RelayListener;
  readonly dbPassword: string;
  /** The gateway's log lines so far. */
  gatewayLogs(): string;
  /** Start `coatcheck relay run` in the relay namespace; its stderr is collected. */
  startRelay(keyFile: string, extra?: string[]): RelayProcess;
  /** A file holding a relay key (0600). */
  writeKey(key: string): string;
  readonly dir: string;
  close(): Promise<void>;
}

export interface RelayProcess {
  readonly child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

export const TARGET_HTTP = `
const http = require('node:http');
const expected = 'Bearer ' + process.env.EXPECTED;
const chunk = Buffer.alloc(64 * 1024, 120);
http.createServer((req, res) => {
  if (req.url.startsWith('/big')) {
    const total = Number(new URL(req.url, 'http://x').searchParams.get('bytes') || 1048576);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total });
    let left = total;
    const pump = () => {
      while (left > 0) {
        const n = Math.min(left, chunk.length);
        left -= n;
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return res.once('drain', pump);
      }
      res.end();
    };
    return pump();
  }
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ path: req.url, authorized: req.headers.authorization === expected }));
  });
}).listen(Number(process.argv[2]), process.argv[1], () => console.log('listening'));
`;

function runAsPostgres(bin: string, args: string[], ns?: string): string {
  const command = ['runuser', '-u', 'postgres', '--', bin, ...args];
  return execFileSync(
    ns === undefined ? command[0]! : 'ip',
    ns === undefined ? command.slice(1) : ['netns', 'exec', ns, ...command],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  ).toString();
}

export async function startRelayWorld(options: { httpSecret: string }): Promise<RelayWorld> {
  const net = createTopology();
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-relay-'));
  chmodSync(dir, 0o711); // the postgres user reaches its data directory below
  const pgDir = join(dir, 'pg');
  let pgStarted = false;
  let ctx: Context | null = null;
  const cleanups: Array<() => Promise<void> | void> = [];
  try {
    // PostgreSQL in the target namespace, listening only on the target link.
    execFileSync('mkdir', ['-p', pgDir]);
    const dbPassword = `pw-${Math.random().toString(36).slice(2)}-RelayCanary`;
    writeFileSync(join(pgDir, 'pw'), `${dbPassword}\n`);
    execFileSync('chown', ['-R', 'postgres:postgres', pgDir]);
    chmodSync(pgDir, 0o700);
    runAsPostgres(pgBin('initdb'), [
      '-D',
      join(pgDir, 'data'),
      '-U',
      'postgres',
      '--auth=scram-sha-256',
      `--pwfile=${join(pgDir, 'pw')}`,
      '-E',
      'UTF8',
      '--no-sync',
    ]);
    // Clients arrive from the relay's side of the target link.
    execFileSync('sh', [
      '-c',
      `echo 'host all all 10.214.0.0/16 scram-sha-256' >> ${join(pgDir, 'data', 'pg_hba.conf')}`,
    ]);
    runAsPostgres(
      pgBin('pg_ctl'),
      [
        '-D',
        join(pgDir, 'data'),
        '-w',
        '-l',
        join(pgDir, 'log'),
        '-o',
        `-p ${TARGET_PG_PORT} -k ${pgDir} -c listen_addresses=${net.targetIp} -c fsync=off -c max_connections=200`,
        'start',
      ],
      net.targetNs,
    );
    pgStarted = true;
    // The HTTP target in the target namespace.
    const web = net.spawnIn(
      net.targetNs,
      process.execPath,
      ['-e', TARGET_HTTP, net.targetIp, String(TARGET_HTTP_PORT)],
      {
        EXPECTED: options.httpSecret,
      },
    );
    await new Promise<void>((resolve, reject) => {
      web.stdout!.once('data', () => resolve());
      web.once('exit', (code) => reject(new Error(`the target HTTP server exited (${code})`)));
    });

    // The gateway, here.
    const home = resolveHome(join(dir, 'home'), {});
    await initHome(home, { env: {} });
    writeFileSync(home.configFile, 'log:\n  level: debug\nrelay:\n  openTimeoutMs: 5000\n', { mode: 0o600 });
    ctx = await openContext(home, { env: {} });
    let logText = '';
    const log = createLogger({
      level: 'debug',
      destination: new Writable({
        write(chunk: Buffer, _e, cb) {
          logText += chunk.toString('utf8');
          cb();
        },
      }),
    });
    const pg = await startPostgresFrontend(ctx, { host: '127.0.0.1', port: 0 }, log);
    cleanups.push(() => pg.close());
    const http = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, log);
    cleanups.push(() => http.close());
    const relayListener = await startRelayListener({
      address: { host: net.gatewayIp, port: 0 },
      ca: await openProxyCa(ctx.store, ctx.keys.masters),
      serverNames: [],
      relays: ctx.relays,
      hub: ctx.relayHub,
      audit: ctx.audit,
      log,
    });
    cleanups.push(() => relayListener.close());
    const caFile = join(dir, 'gateway-ca.pem');
    writeFileSync(caFile, relayListener.ca.cert);
    const context = ctx;
    let keys = 0;
    return {
      net,
      ctx,
      pg,
      http,
      relayListener,
      dbPassword,
      dir,
      gatewayLogs: () => logText,
      writeKey(key) {
        const file = join(dir, `relay-${keys++}.key`);
        writeFileSync(file, `${key}\n`, { mode: 0o600 });
        return file;
      },
      startRelay(keyFile, extra = []) {
        const child = net.spawnIn(net.relayNs, process.execPath, [
          '--import',
          'tsx',
          CLI_ENTRY,
          'relay',
          'run',
          '--gateway',
          `https://${net.gatewayIp}:${relayListener.port}`,
          '--key-file',
          keyFile,
          '--ca',
          caFile,
          ...extra,
        ]);
        let text = '';
        child.stdout!.on('data', (c: Buffer) => {
          text += c.toString('utf8');
        });
        child.stderr!.on('data', (c: Buffer) => {
          text += c.toString('utf8');
        });
        const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
        return { child, output: () => text, exited };
      },
      async close() {
        for (const c of cleanups.reverse()) await c();
        await context.close();
        runAsPostgres(
          pgBin('pg_ctl'),
          ['-D', join(pgDir, 'data'), '-m', 'immediate', '-w', 'stop'],
          net.targetNs,
        );
        net.cleanup();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
    await ctx?.close().catch(() => undefined);
    if (pgStarted) {
      try {
        runAsPostgres(
          pgBin('pg_ctl'),
          ['-D', join(pgDir, 'data'), '-m', 'immediate', '-w', 'stop'],
          net.targetNs,
        );
      } catch {
        // the namespace goes next
      }
    }
    net.cleanup();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

/** Wait until `check` holds (polling), or fail after `ms`. */
export async function until(
  check: () => boolean | Promise<boolean>,
  ms = 20_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

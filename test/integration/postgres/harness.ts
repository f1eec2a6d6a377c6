import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { agentRef } from '../../../src/core/principal.js';
import {
  type PostgresFrontend,
  type PostgresOptions,
  startPostgresFrontend,
} from '../../../src/frontends/postgres/start.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';

/** PostgreSQL binaries (Debian keeps them out of PATH). */
export function pgBin(name: string): string {
  const versions = readdirSync('/usr/lib/postgresql').sort().reverse();
  return join('/usr/lib/postgresql', versions[0]!, 'bin', name);
}

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const asRoot = process.getuid?.() === 0;

/** Run a PostgreSQL binary as the postgres user when we are root (initdb refuses root). */
function runPg(name: string, args: string[]): string {
  const bin = pgBin(name);
  return asRoot
    ? execFileSync('runuser', ['-u', 'postgres', '--', bin, ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      }).toString()
    : execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

export interface ThrowawayPostgres {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly url: string;
  /** The server certificate (its own CA) when started with `ssl: true`. */
  readonly caFile: string | null;
  /** A superuser client straight to the server (no gateway). */
  direct(): pg.Client;
  stop(): void;
}

/**
 * A throwaway PostgreSQL with password (SCRAM-SHA-256) authentication on a free port,
 * its socket in a temp directory. `stop` shuts it down and removes everything.
 */
export async function startThrowawayPostgres(
  options: { auth?: 'scram-sha-256' | 'md5'; ssl?: boolean; fsync?: boolean } = {},
): Promise<ThrowawayPostgres> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-pg-'));
  const data = join(dir, 'data');
  const password = `pw-${Math.random().toString(36).slice(2)}-Canary`;
  const pwfile = join(dir, 'pw');
  writeFileSync(pwfile, `${password}\n`);
  if (asRoot) {
    chownSync(dir, 101, 104);
    chownSync(pwfile, 101, 104);
    execFileSync('chown', ['-R', 'postgres:postgres', dir]);
  }
  chmodSync(dir, 0o700);
  const auth = options.auth ?? 'scram-sha-256';
  runPg('initdb', [
    '-D',
    data,
    '-U',
    'postgres',
    `--auth=${auth}`,
    `--pwfile=${pwfile}`,
    '-E',
    'UTF8',
    '--no-sync',
  ]);
  const port = await freePort();
  let sslOptions = '';
  let caFile: string | null = null;
  if (options.ssl === true) {
    // A self-signed server certificate for 127.0.0.1; clients verify it with sslrootcert = the same file.
    caFile = join(dir, 'server.crt');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:prime256v1',
        '-nodes',
        '-keyout',
        join(dir, 'server.key'),
        '-out',
        caFile,
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
      ],
      { stdio: 'ignore' },
    );
    chmodSync(join(dir, 'server.key'), 0o600);
    chmodSync(caFile, 0o644);
    if (asRoot) execFileSync('chown', ['postgres:postgres', join(dir, 'server.key'), caFile]);
    sslOptions = ` -c ssl=on -c ssl_cert_file=${caFile} -c ssl_key_file=${join(dir, 'server.key')}`;
  }
  runPg('pg_ctl', [
    '-D',
    data,
    '-w',
    '-l',
    join(dir, 'log'),
    '-o',
    `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=${options.fsync === true ? 'on' : 'off'} -c password_encryption=${auth} -c max_connections=200${sslOptions}`,
    'start',
  ]);
  const url = `postgres://postgres@127.0.0.1:${port}/postgres?sslmode=disable`;
  return {
    host: '127.0.0.1',
    port,
    user: 'postgres',
    password,
    url,
    caFile,
    direct: () =>
      new pg.Client({ host: '127.0.0.1', port, user: 'postgres', password, database: 'postgres' }),
    stop() {
      try {
        runPg('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

export interface PgGateway {
  readonly dir: string;
  readonly ctx: Context;
  readonly frontend: PostgresFrontend;
  readonly host: string;
  readonly port: number;
  logs(): string;
  /** Wait until every session has ended and its audit records and recording are written. */
  settled(): Promise<void>;
  createAgent(name: string): Promise<{ key: string; ref: string }>;
  addSecret(
    name: string,
    value: string,
    allow: string[],
    bindings?: { placements?: string[]; allowSql?: string[] },
  ): Promise<void>;
  issue(secret: string, principal: string, destinations?: string[], uses?: number): Promise<string>;
  addConnection(
    name: string,
    url: string,
    options?: { credential?: string; rules?: Record<string, unknown> },
  ): Promise<void>;
  /** A node-postgres client through the gateway. */
  client(user: string, password: string, database: string, ssl?: pg.ClientConfig['ssl']): pg.Client;
  /** psql through the gateway; resolves with stdout, stderr and the exit code. */
  psql(
    conninfo: string,
    args: string[],
    input?: string,
  ): Promise<{ stdout: string; stderr: string; code: number }>;
  close(): Promise<void>;
}

export async function startPgGateway(
  options: Partial<PostgresOptions> = {},
  listenHost = '127.0.0.1',
  extraConfig = '',
): Promise<PgGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-pgfe-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, `log:\n  level: debug\n${extraConfig}`, { mode: 0o600 });
  const ctx = await openContext(home, { env: {} });
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
  const frontend = await startPostgresFrontend(ctx, { host: listenHost, port: 0 }, log, { options });
  return {
    dir,
    ctx,
    frontend,
    host: listenHost,
    port: frontend.port,
    logs: () => logText,
    async settled() {
      for (let i = 0; i < 200 && frontend.engine.live.size > 0; i++)
        await new Promise((r) => setTimeout(r, 25));
      await new Promise((r) => setTimeout(r, 25));
      await ctx.audit.flush();
      await frontend.recorder.flush();
    },
    async createAgent(name) {
      const { key, agent } = await ctx.agents.create({ name }, 'admin:test');
      return { key, ref: agentRef(agent.id) };
    },
    async addSecret(name, value, allow, bindings = {}) {
      await ctx.vault.addSecret({ name, value: Buffer.from(value), allow, ...bindings }, 'admin:test');
    },
    async issue(secret, principal, destinations, uses) {
      return (await ctx.vault.issueTicket({ secret, principal, destinations, maxUses: uses }, 'admin:test'))
        .ticket;
    },
    async addConnection(name, url, opts = {}) {
      await ctx.connections.add(
        {
          name,
          type: 'postgres',
          url,
          ...(opts.credential === undefined ? {} : { credential: opts.credential }),
          ...(opts.rules === undefined ? {} : { rules: opts.rules }),
        },
        'admin:test',
      );
    },
    client(user, password, database, ssl) {
      return new pg.Client({
        host: listenHost,
        port: frontend.port,
        user,
        password,
        database,
        ...(ssl === undefined ? {} : { ssl }),
      });
    },
    psql(conninfo, args, input) {
      return new Promise((resolve) => {
        const child = execFile(
          'psql',
          [conninfo, '-X', '-v', 'ON_ERROR_STOP=0', ...args],
          {
            env: { PATH: process.env.PATH ?? '/usr/bin:/bin', PGCONNECT_TIMEOUT: '10' },
            maxBuffer: 256 * 1024 * 1024,
          },
          (error, stdout, stderr) => {
            resolve({
              stdout,
              stderr,
              code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
            });
          },
        );
        // A child that exits before reading stdin gives EPIPE; its exit code and output are what the test checks.
        child.stdin?.on('error', () => undefined);
        if (input !== undefined) child.stdin?.end(input);
        else child.stdin?.end();
      });
    },
    async close() {
      await frontend.close();
      await ctx.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { agentRef } from '../../../src/core/principal.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { type HttpFrontend, startHttpFrontend } from '../../../src/server/frontends.js';

export interface Received {
  readonly method: string;
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
  readonly rawHeaders: readonly string[];
  readonly body: Buffer;
}

export type UpstreamHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;

export interface Upstream {
  readonly url: string;
  readonly received: Received[];
  handle(path: string, handler: UpstreamHandler): void;
  close(): Promise<void>;
}

/** Echo by default: answers with JSON describing the request it received. */
function echo(req: IncomingMessage, res: ServerResponse, body: Buffer): void {
  const text = JSON.stringify({ method: req.method, url: req.url, ok: true, bodyLength: body.length });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function startUpstream(tls?: { key: string; cert: string }): Promise<Upstream> {
  const received: Received[] = [];
  const handlers = new Map<string, UpstreamHandler>();
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      received.push({
        method: req.method ?? '',
        url: req.url ?? '',
        headers: req.headers,
        rawHeaders: req.rawHeaders,
        body,
      });
      const path = (req.url ?? '/').split('?')[0]!;
      (handlers.get(path) ?? echo)(req, res, body);
    });
  };
  const server: Server = tls === undefined ? createServer(onRequest) : createHttpsServer(tls, onRequest);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `${tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    received,
    handle(path, handler) {
      handlers.set(path, handler);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** A self-signed certificate for 127.0.0.1, made now with the openssl CLI. */
export function selfSignedCert(dir: string): { key: string; cert: string; certFile: string } {
  const keyFile = join(dir, 'upstream.key');
  const certFile = join(dir, 'upstream.crt');
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
      keyFile,
      '-out',
      certFile,
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ],
    { stdio: 'ignore' },
  );
  return {
    key: execFileSync('cat', [keyFile]).toString(),
    cert: execFileSync('cat', [certFile]).toString(),
    certFile,
  };
}

export interface Gateway {
  readonly dir: string;
  readonly ctx: Context;
  readonly http: HttpFrontend;
  readonly url: string;
  /** Everything the gateway logged (JSON lines). */
  logs(): string;
  createAgent(name: string): Promise<{ key: string; ref: string }>;
  addSecret(
    name: string,
    value: string,
    allow: string[],
    bindings?: { placements?: string[]; allowSql?: string[]; allowPlaintext?: boolean },
  ): Promise<void>;
  issue(secret: string, agentRef: string, destinations?: string[], uses?: number): Promise<string>;
  addConnection(name: string, url: string, injectHeaders?: Record<string, string>): Promise<void>;
  close(): Promise<void>;
}

export interface GatewayOptions {
  /** YAML appended to the default config. */
  readonly extraConfig?: string;
  /** Use an existing (PostgreSQL) store instead of SQLite. */
  readonly databaseUrl?: string;
  /** Share an existing home's master key (two replicas on one database). */
  readonly masterKey?: string;
  /** Skip `init`: the store is already initialized by another replica (copy its home). */
  readonly fromHome?: string;
}

export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-http-'));
  const env: NodeJS.ProcessEnv = {};
  if (options.masterKey !== undefined) env.COATCHECK_MASTER_KEY = options.masterKey;
  if (options.databaseUrl !== undefined) env.COATCHECK_DATABASE_URL = options.databaseUrl;
  const home = resolveHome(dir, env);
  // The store follows COATCHECK_DATABASE_URL when set; everything else is default unless given.
  const configText = `log:\n  level: debug\n${options.extraConfig ?? ''}`;
  if (options.fromHome === undefined) {
    await initHome(home, { env });
  } else {
    execFileSync('cp', ['-a', `${options.fromHome}/.`, dir]);
  }
  writeFileSync(home.configFile, configText, { mode: 0o600 });
  const ctx = await openContext(home, { env });
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
  const http = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, log);
  return {
    dir,
    ctx,
    http,
    url: http.url,
    logs: () => logText,
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
    async addConnection(name, url, injectHeaders) {
      await ctx.connections.add({ name, type: 'http', url, injectHeaders }, 'admin:test');
    },
    async close() {
      await http.close();
      await ctx.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

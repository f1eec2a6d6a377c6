import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { adminKeyHash, sameHash } from '../config/home.js';
import { CoatcheckError } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import { ADMIN_KEY_META, type Context } from '../server/context.js';
import { serveConsole } from './console-assets.js';
import { ConsoleLogin } from './console-login.js';
import { toHttpError } from './http-errors.js';
import { openApiDocument } from './openapi.js';
import { type OperationName, operations } from './operations.js';

const MAX_BODY_BYTES = 256 * 1024;
const VERSION = '0.1.0';

interface Route {
  readonly name: OperationName;
  readonly method: string;
  readonly pattern: RegExp;
  readonly params: readonly string[];
}

const routes: Route[] = Object.entries(operations).map(([name, operation]) => {
  const params = [...operation.path.matchAll(/:([A-Za-z]+)/g)].map((m) => m[1]!);
  const pattern = new RegExp(`^${operation.path.replace(/:([A-Za-z]+)/g, '([^/]+)')}$`);
  return { name: name as OperationName, method: operation.method, pattern, params };
});

async function readBody(req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES)
    throw new CoatcheckError('CC_ERR_BODY_TOO_LARGE', `request body exceeds ${MAX_BODY_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES)
      throw new CoatcheckError('CC_ERR_BODY_TOO_LARGE', `request body exceeds ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', 'request body is not valid JSON', {
      details: { field: 'body' },
    });
  }
}

/** Split a Host header into a lower-case name (brackets kept for IPv6, one trailing dot dropped) and a port. */
export function parseHostHeader(value: string): { name: string; port: number | null } | null {
  const match = /^(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253})(?::([0-9]{1,5}))?$/.exec(value);
  if (match === null) return null;
  let name = match[1]!.toLowerCase();
  if (name.endsWith('.') && !name.startsWith('[')) name = name.slice(0, -1);
  if (name === '' || name.endsWith('.')) return null;
  const port = match[2] === undefined ? null : Number(match[2]);
  if (port !== null && (port < 1 || port > 65535)) return null;
  return { name, port };
}

/**
 * The Host names the admin listener answers to: the configured list, or by default the
 * listen address, localhost, 127.0.0.1 and [::1]. An entry without a port matches any
 * port; with one, only that port. Anything else — a DNS rebinding page's own name, an
 * unconfigured alias — is refused with 421 before any route, /metrics included.
 */
export function createHostCheck(
  configured: readonly string[],
  listenHost: string,
  extraDefaults: readonly string[] = [],
): (header: string | undefined) => void {
  const entries = (
    configured.length > 0
      ? configured
      : [
          listenHost.includes(':') && !listenHost.startsWith('[') ? `[${listenHost}]` : listenHost,
          'localhost',
          '127.0.0.1',
          '[::1]',
          ...extraDefaults,
        ]
  )
    .map((entry) => parseHostHeader(entry))
    .filter((entry) => entry !== null);
  return (header) => {
    const parsed = header === undefined ? null : parseHostHeader(header);
    if (
      parsed === null ||
      !entries.some(
        (entry) => entry.name === parsed.name && (entry.port === null || entry.port === parsed.port),
      )
    ) {
      throw new CoatcheckError(
        'CC_ERR_ADMIN_HOST_REFUSED',
        'the admin API does not answer to this Host name (admin.allowedHosts)',
      );
    }
  };
}

/** The request path, refused (400) unless it is absolute, well percent-encoded and valid UTF-8. */
function checkedPath(raw: string | undefined): URL {
  const target = raw ?? '';
  const path = target.split('?')[0]!;
  const bad = () =>
    new CoatcheckError('CC_ERR_ADMIN_BAD_PATH', 'the request path is malformed', {
      details: { field: 'path' },
    });
  if (!path.startsWith('/') || path.startsWith('//') || path.length > 2048) throw bad();
  try {
    decodeURIComponent(path);
  } catch {
    throw bad();
  }
  return new URL(target, 'http://admin.invalid');
}

/** Query values arrive as text; the operation schemas want numbers and booleans. */
function queryInput(url: URL): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of url.searchParams) {
    out[key] =
      value === 'true'
        ? true
        : value === 'false'
          ? false
          : /^[0-9]{1,15}$/.test(value)
            ? Number(value)
            : value;
  }
  return out;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  });
  res.end(text);
}

export interface AdminServer {
  readonly server: Server;
  readonly url: string;
  close(): Promise<void>;
}

/**
 * The admin HTTP API: every operation in operations.ts, behind the admin key. Bodies
 * are never logged (a secret value travels in one); errors carry stable codes.
 */
export async function startAdminServer(
  ctx: Context,
  listen: { host: string; port: number },
  log: Logger,
  options: {
    /** True once the process stopped accepting work (SIGTERM): /readyz answers 503 from then on. */
    draining?: () => boolean;
    /** The /metrics text (default: this process's registry; `serve --workers`: every worker's, summed). */
    metrics?: () => Promise<string>;
  } = {},
): Promise<AdminServer> {
  const expectedHash = await ctx.store.getMeta(ADMIN_KEY_META);
  if (expectedHash === null)
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the store has no admin key hash (was it initialized?)');
  const openapi = JSON.stringify(openApiDocument(VERSION));
  const login = ctx.config.console.oidc === null ? null : new ConsoleLogin(ctx.config.console.oidc);

  // Console single sign-on returns to its redirect URL: by default its host is allowed too.
  const redirectHost =
    ctx.config.console.oidc === null ? [] : [new URL(ctx.config.console.oidc.redirectUrl).host];
  const checkHost = createHostCheck(ctx.config.admin.allowedHosts, listen.host, redirectHost);

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    checkHost(req.headers.host);
    const url = checkedPath(req.url);
    if (req.method === 'GET' && url.pathname === '/v1/openapi.json') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(openapi);
      return;
    }
    if (req.method === 'GET' && url.pathname === '/metrics') {
      // Unauthenticated, like /healthz: the admin listener is loopback by default, and no
      // metric carries a secret, ticket, path or header (labels are closed sets).
      const text = options.metrics === undefined ? await ctx.metrics.metrics() : await options.metrics();
      res.writeHead(200, { 'content-type': ctx.metrics.contentType, 'cache-control': 'no-store' });
      res.end(text);
      return;
    }
    if (req.method === 'GET' && url.pathname === '/healthz') {
      // Liveness: the process answers. It does not probe the store: a database outage is
      // not cured by restarting every replica (ADR 0026); /readyz takes them out of rotation.
      send(res, 200, { ok: true });
      return;
    }
    if (req.method === 'GET' && url.pathname === '/readyz') {
      // Not ready while the store does not answer, audit writes fail, no policy set is
      // loaded, or the process is draining: every exchange would be refused, so a load
      // balancer should send agents to another replica.
      const health = await ctx.health();
      const draining = options.draining?.() === true;
      const ready = health.ok && !draining;
      send(res, ready ? 200 : 503, draining ? { ...health, ok: false, draining: true } : health);
      return;
    }
    if (req.method === 'GET' && url.pathname === '/console/oidc/config') {
      send(res, 200, { enabled: login !== null });
      return;
    }
    // Single sign-on for humans at the console (authorization code flow with PKCE).
    if (login !== null && url.pathname.startsWith('/console/oidc/') && (await login.handle(req, res, url)))
      return;
    // The web console's static files (public; the console sends the admin key itself).
    if (await serveConsole(req, res)) return;
    const auth = req.headers.authorization ?? '';
    const presented = auth.startsWith('Bearer ') ? auth.slice(7).trim() : '';
    // The admin key acts as `admin:api`; a console session acts as the human who signed in.
    let actor = 'admin:api';
    let principal: Principal | null = null;
    const human = presented.startsWith('ccu_') && login !== null ? login.session(presented) : null;
    if (human !== null) {
      actor = human.ref;
      principal = human;
    } else if (
      presented === '' ||
      presented.length > 256 ||
      !sameHash(adminKeyHash(ctx.keys.index.lookup, presented), expectedHash)
    ) {
      throw new CoatcheckError(
        'CC_ERR_ADMIN_UNAUTHORIZED',
        'a valid admin key is required (Authorization: Bearer <admin key>)',
      );
    }
    const route = routes.find((r) => r.method === req.method && r.pattern.test(url.pathname));
    if (route === undefined)
      throw new CoatcheckError('CC_ERR_NOT_FOUND', `no route ${req.method} ${url.pathname}`);
    const match = route.pattern.exec(url.pathname)!;
    const input: Record<string, unknown> =
      req.method === 'GET' ? queryInput(url) : ((await readBody(req)) as Record<string, unknown>);
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', 'request body must be a JSON object', {
        details: { field: 'body' },
      });
    }
    for (const [index, param] of route.params.entries()) {
      try {
        input[param] = decodeURIComponent(match[index + 1]!);
      } catch {
        throw new CoatcheckError('CC_ERR_ADMIN_BAD_PATH', `the path parameter ${param} is malformed`, {
          details: { field: param },
        });
      }
    }
    const operation = operations[route.name];
    const parsed = operation.input.parse(input);
    const result = await (
      operation.run as (c: Context, i: unknown, a: string, p: Principal | null) => Promise<unknown>
    )(ctx, parsed, actor, principal);
    send(res, 200, result);
  };

  const server = createServer((req, res) => {
    const started = performance.now();
    handle(req, res)
      .catch((error: unknown) => {
        const { status, body, incident } = toHttpError(error);
        if (incident !== undefined) log.error({ incident, err: error }, 'admin API internal error');
        if (!res.headersSent) send(res, status, body);
        else res.destroy();
      })
      .finally(() => {
        // Method, path and status only: bodies and headers can carry secrets and keys.
        log.debug(
          {
            method: req.method,
            path: (req.url ?? '').split('?')[0],
            status: res.statusCode,
            ms: Math.round(performance.now() - started),
          },
          'admin request',
        );
      });
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    url: `http://${host}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

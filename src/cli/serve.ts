import { existsSync, rmSync } from 'node:fs';
import { type AdminServer, startAdminServer } from '../admin/admin-server.js';
import { resolveHome, writeFileDurably } from '../config/home.js';
import { listenAddress } from '../config/schema.js';
import { CoatcheckError } from '../core/errors.js';
import { type ForwardProxy, startForwardProxy } from '../frontends/http/forward-proxy.js';
import { type HttpFrontend, startHttpFrontend } from '../frontends/http/start.js';
import { type PostgresFrontend, startPostgresFrontend } from '../frontends/postgres/start.js';
import type { ReloadResult } from '../policy/policy-holder.js';
import { type Context, initHome, openContext } from '../server/context.js';
import { type CliIo, EXIT } from './io.js';

export interface ServeOptions {
  dir?: string;
  json?: boolean;
  init?: boolean;
  listenAdmin?: string;
  listenHttp?: string;
  policy?: string;
  listenPostgres?: string;
  listenProxy?: string;
  upstreamCa?: string;
}

export function splitAddress(text: string, field: string): { host: string; port: number } {
  if (!listenAddress.safeParse(text).success) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${field} must be HOST:PORT, like 127.0.0.1:7070`, {
      details: { field },
    });
  }
  const colon = text.lastIndexOf(':');
  return { host: text.slice(0, colon).replace(/^\[|\]$/g, ''), port: Number(text.slice(colon + 1)) };
}

/**
 * `coatcheck serve`: opens the home, checks the wiring (fails at start, not on a
 * request), starts the listeners, prints what it listens on, and runs until SIGINT or
 * SIGTERM, then drains: listeners close, pending audit records are flushed.
 */
function policyInForce(ctx: Context): string {
  const engine = ctx.policy.engine;
  return engine.source === 'builtin'
    ? 'built-in: a valid ticket, bound to the caller and the destination, is enough'
    : `${ctx.policy.path} (${engine.policies.length} policies, default deny)`;
}

export async function serveCommand(options: ServeOptions, io: CliIo): Promise<number> {
  const home = resolveHome(options.dir, io.env);
  if (options.init && !existsSync(home.configFile)) {
    await initHome(home, { env: io.env });
    io.stderr.write(`initialized coatcheck home ${home.dir} (admin key in ${home.adminKeyFile})\n`);
  }
  const ctx = await openContext(home, { env: io.env, policyPath: options.policy });
  const log = ctx.log;
  let admin: AdminServer | null = null;
  let http: HttpFrontend | null = null;
  let pg: PostgresFrontend | null = null;
  let proxy: ForwardProxy | null = null;
  try {
    await ctx.connections.checkDeclared();
    const postgres = options.listenPostgres ?? ctx.config.listen.postgres;
    if (postgres !== null && postgres !== undefined) {
      pg = await startPostgresFrontend(ctx, splitAddress(postgres, '--listen-postgres'), log);
    }
    const httpAddress = options.listenHttp ?? ctx.config.listen.http;
    if (httpAddress !== null && httpAddress !== undefined) {
      http = await startHttpFrontend(ctx, splitAddress(httpAddress, '--listen-http'), log);
      ctx.endpoints.http = http.url;
    }
    const proxyAddress = options.listenProxy ?? ctx.config.listen.proxy;
    if (proxyAddress !== null && proxyAddress !== undefined) {
      proxy = await startForwardProxy(ctx, splitAddress(proxyAddress, '--listen-proxy'), log, {
        ...(options.upstreamCa === undefined ? {} : { upstreamCaFile: options.upstreamCa }),
      });
      ctx.endpoints.proxy = proxy.url;
    }
    admin = await startAdminServer(
      ctx,
      splitAddress(options.listenAdmin ?? ctx.config.listen.admin, '--listen-admin'),
      log,
    );
    writeFileDurably(home.serverFile, `${JSON.stringify({ pid: process.pid, admin: admin.url })}\n`, 0o600);
    const listening = {
      admin: admin.url,
      ...(http === null ? {} : { http: http.url }),
      ...(proxy === null ? {} : { proxy: proxy.url, proxyCa: proxy.ca.fingerprint }),
      ...(pg === null ? {} : { postgres: `${pg.host}:${pg.port}`, postgresCert: pg.tls.cert }),
      store: `${ctx.store.driver} ${ctx.store.location}`,
      home: home.dir,
      policy: policyInForce(ctx),
    };
    io.stdout.write(
      options.json
        ? `${JSON.stringify(listening)}\n`
        : `coatcheck listening\n  admin API  ${listening.admin}\n${http === null ? '' : `  http       ${http.url}\n`}${proxy === null ? '' : `  proxy      ${proxy.url} (CA ${proxy.ca.fingerprint}; coatcheck ca export)\n`}${pg === null ? '' : `  postgres   ${pg.host}:${pg.port} (TLS certificate ${pg.tls.cert})\n`}  store      ${listening.store}\n  policy     ${listening.policy}\n  home       ${listening.home}\n`,
    );
    log.info({ admin: admin.url, http: http?.url ?? null, store: ctx.store.driver }, 'coatcheck started');
    // Policies reload on change and on SIGHUP; a set that does not validate keeps the old one in force.
    const onReload = (result: ReloadResult) => {
      if (result.ok) log.info({ policies: result.policies, policy: policyInForce(ctx) }, 'policy reloaded');
      else
        log.error(
          { code: result.error.code, reason: result.error.message },
          'policy reload refused; the previous policy set stays in force',
        );
    };
    ctx.policy.watch(onReload);
    const onHangup = () => onReload(ctx.policy.reload());
    process.on('SIGHUP', onHangup);
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        process.off('SIGHUP', onHangup);
        resolve();
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
    log.info('coatcheck stopping');
    return EXIT.ok;
  } finally {
    await pg?.close();
    await proxy?.close();
    await http?.close();
    await admin?.close();
    rmSync(home.serverFile, { force: true });
    await ctx.close();
  }
}

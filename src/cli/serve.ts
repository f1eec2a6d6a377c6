import { existsSync, rmSync } from 'node:fs';
import { type AdminServer, startAdminServer } from '../admin/admin-server.js';
import { retentionLimits } from '../admin/operations.js';
import { isListenAddress } from '../config/defaults.js';
import {
  ensureHomeDir,
  type Home,
  resolveHome,
  writeFileDurably,
  writeFileExclusive,
} from '../config/home.js';
import { parseDuration } from '../core/duration.js';
import { CoatcheckError } from '../core/errors.js';
import { type ForwardProxy, forwardProxyFrontend } from '../frontends/http/forward-proxy.js';
import { type KubernetesListener, kubernetesFrontend } from '../frontends/kubernetes/start.js';
import { type PostgresFrontend, postgresFrontend } from '../frontends/postgres/start.js';
import { type SshFrontend, sshFrontend } from '../frontends/ssh/start.js';
import { GatewayDriver } from '../gateway/driver.js';
import type { ReloadResult } from '../policy/policy-holder.js';
import { applyRetention } from '../recording/archive.js';
import type { RelayListener } from '../relay/listener.js';
import {
  type Context,
  type InitResult,
  initHome,
  openContext,
  storeInitialized,
  waitForStoreInit,
} from '../server/context.js';
import { type HttpFrontend, httpGateway } from '../server/frontends.js';
import { frontendDeps } from '../server/gateway-deps.js';
import { recordingArchive, sessionRecordings } from '../server/recordings.js';
import { type CliIo, EXIT } from './io.js';
import { liveServer } from './live-server.js';
import {
  parseWorkers,
  runPrimary,
  type WorkerListening,
  workerIndex,
  workerMetrics,
} from './serve-workers.js';

export interface ServeOptions {
  dir?: string;
  json?: boolean;
  init?: boolean;
  listenAdmin?: string;
  listenHttp?: string;
  policy?: string;
  listenPostgres?: string;
  listenProxy?: string;
  listenK8s?: string;
  listenSsh?: string;
  listenRelay?: string;
  upstreamCa?: string;
  /** `--workers N|auto` (COATCHECK_WORKERS): gateway processes behind the listeners (default 1). */
  workers?: string;
}

export function splitAddress(text: string, field: string): { host: string; port: number } {
  if (!isListenAddress(text)) {
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

export { liveServer, type ServerFile } from './live-server.js';

/**
 * One server per home: server.json is created exclusively before anything starts. A file
 * left by a process that is gone is stale and replaced; a live one refuses this start.
 */
function claimHome(home: Home): void {
  const claim = `${JSON.stringify({ pid: process.pid, starting: true })}\n`;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (writeFileExclusive(home.serverFile, claim, 0o600)) return;
    const other = liveServer(home.serverFile);
    if (other !== null) {
      const where = Object.entries(other.listening ?? (other.admin ? { admin: other.admin } : {}))
        .map(([k, v]) => `${k} ${v}`)
        .join(', ');
      throw new CoatcheckError(
        'CC_ERR_SERVER_RUNNING',
        `coatcheck is already running on ${home.dir} (pid ${other.pid}${where === '' ? ', starting' : `, ${where}`})`,
        { details: { pid: other.pid } },
      );
    }
    rmSync(home.serverFile, { force: true });
  }
  throw new CoatcheckError('CC_ERR_SERVER_RUNNING', `could not claim ${home.serverFile}`);
}

/** A listener's EADDRINUSE names the address (the raw error says only "Error"). */
function listenError(error: unknown): unknown {
  const e = error as NodeJS.ErrnoException & { address?: string; port?: number };
  if (e?.code !== 'EADDRINUSE') return error;
  const address = e.address === undefined ? 'the address' : `${e.address}:${e.port ?? '?'}`;
  return new CoatcheckError('CC_ERR_LISTEN_ADDRESS_IN_USE', `coatcheck: ${address} is already in use`, {
    details: { address: e.address ?? null, port: e.port ?? null },
  });
}

/**
 * `serve --init`: a home whose config file is in it needs init while that file is missing;
 * one configured by COATCHECK_CONFIG (a container, a ConfigMap) while its store is not
 * initialized — so every replica of a deployment can start with `--init`.
 */
async function initNeeded(home: Home, env: NodeJS.ProcessEnv): Promise<boolean> {
  if (!home.configExternal) return !existsSync(home.configFile);
  try {
    return !(await storeInitialized(home, env));
  } catch {
    // Its tables are not there yet (another replica's migrations are running): init, which
    // migrates under the store's lock, then finds out whether it is the one to initialize.
    return true;
  }
}

/** Init, except that another replica initializing the same store first is not an error. */
async function initHomeOnce(home: Home, env: NodeJS.ProcessEnv): Promise<InitResult | null> {
  try {
    return await initHome(home, { env });
  } catch (error) {
    if (
      home.configExternal &&
      error instanceof CoatcheckError &&
      error.code === 'CC_ERR_HOME_EXISTS' &&
      (error.details as { reason?: unknown } | undefined)?.reason === 'store-initialized'
    )
      return null;
    throw error;
  }
}

export async function serveCommand(options: ServeOptions, io: CliIo): Promise<number> {
  const home = resolveHome(options.dir, io.env);
  const worker = workerIndex(io.env);
  if (worker !== null) {
    // A `serve --workers` worker: the primary has initialized and claimed the home.
    const ctx = await openContext(home, { env: io.env, policyPath: options.policy });
    try {
      return await serveWithContext(ctx, home, options, io, worker);
    } finally {
      // The channel to the primary would keep this process alive after it drained.
      if (process.connected) process.disconnect();
    }
  }
  const workers =
    options.workers !== undefined
      ? parseWorkers(options.workers, '--workers')
      : parseWorkers(io.env.COATCHECK_WORKERS, 'COATCHECK_WORKERS');
  if (options.init && (await initNeeded(home, io.env))) {
    const result = await initHomeOnce(home, io.env);
    if (result !== null && options.json)
      // One JSON line like the logs (a container's output is read by machines).
      io.stderr.write(
        `${JSON.stringify({ level: 30, service: 'coatcheck', msg: 'initialized coatcheck home', home: home.dir, store: result.store, masterKey: result.masterKeySource, adminKey: result.adminKeySource === 'env' ? 'env' : home.adminKeyFile })}\n`,
      );
    else if (result !== null)
      io.stderr.write(
        `initialized coatcheck home ${home.dir} (admin key ${result.adminKeySource === 'env' ? 'from COATCHECK_ADMIN_KEY' : `in ${home.adminKeyFile}`})\n` +
          'next, in another terminal:\n' +
          '  printf %s "$TOKEN" | coatcheck secret add NAME --allow HOST   # a secret, released only to HOST\n' +
          '  coatcheck agent create AGENT                                  # prints the agent key once\n' +
          '  coatcheck token issue --secret NAME --to AGENT --ttl 15m      # a ticket for the agent\n',
      );
  }
  // Replicas started together on one store: the ones that did not initialize it wait
  // until the one that did has finished (its keys, its admin key), then serve.
  if (options.init && home.configExternal) {
    await waitForStoreInit(home, io.env, 60_000);
    // A replica that found the store already initialized did not init: its own (empty) home
    // may not exist yet, and the server file is written there.
    ensureHomeDir(home);
  }
  if (!existsSync(home.configFile)) {
    // Let openContext give its own error (no home); nothing to claim.
    await openContext(home, { env: io.env, policyPath: options.policy });
  }
  claimHome(home);
  let ctx: Context;
  try {
    ctx = await openContext(home, { env: io.env, policyPath: options.policy });
  } catch (error) {
    rmSync(home.serverFile, { force: true });
    throw error;
  }
  try {
    // The policy set loads on first use: load (and validate) it now, so a policy that does
    // not validate stops the start before any listener opens.
    void ctx.policy.engine;
  } catch (error) {
    await ctx.close().catch(() => undefined);
    rmSync(home.serverFile, { force: true });
    throw error;
  }
  if (workers === 1) return serveWithContext(ctx, home, options, io, null);
  return serveWithWorkers(ctx, home, options, io, workers);
}

/**
 * The primary of `serve --workers N`: the context was opened only to check the start (the
 * config, the policy); the workers open their own.
 */
async function serveWithWorkers(
  ctx: Context,
  home: Home,
  options: ServeOptions,
  io: CliIo,
  workers: number,
): Promise<number> {
  const relayAddress = options.listenRelay ?? ctx.config.listen.relay;
  const drainMs = parseDuration(ctx.config.shutdown.drainTimeout);
  await ctx.close();
  try {
    if (relayAddress !== null && relayAddress !== undefined) {
      // A relay's session lives in the process it dialled: connections served by the
      // other workers could not use it.
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        'the relay listener runs with one worker: serve --workers 1, or run replicas (docs/relay.md)',
        { details: { field: '--workers' } },
      );
    }
    return await runPrimary({
      workers,
      drainMs,
      log: (message) => io.stderr.write(`coatcheck: ${message}\n`),
      onListening: (report: WorkerListening) => {
        writeFileDurably(
          home.serverFile,
          `${JSON.stringify({ pid: process.pid, admin: report.addresses.admin, listening: report.addresses, workers })}\n`,
          0o600,
        );
        io.stdout.write(
          options.json
            ? `${JSON.stringify({ ...report.listening, workers })}\n`
            : report.text.replace(/ {2}store {6}/, `  workers    ${workers}\n  store      `),
        );
      },
    });
  } finally {
    rmSync(home.serverFile, { force: true });
  }
}

async function serveWithContext(
  ctx: Context,
  home: Home,
  options: ServeOptions,
  io: CliIo,
  worker: number | null,
): Promise<number> {
  const log = worker === null ? ctx.log : ctx.log.child({ worker });
  // Worker 0 (or the only process) serves the admin API and runs retention.
  const leader = worker === null || worker === 0;
  // The one driver of this process's front-ends: listeners, session hooks, metrics, shutdown.
  const driver = new GatewayDriver({
    registry: ctx.metrics,
    log,
    store: ctx.store,
    clock: ctx.clock,
    recordings: sessionRecordings(ctx),
    listenerCopies: ctx.config.listen.acceptors - 1,
  });
  const deps = frontendDeps(ctx);
  let stopping = false;
  let admin: AdminServer | null = null;
  let http: HttpFrontend | null = null;
  let pg: PostgresFrontend | null = null;
  let proxy: ForwardProxy | null = null;
  let k8s: KubernetesListener | null = null;
  let ssh: SshFrontend | null = null;
  let relay: RelayListener | null = null;
  const closers: Array<() => void> = [];
  // Signal handlers first: a SIGTERM that arrives while the listeners start, or just after
  // the addresses are printed (an orchestrator may stop a container at any time), drains
  // and exits 0 instead of killing the process mid-start.
  const signalled = new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    // A worker whose primary is gone stops too (nothing would supervise it).
    if (worker !== null) process.once('disconnect', stop);
    closers.push(() => {
      process.off('disconnect', stop);
      stop();
    });
  });
  try {
    await ctx.connections.checkDeclared();
    const postgres = options.listenPostgres ?? ctx.config.listen.postgres;
    if (postgres !== null && postgres !== undefined) {
      pg = await driver.start(postgresFrontend(deps, splitAddress(postgres, '--listen-postgres')));
    }
    const httpAddress = options.listenHttp ?? ctx.config.listen.http;
    if (httpAddress !== null && httpAddress !== undefined) {
      http = await driver.start(httpGateway(deps, splitAddress(httpAddress, '--listen-http')));
      ctx.endpoints.http = http.url;
    }
    const proxyAddress = options.listenProxy ?? ctx.config.listen.proxy;
    if (proxyAddress !== null && proxyAddress !== undefined) {
      proxy = await driver.start(
        forwardProxyFrontend(deps, splitAddress(proxyAddress, '--listen-proxy'), {
          ...(options.upstreamCa === undefined ? {} : { upstreamCaFile: options.upstreamCa }),
        }),
      );
      ctx.endpoints.proxy = proxy.url;
    }
    const k8sAddress = options.listenK8s ?? ctx.config.listen.kubernetes;
    if (k8sAddress !== null && k8sAddress !== undefined) {
      k8s = await driver.start(kubernetesFrontend(deps, splitAddress(k8sAddress, '--listen-k8s')));
      ctx.endpoints.kubernetes = k8s.url;
    }
    const sshAddress = options.listenSsh ?? ctx.config.listen.ssh;
    if (sshAddress !== null && sshAddress !== undefined) {
      ssh = await driver.start(sshFrontend(deps, splitAddress(sshAddress, '--listen-ssh')));
    }
    const relayAddress = options.listenRelay ?? ctx.config.listen.relay;
    if (relayAddress !== null && relayAddress !== undefined && leader)
      relay = await startRelays(ctx, splitAddress(relayAddress, '--listen-relay'));
    // Every worker answers the primary's metrics aggregation; worker 0's /metrics sums them.
    const metrics = worker === null ? undefined : await workerMetrics(ctx.metrics);
    if (leader)
      admin = await startAdminServer(
        ctx,
        splitAddress(options.listenAdmin ?? ctx.config.listen.admin, '--listen-admin'),
        log,
        { draining: () => stopping, ...(metrics === undefined ? {} : { metrics }) },
      );
    const listening = {
      ...(admin === null ? {} : { admin: admin.url }),
      ...(http === null ? {} : { http: http.url }),
      ...(proxy === null ? {} : { proxy: proxy.url, proxyCa: proxy.ca.fingerprint }),
      ...(pg === null ? {} : { postgres: `${pg.host}:${pg.port}`, postgresCert: pg.tls.cert }),
      ...(k8s === null ? {} : { kubernetes: k8s.url }),
      ...(ssh === null ? {} : { ssh: `${ssh.host}:${ssh.port}`, sshHostKey: ssh.hostKey.fingerprint }),
      ...(relay === null ? {} : { relay: relay.url, relayCa: relay.ca.fingerprint }),
      store: `${ctx.store.driver} ${ctx.store.location}`,
      home: home.dir,
      policy: policyInForce(ctx),
    };
    const addresses: Record<string, string> = admin === null ? {} : { admin: admin.url };
    if (http !== null) addresses.http = http.url;
    if (proxy !== null) addresses.proxy = proxy.url;
    if (pg !== null) addresses.postgres = `${pg.host}:${pg.port}`;
    if (k8s !== null) addresses.kubernetes = k8s.url;
    if (ssh !== null) addresses.ssh = `${ssh.host}:${ssh.port}`;
    if (relay !== null) addresses.relay = relay.url;
    const text = `coatcheck listening\n${admin === null ? '' : `  admin API  ${admin.url}\n`}${http === null ? '' : `  http       ${http.url}\n`}${proxy === null ? '' : `  proxy      ${proxy.url} (CA ${proxy.ca.fingerprint}; coatcheck ca export)\n`}${pg === null ? '' : `  postgres   ${pg.host}:${pg.port} (TLS certificate ${pg.tls.cert})\n`}${k8s === null ? '' : `  kubernetes ${k8s.url} (coatcheck kubeconfig AGENT CONNECTION)\n`}${ssh === null ? '' : `  ssh        ${ssh.host}:${ssh.port} (host key ${ssh.hostKey.fingerprint})\n`}${relay === null ? '' : `  relay      ${relay.url} (CA ${relay.ca.fingerprint}; coatcheck ca export)\n`}  store      ${listening.store}\n  policy     ${listening.policy}\n  home       ${listening.home}\n`;
    if (worker !== null) {
      process.send?.({ type: 'coatcheck.listening', listening, text, addresses } satisfies WorkerListening);
    } else {
      writeFileDurably(
        home.serverFile,
        `${JSON.stringify({ pid: process.pid, admin: admin?.url, listening: addresses })}\n`,
        0o600,
      );
      io.stdout.write(options.json ? `${JSON.stringify(listening)}\n` : text);
    }
    log.info(
      { admin: admin?.url ?? null, http: http?.url ?? null, store: ctx.store.driver },
      'coatcheck started',
    );
    // Recording retention (recording.retention): at start, then hourly, off the request path.
    const retain = () =>
      applyRetention(
        recordingArchive(ctx),
        ctx.audit,
        ctx.clock,
        retentionLimits(ctx),
        'gateway:retention',
      ).catch((error: unknown) =>
        log.error(
          { code: (error as { code?: string })?.code },
          'recording retention failed; retried in an hour',
        ),
      );
    if (leader) {
      void retain();
      const retention = setInterval(() => void retain(), 3_600_000);
      retention.unref();
      closers.push(() => clearInterval(retention));
    }
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
    await signalled;
    process.off('SIGHUP', onHangup);
    log.info('coatcheck stopping');
    stopping = true;
    return EXIT.ok;
  } catch (error) {
    throw listenError(error);
  } finally {
    // Stop accepting, drain what is in flight (on a signal), then close.
    // On a signal, work in flight may finish within shutdown.drainTimeout (default 5 s).
    for (const close of closers) close();
    await driver.stop({ drainMs: stopping ? parseDuration(ctx.config.shutdown.drainTimeout) : 0 });
    await relay?.close();
    await pg?.close();
    await ssh?.close();
    await proxy?.close();
    await k8s?.close();
    await http?.close();
    await admin?.close();
    if (worker === null) rmSync(home.serverFile, { force: true });
    await ctx.close();
  }
}

/** The relay listener (docs/relay.md): a certificate under the gateway's CA, the relay hub behind it. */
async function startRelays(ctx: Context, address: { host: string; port: number }): Promise<RelayListener> {
  const [{ openProxyCa }, { startRelayListener }] = await Promise.all([
    import('../vault/proxy-ca.js'),
    import('../relay/listener.js'),
  ]);
  return startRelayListener({
    address,
    ca: await openProxyCa(ctx.store, ctx.keys.masters),
    serverNames: ctx.config.relay.serverNames,
    relays: ctx.relays,
    hub: ctx.relayHub,
    audit: ctx.audit,
    log: ctx.log,
  });
}

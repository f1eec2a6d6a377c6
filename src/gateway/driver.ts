import type { Server as HttpServer } from 'node:http';
import type { AddressInfo, Server, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import { newIncidentId } from '../core/ids.js';
import type { SessionRecordings } from '../recording/recordings.js';
import type { Store } from '../store/types.js';
import { fanOutHooks, metricsHook, recordingHook, type SessionHooks, safeName } from './hooks.js';
import { listenerCopies } from './listener-copies.js';
import { type GatewayMetrics, gatewayMetricsFor } from './metrics.js';
import { ExchangePipeline, type GatewayServices } from './pipeline.js';
import { createStoreRecorder, type Recorder } from './session.js';

/**
 * A front-end, as the driver sees it: a name (the `frontend` metrics label and the
 * mount's name) and a start function that builds its protocol adapter on a Mount.
 * Everything around the adapter — listeners, connection limits, the session hooks
 * (metrics, recordings), the mapping of unexpected failures, graceful shutdown — is
 * the driver's.
 */
export interface Frontend<Handle> {
  readonly name: string;
  start(mount: Mount): Promise<Handle>;
}

/** What the driver hands a listener: connection limits and the protocol's way of refusing a connection. */
export interface ListenOptions {
  /** Most connections held at once; beyond it `refuse` answers and the socket closes. */
  readonly maxConnections?: number;
  /** The refusal beyond `maxConnections` (default CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS). */
  readonly tooMany?: () => CoatcheckError;
  /** Tell a connection it was refused, in the protocol (a FATAL ErrorResponse, a raw 503). */
  readonly refuse?: (socket: Socket, error: CoatcheckError) => void;
  /** Wraps a listen failure (the address in use, no permission) in the front-end's own words. */
  readonly listenError?: (error: unknown) => unknown;
}

export interface DriverOptions {
  readonly registry: Registry;
  readonly log: Logger;
  readonly store: Store;
  readonly clock: Clock;
  /** Extra session hooks, called after the metrics and recording hooks. */
  readonly hooks?: readonly SessionHooks[];
  /** The recordings' writer (default: the store, batched). */
  readonly recorder?: Recorder;
  /** Full session recordings (ADR 0018); without it every session is recorded as metadata. */
  readonly recordings?: SessionRecordings;
  /**
   * Extra descriptors each listener polls (`listen.acceptors` - 1): a busy process accepts
   * one connection per descriptor per turn of its event loop (ADR 0034). Default 0.
   */
  readonly listenerCopies?: number;
}

/** How long stop() waits for listeners' close callbacks once every socket is destroyed. */
const CLOSE_GRACE_MS = 2_000;

/**
 * The gateway driver: starts, supervises and stops every front-end through one contract.
 * One per process (the composition root makes it); a front-end started on its own
 * (`startPostgresFrontend`…) gets a private one.
 */
export class GatewayDriver {
  readonly metrics: GatewayMetrics;
  readonly recorder: Recorder;
  readonly log: Logger;
  readonly clock: Clock;
  readonly store: Store;
  readonly recordings: SessionRecordings | undefined;
  readonly listenerCopies: number;
  readonly #hooks: SessionHooks[];
  readonly hooks: SessionHooks;
  readonly #mounts = new Map<string, Mount>();
  /** Listener copies being made (ADR 0034). */
  readonly #copying = new Set<Promise<void>>();

  constructor(options: DriverOptions) {
    this.metrics = gatewayMetricsFor(options.registry);
    this.log = options.log;
    this.clock = options.clock;
    this.store = options.store;
    this.recorder = options.recorder ?? createStoreRecorder(options.store, options.log, this.metrics);
    this.recordings = options.recordings;
    this.listenerCopies = options.listenerCopies ?? 0;
    this.#hooks = [
      metricsHook(this.metrics),
      recordingHook(this.recorder),
      ...(options.recordings === undefined ? [] : [options.recordings.hook]),
      ...(options.hooks ?? []),
    ];
    this.hooks = fanOutHooks(this.#hooks, options.log);
  }

  /** Track a listener's copies being made (Mount.listen), for listenersCopied(). */
  noteCopying(work: Promise<void>): void {
    this.#copying.add(work);
    void work.finally(() => this.#copying.delete(work));
  }

  /** Resolves once every listener's copies are made (or given up): tests, benchmarks. */
  async listenersCopied(): Promise<void> {
    await Promise.all([...this.#copying]);
  }

  /** Add a session hook (a recording sink, a test probe); it sees sessions opened from now on. */
  addHook(hook: SessionHooks): void {
    this.#hooks.push(hook);
  }

  /** Start a front-end. Wiring faults fail here; on failure whatever it had opened is closed. */
  async start<Handle>(frontend: Frontend<Handle>): Promise<Handle> {
    if (this.#mounts.has(frontend.name)) {
      throw new CoatcheckError('CC_ERR_GATEWAY_MISCONFIGURED', `front-end ${frontend.name} started twice`);
    }
    const mount = new Mount(this, frontend.name);
    this.#mounts.set(frontend.name, mount);
    mount.onStopped(() => this.#mounts.delete(frontend.name));
    try {
      return await frontend.start(mount);
    } catch (error) {
      await mount.stop(0);
      throw error;
    }
  }

  get mounts(): readonly Mount[] {
    return [...this.#mounts.values()];
  }

  /**
   * Graceful shutdown of every front-end: stop accepting, let work in flight finish for up
   * to `drainMs` (new work is refused meanwhile), then close what is left and flush the
   * recordings.
   */
  async stop(options: { drainMs?: number } = {}): Promise<void> {
    await Promise.all([...this.#mounts.values()].map((m) => m.stop(options.drainMs ?? 0)));
    await this.recorder.flush();
    await this.recordings?.flush();
  }
}

/**
 * One front-end's place in the driver: its listeners, its pipelines, its work in flight.
 * The front-end's adapter gets this and nothing of the server.
 */
export class Mount {
  readonly name: string;
  readonly driver: GatewayDriver;
  readonly #servers: Array<Server | HttpServer> = [];
  readonly #sockets = new Set<Duplex>();
  readonly #pipelines: ExchangePipeline[] = [];
  readonly #onDeadline: Array<() => void> = [];
  readonly #onClose: Array<() => Promise<void> | void> = [];
  readonly #onStopped: Array<() => void> = [];
  #inFlight = 0;
  #idle: (() => void) | null = null;
  #draining = false;
  #stopping: Promise<void> | null = null;

  constructor(driver: GatewayDriver, name: string) {
    this.driver = driver;
    this.name = name;
  }

  get metrics(): GatewayMetrics {
    return this.driver.metrics;
  }

  get log(): Logger {
    return this.driver.log;
  }

  get recorder(): Recorder {
    return this.driver.recorder;
  }

  /** True once stop() began: new work is refused with CC_ERR_GATEWAY_STOPPING. */
  get draining(): boolean {
    return this.#draining;
  }

  /** Units of work (requests, connections) running now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Connections this front-end holds now. */
  get connections(): number {
    return this.#sockets.size;
  }

  /**
   * An exchange pipeline for `frontend` (the label of its sessions and metrics) with the
   * driver's metrics, recorder and session hooks. Closed when the mount stops.
   */
  pipeline(
    frontend: string,
    services: Omit<Partial<GatewayServices>, 'metrics' | 'recorder' | 'hooks' | 'log'>,
  ): ExchangePipeline {
    const pipeline = new ExchangePipeline(frontend, {
      clock: this.driver.clock,
      store: this.driver.store,
      ...services,
      log: this.driver.log,
      metrics: this.driver.metrics,
      recorder: this.driver.recorder,
      hooks: this.driver.hooks,
      ...(this.driver.recordings === undefined ? {} : { recordings: this.driver.recordings }),
    });
    this.#pipelines.push(pipeline);
    return pipeline;
  }

  /**
   * Listen on `address` with `server` (a net or http server the adapter made). The driver
   * owns its connections: it counts them, refuses those beyond the limit, and closes them
   * at shutdown.
   */
  async listen(
    server: Server | HttpServer,
    address: { host: string; port: number },
    options: ListenOptions = {},
  ): Promise<AddressInfo> {
    const handlers = server.listeners('connection') as Array<(socket: Socket) => void>;
    server.removeAllListeners('connection');
    server.on('connection', (socket: Socket) => {
      socket.on('error', () => undefined);
      if (this.#draining) {
        socket.destroy();
        return;
      }
      if (options.maxConnections !== undefined && this.#sockets.size >= options.maxConnections) {
        const error =
          options.tooMany?.() ??
          new CoatcheckError(
            'CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS',
            `coatcheck: the ${this.name} front-end holds its maximum of ${options.maxConnections} connections`,
          );
        this.metrics.refusals.inc({ frontend: this.name, code: error.code });
        if (options.refuse !== undefined) options.refuse(socket, error);
        else socket.destroy();
        return;
      }
      this.track(socket);
      for (const handler of handlers) handler.call(server, socket);
    });
    this.#servers.push(server);
    await new Promise<void>((resolve, reject) => {
      const failed = (error: unknown) => reject(options.listenError?.(error) ?? error);
      server.once('error', failed);
      server.listen(address.port, address.host, () => {
        server.off('error', failed);
        resolve();
      });
    });
    // The copies come from a helper process (a few hundred ms on a loaded machine): made in
    // the background, so no listener's start waits for them; the server accepts alone until
    // they arrive. A stop before then leaves none (listenerCopies checks, and copies close
    // with their server).
    this.driver.noteCopying(
      listenerCopies(server as Server, this.driver.listenerCopies).then(
        (copies) => {
          for (const copy of copies) this.#servers.push(copy);
        },
        () => undefined,
      ),
    );
    return server.address() as AddressInfo;
  }

  /** Hold a socket the front-end opened or took over (an upgrade, a tunnel's upstream): closed at shutdown. */
  track(socket: Duplex): void {
    if (this.#sockets.has(socket)) return;
    this.#sockets.add(socket);
    this.metrics.connectionsOpen.inc({ frontend: this.name });
    socket.once('close', () => {
      if (this.#sockets.delete(socket)) this.metrics.connectionsOpen.dec({ frontend: this.name });
    });
  }

  /**
   * Run one unit of work (a request, a connection, a session) to its end. During shutdown it
   * is refused. A CoatcheckError that escapes is the protocol's refusal; anything else
   * becomes CC_ERR_INTERNAL with an incident id, logged with the id and the error's class
   * name only (never its message: it could carry a value). `refuse` encodes the refusal.
   */
  async serve(
    refuse: (error: CoatcheckError) => void,
    work: () => Promise<void>,
    fields: Readonly<Record<string, string>> = {},
  ): Promise<void> {
    if (this.#draining) {
      const error = new CoatcheckError(
        'CC_ERR_GATEWAY_STOPPING',
        'coatcheck is shutting down; retry on another replica',
      );
      this.metrics.refusals.inc({ frontend: this.name, code: error.code });
      this.#refuseSafely(refuse, error);
      return;
    }
    this.#inFlight++;
    try {
      await work();
    } catch (error) {
      const failure = this.fail(error, fields);
      this.metrics.refusals.inc({ frontend: this.name, code: failure.code });
      this.#refuseSafely(refuse, failure);
    } finally {
      this.#inFlight--;
      if (this.#inFlight === 0) this.#idle?.();
    }
  }

  #refuseSafely(refuse: (error: CoatcheckError) => void, error: CoatcheckError): void {
    try {
      refuse(error);
    } catch (failure) {
      this.log.error(
        { frontend: this.name, code: error.code, errName: safeName(failure) },
        'a refusal could not be sent',
      );
    }
  }

  /**
   * The one error mapping: a deliberate CoatcheckError passes; anything else is logged
   * under a new incident id (class name only) and becomes CC_ERR_INTERNAL carrying the id.
   */
  fail(error: unknown, fields: Readonly<Record<string, string>> = {}): CoatcheckError {
    return mapFailure(error, this.log, this.name, fields);
  }

  /** Called when the drain deadline passes, before the remaining connections are destroyed (end relays, sessions). */
  onDeadline(fn: () => void): void {
    this.#onDeadline.push(fn);
  }

  /** Release the front-end's own resources (dispatchers, caches, subscriptions) after its connections are gone. */
  onClose(fn: () => Promise<void> | void): void {
    this.#onClose.push(fn);
  }

  onStopped(fn: () => void): void {
    this.#onStopped.push(fn);
  }

  /**
   * Stop this front-end: stop accepting, refuse new work, wait for work in flight up to
   * `drainMs`, then end what remains, release resources, flush recordings.
   */
  stop(drainMs = 0): Promise<void> {
    this.#stopping ??= this.#stop(drainMs);
    return this.#stopping;
  }

  /** Resolves when no work is in flight, or after `ms`, whichever comes first. */
  async #inFlightDone(ms: number): Promise<void> {
    if (this.#inFlight === 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      timer.unref();
      this.#idle = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.#idle = null;
  }

  async #stop(drainMs: number): Promise<void> {
    this.#draining = true;
    const closed = this.#servers.map(
      (server) =>
        new Promise<void>((resolve) => {
          if (!server.listening) {
            resolve();
            return;
          }
          server.close(() => resolve());
        }),
    );
    for (const server of this.#servers) (server as HttpServer).closeIdleConnections?.();
    if (drainMs > 0) await this.#inFlightDone(drainMs);
    for (const fn of this.#onDeadline) {
      try {
        fn();
      } catch (error) {
        this.log.error({ frontend: this.name, errName: safeName(error) }, 'front-end shutdown step failed');
      }
    }
    for (const server of this.#servers) (server as HttpServer).closeAllConnections?.();
    for (const socket of this.#sockets) socket.destroy();
    await Promise.race([
      Promise.all(closed),
      new Promise<void>((resolve) => setTimeout(resolve, CLOSE_GRACE_MS).unref()),
    ]);
    // Work the closed sockets could not cut short (an audit append waiting for the store's
    // lock or its flush) still ends with its session: wait for it (bounded), so that its
    // recording is queued before the last flush below, not after it (and lost when the
    // store closes).
    await this.#inFlightDone(CLOSE_GRACE_MS);
    for (const fn of this.#onClose.reverse()) {
      try {
        await fn();
      } catch (error) {
        this.log.error({ frontend: this.name, errName: safeName(error) }, 'front-end close step failed');
      }
    }
    for (const pipeline of this.#pipelines) pipeline.close();
    await this.driver.recorder.flush();
    await this.driver.recordings?.flush();
    for (const fn of this.#onStopped) fn();
  }
}

/** Anything not deliberate becomes CC_ERR_INTERNAL under a logged incident id (no message, no cause). */
export function mapFailure(
  error: unknown,
  log: Logger,
  frontend: string,
  fields: Readonly<Record<string, string>> = {},
): CoatcheckError {
  if (error instanceof CoatcheckError) return error;
  const incident = newIncidentId();
  const code = (error as { code?: unknown } | null)?.code;
  log.error(
    {
      ...fields,
      incident,
      frontend,
      errName: safeName(error),
      ...(typeof code === 'string' && /^[A-Z0-9_]{1,40}$/.test(code) ? { errCode: code } : {}),
    },
    `${frontend} front-end: unexpected failure`,
  );
  return new CoatcheckError('CC_ERR_INTERNAL', `coatcheck: internal error (incident ${incident})`, {
    details: { incident },
  });
}

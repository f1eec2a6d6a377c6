import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { CoatcheckError } from '../core/errors.js';
import type { SiblingWriteLock } from '../store/sqlite-store.js';

/**
 * `serve --workers N` (ADR 0031): N gateway processes behind each listener. The primary
 * process only supervises: it forks the workers (each runs `serve` itself: its own context,
 * caches and store connection, the same listeners, shared through node:cluster), prints
 * the addresses once every worker listens, restarts a worker that dies, and on SIGTERM or
 * SIGINT passes the signal on and waits for every worker to drain. The workers share state
 * through the store and its change feed (on SQLite, the change log), as replicas do.
 *
 * Worker 0 alone serves the admin API and the console (its OIDC sessions and the live
 * /readyz are one process's) and runs retention; the other front-ends listen in every worker.
 */

/** Set in a worker's environment: its index (0 serves the admin API). */
export const WORKER_INDEX_ENV = 'COATCHECK_WORKER_INDEX';
const MAX_WORKERS = 64;
/** A worker that dies is started again after this long, doubled for each earlier exit in the window. */
const RESTART_DELAY_MS = 250;
/**
 * A worker that exits this many times within the window is crash-looping (a damaged store,
 * a full disk): the server stops with exit 1, so its supervisor sees the failure instead of
 * a process that restarts forever while serving with fewer workers.
 */
const CRASH_LOOP_EXITS = 5;
const CRASH_LOOP_WINDOW_MS = 60_000;

/** What a worker tells the primary once its listeners are up. */
export interface WorkerListening {
  readonly type: 'coatcheck.listening';
  /** The `serve --json` line's fields (worker 0's are printed). */
  readonly listening: Record<string, unknown>;
  readonly text: string;
  /** The server file's addresses (worker 0's). */
  readonly addresses: Record<string, string>;
}

/** Worker 0's request for every worker's metrics, and the primary's answer. */
export interface MetricsRequest {
  readonly type: 'coatcheck.metrics';
  readonly id: number;
}
interface MetricsAnswer {
  readonly type: 'coatcheck.metrics';
  readonly id: number;
  readonly text?: string;
}
const METRICS_TIMEOUT_MS = 5000;

/**
 * In a worker: its registry answers the primary's aggregation, and `clusterMetrics` (for
 * the admin API's /metrics, on worker 0) asks the primary for every worker's metrics summed
 * (prom-client's cluster aggregation: counters and gauges summed per label set).
 */
export async function workerMetrics(
  registry: import('prom-client').Registry,
  // For tests: how the request reaches the primary, and how long its answer is waited for.
  options: { send?: (message: MetricsRequest) => void; timeoutMs?: number } = {},
): Promise<() => Promise<string>> {
  const send = options.send ?? ((message: MetricsRequest) => process.send?.(message));
  const timeoutMs = options.timeoutMs ?? METRICS_TIMEOUT_MS;
  const { AggregatorRegistry } = await import('prom-client');
  // Constructing one installs prom-client's answer to the primary's requests in this worker.
  new AggregatorRegistry();
  AggregatorRegistry.setRegistries([registry]);
  let next = 0;
  const waiting = new Map<number, (text: string | undefined) => void>();
  process.on('message', (message: unknown) => {
    const m = message as Partial<MetricsAnswer> | null;
    if (m?.type !== 'coatcheck.metrics' || typeof m.id !== 'number') return;
    waiting.get(m.id)?.(typeof m.text === 'string' ? m.text : undefined);
  });
  return () =>
    new Promise<string>((resolve, reject) => {
      const id = next++;
      const timer = setTimeout(() => settle(undefined), timeoutMs);
      const settle = (text: string | undefined) => {
        clearTimeout(timer);
        waiting.delete(id);
        if (text === undefined)
          reject(
            new CoatcheckError('CC_ERR_METRICS_UNAVAILABLE', "the workers' metrics could not be gathered"),
          );
        else resolve(text);
      };
      waiting.set(id, settle);
      send({ type: 'coatcheck.metrics', id });
    });
}

/** The store's write lock between workers: asked for, granted, given back (by id). */
export interface LockMessage {
  readonly type: 'coatcheck.lock' | 'coatcheck.lock.granted' | 'coatcheck.unlock';
  readonly id: number;
}
/** A grant that does not come within this long is not waited for (SQLite's lock still decides). */
const LOCK_WAIT_MS = 2000;

/**
 * In a worker: the SQLite store's write lock shared with the sibling workers (ADR 0031).
 * SQLite alone would make a waiting worker retry on a timer while the lock sits free; the
 * primary hands it on as soon as it is given back. Never needed for correctness: without an
 * answer (no primary, a slow one) the worker goes on to SQLite's own lock.
 */
export function siblingWriteLock(): SiblingWriteLock {
  let next = 0;
  let held: number | null = null;
  const waiting = new Map<number, () => void>();
  process.on('message', (message: unknown) => {
    const m = message as Partial<LockMessage> | null;
    if (m?.type === 'coatcheck.lock.granted' && typeof m.id === 'number') waiting.get(m.id)?.();
  });
  return {
    acquire() {
      if (!process.connected) return Promise.resolve();
      const id = next++;
      return new Promise<void>((resolve) => {
        const done = (granted: boolean) => {
          clearTimeout(timer);
          waiting.delete(id);
          if (granted) held = id;
          else if (process.connected) process.send?.({ type: 'coatcheck.unlock', id } satisfies LockMessage); // a late grant is given back
          resolve();
        };
        const timer = setTimeout(() => done(false), LOCK_WAIT_MS);
        waiting.set(id, () => done(true));
        process.send?.({ type: 'coatcheck.lock', id } satisfies LockMessage);
      });
    },
    release() {
      if (held === null) return;
      const id = held;
      held = null;
      if (process.connected) process.send?.({ type: 'coatcheck.unlock', id } satisfies LockMessage);
    },
  };
}

/** What the primary needs of a worker to hand it the lock (a cluster Worker). */
export interface LockHolder {
  isConnected(): boolean;
  send(message: LockMessage): unknown;
}

/**
 * In the primary: the workers' write lock (siblingWriteLock). One holder, the rest in
 * arrival order. A worker that exits or disconnects loses what it held or asked for, so a
 * worker killed inside a transaction never leaves its siblings waiting for a grant (they
 * would go on to SQLite's own lock after LOCK_WAIT_MS; this hands the lock on at once).
 */
export class SiblingLockQueue<W extends LockHolder> {
  #holder: { worker: W; id: number } | null = null;
  readonly #queue: Array<{ worker: W; id: number }> = [];

  /** Who holds the lock (for tests and logs). */
  get holder(): { readonly worker: W; readonly id: number } | null {
    return this.#holder;
  }

  onMessage(worker: W, m: LockMessage): void {
    if (m.type === 'coatcheck.lock') {
      this.#queue.push({ worker, id: m.id });
    } else if (m.type === 'coatcheck.unlock') {
      if (this.#holder !== null && this.#holder.worker === worker && this.#holder.id === m.id)
        this.#holder = null;
      else {
        // Given back before it was granted (the worker stopped waiting): drop the request.
        const at = this.#queue.findIndex((q) => q.worker === worker && q.id === m.id);
        if (at >= 0) this.#queue.splice(at, 1);
      }
    }
    this.#grantNext();
  }

  /** The worker exited or disconnected. */
  drop(worker: W): void {
    if (this.#holder?.worker === worker) this.#holder = null;
    for (let i = this.#queue.length - 1; i >= 0; i--)
      if (this.#queue[i]!.worker === worker) this.#queue.splice(i, 1);
    this.#grantNext();
  }

  #grantNext(): void {
    while (this.#holder === null && this.#queue.length > 0) {
      const next = this.#queue.shift()!;
      if (!next.worker.isConnected()) continue;
      this.#holder = next;
      next.worker.send({ type: 'coatcheck.lock.granted', id: next.id } satisfies LockMessage);
    }
  }
}

/** `--workers` / COATCHECK_WORKERS: a count, or `auto` for one per core. Default 1. */
export function parseWorkers(value: string | undefined, field: string): number {
  if (value === undefined || value === '') return 1;
  if (value === 'auto') return Math.min(MAX_WORKERS, availableParallelism());
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_WORKERS) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      `${field} must be a whole number from 1 to ${MAX_WORKERS}, or auto`,
      { details: { field } },
    );
  }
  return n;
}

/** This process's worker index, or null when it is not a `serve --workers` worker. */
export function workerIndex(env: NodeJS.ProcessEnv): number | null {
  if (!cluster.isWorker) return null;
  const n = Number(env[WORKER_INDEX_ENV]);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

export interface PrimaryOptions {
  readonly workers: number;
  /** How long workers may drain after a signal before they are killed. */
  readonly drainMs: number;
  /** Told once every worker listens (worker 0's report). */
  readonly onListening: (report: WorkerListening) => void;
  readonly log: (message: string) => void;
}

/**
 * Fork the workers and supervise them until SIGTERM/SIGINT. Resolves with the exit code:
 * 0 after a signal and a clean drain; 1 when a worker could not start (the others are
 * stopped) or did not exit cleanly.
 */
export async function runPrimary(options: PrimaryOptions): Promise<number> {
  const { AggregatorRegistry } = await import('prom-client');
  const aggregator = new AggregatorRegistry();
  const locks = new SiblingLockQueue<Worker>();
  return new Promise<number>((resolve) => {
    const byIndex = new Map<number, Worker>();
    const ready = new Set<number>();
    let first: WorkerListening | null = null;
    let started = false;
    let stopping = false;
    let failed = false;
    let killTimer: NodeJS.Timeout | null = null;
    /** When each worker index last exited, within the crash-loop window. */
    const exits = new Map<number, number[]>();

    const fork = (index: number) => {
      const worker = cluster.fork({ [WORKER_INDEX_ENV]: String(index) });
      byIndex.set(index, worker);
      worker.on('message', (message: unknown) => {
        const lock = message as Partial<LockMessage> | null;
        if (
          (lock?.type === 'coatcheck.lock' || lock?.type === 'coatcheck.unlock') &&
          typeof lock.id === 'number'
        ) {
          locks.onMessage(worker, lock as LockMessage);
          return;
        }
        const asked = message as Partial<MetricsRequest> | null;
        if (asked?.type === 'coatcheck.metrics' && typeof asked.id === 'number') {
          const id = asked.id;
          const answer = (text?: string) => {
            if (worker.isConnected())
              worker.send({ type: 'coatcheck.metrics', id, text } satisfies MetricsAnswer);
          };
          aggregator.clusterMetrics().then(answer, () => answer());
          return;
        }
        const m = message as Partial<WorkerListening> | null;
        if (m?.type !== 'coatcheck.listening') return;
        ready.add(index);
        if (index === 0) first = m as WorkerListening;
        if (!started && ready.size === options.workers && first !== null) {
          started = true;
          options.onListening(first);
        }
      });
      // A worker cut off from the primary cannot give the lock back (its release sends nothing).
      worker.on('disconnect', () => locks.drop(worker));
      worker.on('exit', (code, signal) => {
        locks.drop(worker);
        if (byIndex.get(index) === worker) byIndex.delete(index);
        ready.delete(index);
        if (stopping) {
          if (code !== 0) failed = true;
          if (byIndex.size === 0) finish();
          return;
        }
        if (!started) {
          // A worker that cannot start (a port in use, a bad config): stop the others.
          options.log(`worker ${index} stopped before it listened (exit ${code ?? signal}); stopping`);
          failed = true;
          stop();
          return;
        }
        const now = Date.now();
        const recent = (exits.get(index) ?? []).filter((at) => now - at < CRASH_LOOP_WINDOW_MS);
        recent.push(now);
        exits.set(index, recent);
        if (recent.length >= CRASH_LOOP_EXITS) {
          options.log(
            `worker ${index} exited ${recent.length} times within ${CRASH_LOOP_WINDOW_MS / 1000} s (last: ${code ?? signal}); stopping`,
          );
          failed = true;
          stop();
          return;
        }
        const delay = RESTART_DELAY_MS * 2 ** (recent.length - 1);
        options.log(`worker ${index} exited (${code ?? signal}); starting it again in ${delay} ms`);
        // Not unref'd: were every worker gone at once, this timer alone keeps the primary up.
        setTimeout(() => {
          if (!stopping) fork(index);
        }, delay);
      });
    };

    const signals: Array<[NodeJS.Signals, () => void]> = [];
    const finish = () => {
      if (killTimer !== null) clearTimeout(killTimer);
      for (const [signal, handler] of signals) process.off(signal, handler);
      resolve(failed ? 1 : 0);
    };
    const stop = () => {
      if (stopping) return;
      stopping = true;
      if (byIndex.size === 0) {
        finish();
        return;
      }
      for (const worker of byIndex.values()) worker.process.kill('SIGTERM');
      // Past the drain deadline (and a margin to flush and close), a worker is killed.
      killTimer = setTimeout(() => {
        for (const worker of byIndex.values()) {
          failed = true;
          worker.process.kill('SIGKILL');
        }
      }, options.drainMs + 10_000);
      killTimer.unref();
    };
    const hangup = () => {
      for (const worker of byIndex.values()) worker.process.kill('SIGHUP');
    };
    signals.push(['SIGTERM', stop], ['SIGINT', stop], ['SIGHUP', hangup]);
    for (const [signal, handler] of signals) process.on(signal, handler);
    for (let i = 0; i < options.workers; i++) fork(i);
  });
}

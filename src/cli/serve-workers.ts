import cluster, { type Worker } from 'node:cluster';
import { availableParallelism } from 'node:os';
import { CoatcheckError } from '../core/errors.js';

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
      worker.on('exit', (code, signal) => {
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

import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type Database from 'better-sqlite3';

/** Writes before the checkpointer starts: a short CLI command never starts a thread. */
const START_AFTER_WRITES = 64;
/** How often the thread checkpoints (PASSIVE: a WAL already copied costs a read of its index). */
const CHECKPOINT_EVERY_MS = 200;
/**
 * The WAL's size past which a pass, once its PASSIVE checkpoint has copied every frame, also
 * runs a RESTART checkpoint so that the next commit writes from the WAL's start; the store's
 * connection truncates a WAL grown past it back to it (`journal_size_limit`).
 */
export const WAL_KEEP_BYTES = 16 * 1024 * 1024;
/**
 * How long the RESTART waits for the store's connection to finish a transaction (and then,
 * holding the write lock, for readers of old frames to finish): the store's commits wait at
 * most this long; a RESTART that could not run is tried again at the next pass.
 */
const RESTART_WAIT_MS = 25;
/** SQLite's own default, put back if the thread cannot run. */
const AUTOCHECKPOINT_PAGES = 1000;

// The thread's code, evaluated as CommonJS: a module file beside this one would not exist in
// the bundled CLI. It opens a connection of its own and checkpoints on a timer.
const THREAD_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.module);
let db;
try {
  db = new Database(workerData.path, { fileMustExist: true, ...workerData.addon });
  db.pragma('synchronous = NORMAL');
  // PASSIVE never waits; only the RESTART does (for a writer, then for old readers).
  db.pragma('busy_timeout = ' + workerData.restartWaitMs);
} catch (error) {
  parentPort.postMessage({ type: 'failed', code: String(error && error.code || error && error.name || 'Error') });
  process.exit(1);
}
const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
const restart = db.prepare('PRAGMA wal_checkpoint(RESTART)');
// In frames (a page and its 24-byte header).
const restartFrames = Math.max(1, Math.floor(workerData.keepBytes / (db.pragma('page_size', { simple: true }) + 24)));
let passes = 0;
let restarts = 0;
const timer = setInterval(() => {
  try {
    const copied = checkpoint.get();
    // Under steady writes a PASSIVE pass never ends with the whole WAL copied (commits land
    // while it copies), so the WAL never starts over and grows without bound. Past the
    // size, and only when this pass caught up (no reader holds old frames), copy the few
    // frames committed since under the write lock and start the WAL over.
    if (copied.log >= restartFrames && copied.checkpointed === copied.log && restart.get().busy === 0) restarts += 1;
    passes += 1;
    parentPort.postMessage({ type: 'checkpointed', passes, restarts });
  } catch (error) {
    parentPort.postMessage({ type: 'failed', code: String(error && error.code || 'Error') });
    clearInterval(timer);
    db.close();
    process.exit(1);
  }
}, workerData.everyMs);
parentPort.on('message', (message) => {
  if (message !== 'close') return;
  clearInterval(timer);
  db.close();
  parentPort.close();
});
parentPort.postMessage({ type: 'ready' });
`;

type ThreadMessage =
  | { type: 'ready' }
  | { type: 'checkpointed'; passes: number; restarts: number }
  | { type: 'failed'; code: string };

/**
 * Checkpoints the SQLite store's WAL from a thread with its own connection (ADR 0032).
 *
 * SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages: it copies the
 * WAL into the database file and flushes both, on the event loop (10 ms and more, every
 * second or so under load: most of the time COMMIT took). Once the thread runs, the store's
 * connection stops doing that (`wal_autocheckpoint = 0`) and the thread checkpoints every
 * 200 ms (PASSIVE: it never waits for, or holds up, a writer or a reader). Past
 * WAL_KEEP_BYTES of WAL it also starts the WAL over (RESTART, after a PASSIVE pass that caught
 * up: writers wait at most RESTART_WAIT_MS), so that under steady writes the file stays
 * bounded. Should the thread fail, the store's connection checkpoints for itself again.
 */
export class BackgroundCheckpointer {
  readonly #db: Database.Database;
  readonly #path: string;
  readonly #addon: { nativeBinding?: string };
  #writes = 0;
  #worker: Worker | null = null;
  #exited: Promise<void> = Promise.resolve();
  #closed = false;
  readonly #keepBytes: number;
  /** Checkpoint passes the thread has made, and whether the store's connection has handed them over. */
  passes = 0;
  /** Times the thread started the WAL over. */
  restarts = 0;
  running = false;

  constructor(
    db: Database.Database,
    path: string,
    addon: { nativeBinding?: string },
    options: { keepBytes?: number } = {},
  ) {
    this.#db = db;
    this.#path = path;
    this.#addon = addon;
    this.#keepBytes = options.keepBytes ?? WAL_KEEP_BYTES;
  }

  /** Told of every write; the thread starts at the 64th. */
  noteWrite(): void {
    this.#writes += 1;
    if (this.#writes === START_AFTER_WRITES) this.start();
  }

  start(): void {
    if (this.#worker !== null || this.#closed) return;
    const worker = new Worker(THREAD_SOURCE, {
      eval: true,
      workerData: {
        module: createRequire(import.meta.url).resolve('better-sqlite3'),
        path: this.#path,
        addon: this.#addon,
        everyMs: CHECKPOINT_EVERY_MS,
        keepBytes: this.#keepBytes,
        restartWaitMs: RESTART_WAIT_MS,
      },
    });
    worker.unref();
    this.#worker = worker;
    worker.on('message', (message: ThreadMessage) => {
      if (message.type === 'ready') {
        if (this.#closed || !this.#db.open) return;
        this.#db.pragma('wal_autocheckpoint = 0');
        this.running = true;
      } else if (message.type === 'checkpointed') {
        this.passes = message.passes;
        this.restarts = message.restarts;
      } else {
        this.#handBack();
      }
    });
    worker.on('error', () => this.#handBack());
    this.#exited = new Promise<void>((resolve) =>
      worker.once('exit', () => {
        this.#handBack();
        resolve();
      }),
    );
  }

  /** The thread is gone: the store's connection checkpoints for itself again. */
  #handBack(): void {
    if (!this.running) return;
    this.running = false;
    if (this.#db.open) this.#db.pragma(`wal_autocheckpoint = ${AUTOCHECKPOINT_PAGES}`);
  }

  /** Stop the thread (before the store's connection closes). */
  async close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    this.#worker = null;
    if (worker === null) return;
    worker.postMessage('close');
    const timer = setTimeout(() => void worker.terminate(), 1000);
    await this.#exited;
    clearTimeout(timer);
  }
}

import { open } from 'node:fs/promises';
import { CoatcheckError } from '../core/errors.js';

/**
 * Makes SQLite commits durable off the event loop (ADR 0032).
 *
 * The store's connection runs with `synchronous = NORMAL` in WAL mode: COMMIT writes the
 * transaction's frames to the WAL file and returns without an fsync. This class then
 * fsyncs the WAL file on libuv's thread pool, and a transaction is reported committed only
 * once an fsync that started after its COMMIT has finished: exactly what `synchronous =
 * FULL` guarantees, without holding the only thread for the flush.
 *
 * - Coalesced: commits made while an fsync runs share the next one, so N concurrent
 *   transactions cost at most two flushes, however they interleave.
 * - Ordered: the WAL is written front to back and each frame's checksum covers every frame
 *   before it, so a later transaction that is durable makes every earlier one durable; one
 *   that is not (power lost before its flush) takes every later one with it on recovery.
 * - A checkpoint (SQLite's own, at NORMAL) flushes the WAL before copying it and the
 *   database file after, so frames it moved are durable too; the file itself is only
 *   deleted by the last connection's close, so it exists while this one is open.
 * - Fails closed and stays failed: after a failed fsync the kernel may have dropped the
 *   dirty pages and report the next fsync clean, so nothing written since can be called
 *   durable. Every later sync is refused (CC_ERR_STORE_UNAVAILABLE) until restart.
 */
export class WalSync {
  readonly #walPath: string;
  #running: Promise<void> | null = null;
  #queued: Promise<void> | null = null;
  #failed: CoatcheckError | null = null;
  /** fsyncs that ran, and syncs asked for (their ratio is the coalescing). */
  flushes = 0;
  requests = 0;

  constructor(databasePath: string) {
    this.#walPath = `${databasePath}-wal`;
  }

  /** Resolves once every commit made before the call is on disk. */
  sync(): Promise<void> {
    this.requests += 1;
    if (this.#failed !== null) return Promise.reject(this.#failed);
    // A flush already running may have started before the caller's COMMIT: wait for the next.
    if (this.#running === null) return this.#start();
    this.#queued ??= this.#running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        this.#queued = null;
        return this.#failed !== null ? Promise.reject(this.#failed) : this.#start();
      });
    return this.#queued;
  }

  #start(): Promise<void> {
    this.flushes += 1;
    const running = this.#flush().finally(() => {
      if (this.#running === running) this.#running = null;
    });
    this.#running = running;
    return running;
  }

  async #flush(): Promise<void> {
    try {
      await flushFile(this.#walPath);
    } catch (cause) {
      this.#failed = new CoatcheckError(
        'CC_ERR_STORE_UNAVAILABLE',
        `the SQLite store's write-ahead log could not be flushed to disk (${(cause as NodeJS.ErrnoException).code ?? 'error'}); restart the server`,
        { cause },
      );
      throw this.#failed;
    }
  }
}

/** fsync one file (a backup copy) on the thread pool. */
export async function flushFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

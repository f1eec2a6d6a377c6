import { closeSync, fstat, fsync, open, stat } from 'node:fs';
import { open as openFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { CoatcheckError } from '../core/errors.js';

const openAsync = promisify(open);
const fstatAsync = promisify(fstat);
const fsyncAsync = promisify(fsync);

/** How often the WAL's name is checked against the file the flushes reach. */
const NAME_CHECK_MS = 250;

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
 *   database file after, so frames it moved are durable too.
 * - One descriptor, kept: SQLite deletes the WAL only at the last connection's close, so
 *   while this one is open the file keeps its name. That is checked anyway, every 250 ms
 *   off the request path (one thread-pool round trip per flush is what this is for): a
 *   name that no longer leads to the flushed file fails the store as below.
 * - Fails closed and stays failed: after a failed fsync the kernel may have dropped the
 *   dirty pages and report the next fsync clean, so nothing written since can be called
 *   durable. Every later sync is refused (CC_ERR_STORE_UNAVAILABLE) until restart.
 */
export class WalSync {
  readonly #walPath: string;
  #running: Promise<void> | null = null;
  #queued: Promise<void> | null = null;
  #failed: CoatcheckError | null = null;
  /** The WAL, opened at the first flush and kept (a FileHandle per flush cost ~50 µs of the event loop). */
  #fd: number | null = null;
  #inode = 0;
  #nameCheck: NodeJS.Timeout | null = null;
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

  /** Check now that the WAL's name still leads to the file the flushes reach (the timer does this every 250 ms). */
  checkName(): Promise<void> {
    return new Promise((resolve) => {
      const fd = this.#fd;
      if (fd === null || this.#failed !== null) return resolve();
      stat(this.#walPath, (error, stats) => {
        if (this.#fd === fd && (error !== null || stats.ino !== this.#inode)) {
          this.#fail(
            error ?? Object.assign(new Error('the WAL file was replaced'), { code: 'EWALREPLACED' }),
          );
        }
        resolve();
      });
    });
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
      if (this.#fd === null) {
        const fd = await openAsync(this.#walPath, 'r');
        this.#fd = fd;
        this.#inode = (await fstatAsync(fd)).ino;
        this.#nameCheck = setInterval(() => void this.checkName(), NAME_CHECK_MS);
        this.#nameCheck.unref();
      }
      await fsyncAsync(this.#fd);
    } catch (cause) {
      this.#fail(cause);
    }
    if (this.#failed !== null) throw this.#failed;
  }

  #fail(cause: unknown): void {
    this.#failed ??= new CoatcheckError(
      'CC_ERR_STORE_UNAVAILABLE',
      `the SQLite store's write-ahead log could not be flushed to disk (${(cause as NodeJS.ErrnoException).code ?? 'error'}); restart the server`,
      { cause },
    );
  }

  /** Close the WAL's descriptor (the store's close; a later sync reopens it). */
  close(): void {
    if (this.#nameCheck !== null) clearInterval(this.#nameCheck);
    this.#nameCheck = null;
    if (this.#fd === null) return;
    closeSync(this.#fd);
    this.#fd = null;
  }
}

/** fsync one file (a backup copy) on the thread pool. */
export async function flushFile(path: string): Promise<void> {
  const handle = await openFile(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

import type { Duplex } from 'node:stream';
import type { MessageFramer } from './protocol/framer.js';
import type { Frame } from './protocol/messages.js';

/**
 * Reads frames from one socket and hands them to a handler, one at a time. A handler
 * that returns a promise holds the socket (paused) until it settles, so frames are
 * handled strictly in order and nothing is buffered without bound. `hold`/`release`
 * let the other side pause this socket while its own writes are backed up.
 */
export class FramePump {
  readonly socket: Duplex;
  readonly framer: MessageFramer;
  readonly #handle: (frame: Frame) => void | Promise<void>;
  readonly #afterBatch: () => void;
  readonly #onError: (error: unknown) => void;
  readonly #holds = new Set<string>();
  #running = false;
  #stopped = false;

  constructor(
    socket: Duplex,
    framer: MessageFramer,
    handlers: {
      frame: (frame: Frame) => void | Promise<void>;
      /** Called when the framer runs dry (flush coalesced writes here). */
      afterBatch: () => void;
      error: (error: unknown) => void;
    },
  ) {
    this.socket = socket;
    this.framer = framer;
    this.#handle = handlers.frame;
    this.#afterBatch = handlers.afterBatch;
    this.#onError = handlers.error;
  }

  /**
   * Paused mode: each 'readable' takes everything the socket has buffered at once, so a
   * stream that arrives in many small chunks (an upstream carried over a relay's HTTP/2
   * stream, in DATA frames of a PostgreSQL server's 8 KiB writes) is framed, inspected and
   * written to the other side in one batch instead of one write per chunk. While held,
   * nothing is read: the socket's buffer fills and pushes back on its sender.
   */
  start(): void {
    this.socket.on('readable', this.#drain);
    this.#drain();
  }

  #drain = (): void => {
    if (this.#stopped || this.#holds.size > 0) return;
    for (;;) {
      const chunk = this.socket.read() as Buffer | null;
      if (chunk === null) break;
      this.framer.push(chunk);
    }
    this.#run();
  };

  stop(): void {
    this.#stopped = true;
  }

  hold(reason: string): void {
    this.#holds.add(reason);
  }

  release(reason: string): void {
    if (!this.#holds.delete(reason)) return;
    if (this.#holds.size === 0 && !this.#stopped) {
      this.#run();
      this.#drain();
    }
  }

  #run(): void {
    if (this.#running || this.#stopped || this.#holds.size > 0) return;
    this.#running = true;
    try {
      for (;;) {
        if (this.#stopped || this.#holds.size > 0) break;
        const frame = this.framer.next();
        if (frame === null) break;
        const pending = this.#handle(frame);
        if (pending !== undefined) {
          this.#afterBatch();
          this.hold('handler');
          this.#running = false;
          pending.then(
            () => this.release('handler'),
            (error: unknown) => {
              this.#stopped = true;
              this.#onError(error);
            },
          );
          return;
        }
      }
      this.#afterBatch();
    } catch (error) {
      this.#stopped = true;
      this.#onError(error);
    }
    this.#running = false;
  }
}

/** Coalesces writes of adjacent views of the same buffer into one write. */
export class WriteBatcher {
  readonly #socket: Duplex;
  readonly #onFull: () => void;
  #buf: Buffer | null = null;
  #start = 0;
  #end = 0;
  #parts: Buffer[] = [];
  #size = 0;
  /** Sees every byte written (the session recording); null when nothing listens. */
  tap: ((data: Buffer) => void) | null = null;

  constructor(socket: Duplex, onFull: () => void) {
    this.#socket = socket;
    this.#onFull = onFull;
  }

  push(view: Buffer): void {
    const b = this.#buf;
    if (b !== null && view.buffer === b.buffer && view.byteOffset === b.byteOffset + this.#end) {
      this.#end += view.length;
      return;
    }
    this.#closeRun();
    this.#buf = view;
    this.#start = 0;
    this.#end = view.length;
  }

  #closeRun(): void {
    if (this.#buf === null) return;
    // The run may extend past the first view: rebuild it over the shared memory.
    const run = Buffer.from(this.#buf.buffer, this.#buf.byteOffset + this.#start, this.#end - this.#start);
    this.#parts.push(run);
    this.#size += run.length;
    this.#buf = null;
  }

  flush(): void {
    this.#closeRun();
    if (this.#parts.length === 0) return;
    const data = this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts, this.#size);
    this.#parts = [];
    this.#size = 0;
    if (this.#socket.destroyed) return;
    if (this.tap !== null) this.tap(data);
    if (!this.#socket.write(data)) this.#onFull();
  }
}

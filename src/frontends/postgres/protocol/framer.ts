import { CoatcheckError } from '../../../core/errors.js';
import type { Frame } from './messages.js';

/** Default cap on one message (header included). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/** Hard ceiling for the configurable cap: the protocol's own limit is 1 GiB. */
export const MAX_MESSAGE_BYTES_CEILING = 1024 * 1024 * 1024;
/** A startup packet (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) is at most this large. */
export const MAX_STARTUP_BYTES = 10 * 1024;
/** Cap on any message before the client has authenticated (a password message holds a ticket or a key). */
export const MAX_PREAUTH_MESSAGE_BYTES = 8 * 1024;

export function protocolError(message: string, details?: Record<string, unknown>): CoatcheckError {
  return new CoatcheckError('CC_ERR_PG_PROTOCOL', message, details === undefined ? undefined : { details });
}

/**
 * Splits a byte stream into PostgreSQL messages. No sockets: bytes in, frames out.
 *
 * Two shapes: startup-phase messages (int32 length including itself, no type byte) and
 * typed messages (a type byte, then an int32 length including itself). The caller says
 * which one comes next (`expectStartup`). Every length is checked against its limit
 * before anything is allocated; partial input is kept as a list of chunks and joined
 * only once a whole message is there, so memory is bounded by the limit plus one chunk.
 */
export class MessageFramer {
  expectStartup: boolean;
  #maxMessageBytes: number;
  /**
   * Called with every frame before it is returned; a throw is a protocol refusal (the
   * frame is consumed). Used to hold the stream to invariants (text encoding, pinned
   * settings) whoever reads it.
   */
  watch: ((frame: Frame) => void) | null = null;
  #chunks: Buffer[] = [];
  #buffered = 0;
  /** The current chunk and the read offset into it (fast path: frames as views into it). */
  #head: Buffer = Buffer.alloc(0);
  #offset = 0;

  constructor(options: { startup: boolean; maxMessageBytes?: number }) {
    this.expectStartup = options.startup;
    this.#maxMessageBytes = Math.min(
      options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES,
      MAX_MESSAGE_BYTES_CEILING,
    );
  }

  /** Change the per-message cap (a small one before login, the configured one after). */
  set maxMessageBytes(limit: number) {
    this.#maxMessageBytes = Math.min(limit, MAX_MESSAGE_BYTES_CEILING);
  }

  get maxMessageBytes(): number {
    return this.#maxMessageBytes;
  }

  /** Bytes received and not yet returned as frames. */
  get pending(): number {
    return this.#head.length - this.#offset + this.#buffered;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    if (this.#offset >= this.#head.length && this.#buffered === 0) {
      this.#head = chunk;
      this.#offset = 0;
      return;
    }
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
  }

  /** The next complete frame, or null when more bytes are needed. Throws CC_ERR_PG_* on bad input. */
  next(): Frame | null {
    const available = this.pending;
    const headerSize = this.expectStartup ? 4 : 5;
    if (available < headerSize) return null;
    this.#ensureContiguous(headerSize);
    const head = this.#head;
    const at = this.#offset;
    const code = this.expectStartup ? 0 : head[at]!;
    const length = head.readInt32BE(at + headerSize - 4);
    const total = length + headerSize - 4;
    this.#checkLength(code, length);
    if (available < total) return null;
    this.#ensureContiguous(total);
    const raw = this.#head.subarray(this.#offset, this.#offset + total);
    this.#offset += total;
    if (this.#offset >= this.#head.length && this.#buffered === 0) {
      this.#head = Buffer.alloc(0);
      this.#offset = 0;
    }
    const frame = { code, body: raw.subarray(headerSize), raw };
    this.watch?.(frame);
    return frame;
  }

  #checkLength(code: number, length: number): void {
    if (this.expectStartup) {
      if (length < 8) throw protocolError(`startup packet length ${length} is below the minimum of 8`);
      if (length > MAX_STARTUP_BYTES) {
        throw new CoatcheckError(
          'CC_ERR_PG_MESSAGE_TOO_LARGE',
          `startup packet length ${length} exceeds ${MAX_STARTUP_BYTES} bytes`,
          { details: { length, limit: MAX_STARTUP_BYTES } },
        );
      }
      return;
    }
    if (length < 4) {
      throw protocolError(`message ${describeCode(code)} declares length ${length}, below 4`, {
        type: describeCode(code),
      });
    }
    if (length + 1 > this.#maxMessageBytes) {
      throw new CoatcheckError(
        'CC_ERR_PG_MESSAGE_TOO_LARGE',
        `message ${describeCode(code)} declares ${length} bytes; the limit is ${this.#maxMessageBytes}`,
        { details: { type: describeCode(code), length, limit: this.#maxMessageBytes } },
      );
    }
  }

  /** Make the first `size` pending bytes one contiguous view at `#offset` (size is already bounded). */
  #ensureContiguous(size: number): void {
    if (this.#head.length - this.#offset >= size) return;
    const parts: Buffer[] = [this.#head.subarray(this.#offset)];
    let have = parts[0]!.length;
    while (have < size) {
      const next = this.#chunks.shift()!;
      this.#buffered -= next.length;
      parts.push(next);
      have += next.length;
    }
    this.#head = Buffer.concat(parts, have);
    this.#offset = 0;
  }

  /** Take every byte not yet framed (used after SSLRequest to detect pipelined bytes, and for pass-through). */
  drain(): Buffer {
    const rest = Buffer.concat([this.#head.subarray(this.#offset), ...this.#chunks]);
    this.#head = Buffer.alloc(0);
    this.#offset = 0;
    this.#chunks = [];
    this.#buffered = 0;
    return rest;
  }
}

export function describeCode(code: number): string {
  return code >= 0x20 && code < 0x7f
    ? `'${String.fromCharCode(code)}'`
    : `0x${code.toString(16).padStart(2, '0')}`;
}

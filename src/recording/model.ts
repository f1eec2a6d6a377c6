import { isUtf8 } from 'node:buffer';

/**
 * The recording model (docs/recording.md, ADR 0018). A front-end reports what the gateway
 * forwarded and what the client received, after substitution was reversed: requests as the
 * agent sent them (tickets, never the secret injected for them), responses as the agent
 * got them (secrets already replaced by tickets, masked values masked). The writer scrubs
 * every string once more with the known-secret matcher before anything is stored.
 */

export const RECORDING_MODES = ['off', 'metadata', 'full'] as const;
/** `off`: nothing is kept; `metadata`: the session row (`coatcheck sessions`); `full`: also the events. */
export type RecordingMode = (typeof RECORDING_MODES)[number];

export function isRecordingMode(value: unknown): value is RecordingMode {
  return typeof value === 'string' && (RECORDING_MODES as readonly string[]).includes(value);
}

/**
 * A payload (a body, a message, a SQL value), cut at the body limit. `text` for UTF-8,
 * `base64` for anything else; `bytes` is the size the gateway saw, `truncated` when
 * less than that was kept.
 */
export interface Payload {
  readonly text?: string;
  readonly base64?: string;
  readonly bytes: number;
  readonly truncated?: true;
}

/**
 * One recorded event. This is the whole contract a front-end meets to be recorded:
 *
 *   session.record(kind, dir, data)
 *
 * - `at`: milliseconds since the session started (set by the capture).
 * - `kind`: dotted, protocol first: `http.request`, `http.response`, `ws.message`,
 *   `sse.event`, `pg.query`, `pg.result`, `pg.notice`, `pg.error`, `gateway.refused`,
 *   `ssh.exec`, `ssh.data`…
 * - `dir`: `in` (from the client, as it sent it), `out` (to the client, as it received
 *   it), `gateway` (what the gateway decided: a refusal, a termination).
 * - `data`: JSON values only; every string and payload already bounded by the front-end
 *   through `clip`/`clipText` (the capture bounds the session's total).
 */
export interface RecordingEvent {
  readonly at: number;
  readonly kind: string;
  readonly dir: 'in' | 'out' | 'gateway';
  readonly data: Readonly<Record<string, unknown>>;
}

export interface RecordingLimits {
  /** Most bytes of events kept per session (their JSON lines, in UTF-16 code units). */
  readonly maxSessionBytes: number;
  /** Most bytes kept of one payload. */
  readonly maxBodyBytes: number;
  /** Most rows kept per SQL statement. */
  readonly maxRowsPerStatement: number;
}

export const DEFAULT_LIMITS: RecordingLimits = {
  maxSessionBytes: 8 * 1024 * 1024,
  maxBodyBytes: 64 * 1024,
  maxRowsPerStatement: 100,
};

/** A payload cut at `limit` bytes: UTF-8 text when it decodes (at a character boundary), base64 otherwise. */
export function clip(bytes: Buffer | Uint8Array | string, limit: number): Payload {
  if (typeof bytes === 'string') {
    // Most strings are short: no encoding round trip unless one could be over the limit.
    if (bytes.length * 3 <= limit) return { text: bytes, bytes: Buffer.byteLength(bytes, 'utf8') };
    bytes = Buffer.from(bytes, 'utf8');
  }
  // A view, not a copy: what is kept is turned into a string below.
  const buffer = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const total = buffer.length;
  const kept = buffer.subarray(0, Math.min(total, limit));
  const truncated = kept.length < total ? ({ truncated: true } as const) : {};
  // A cut may split a multi-byte character: back off up to 3 bytes before calling it binary.
  for (const back of kept.length < total ? [0, 1, 2, 3] : [0]) {
    if (back > kept.length) break;
    const part = kept.subarray(0, kept.length - back);
    if (isUtf8(part)) return { text: part.toString('utf8'), bytes: total, ...truncated };
  }
  return { base64: kept.toString('base64'), bytes: total, ...truncated };
}

/** A short text field (a method, a header value, a SQL statement) cut at `limit` characters. */
export function clipText(text: string, limit: number): string {
  return text.length <= limit ? text : `${text.slice(0, limit)}…[${text.length - limit} more]`;
}

/**
 * One session's full recording while it runs: each event serialised at once to a JSON line
 * (one string per event: nothing for the garbage collector to trace through a long session),
 * bounded by `maxSessionBytes`. Beyond it events are counted, not kept, and one
 * `recording.truncated` event says so.
 */
export class RecordingCapture {
  readonly limits: RecordingLimits;
  /** NDJSON lines (without the newline), one per event, not yet handed to the writer. */
  readonly lines: string[] = [];
  /** Bytes of every event kept so far (what `maxSessionBytes` bounds). */
  bytes = 0;
  dropped = 0;
  /**
   * Called when the session holds `spillBytes` (lines, or raw bytes a front-end keeps for
   * later decoding) since the writer last took them: the writer then takes them and writes
   * a part while the session runs (ADR 0024), so a long session is not held until it ends.
   */
  onHeld: (() => void) | null = null;
  spillBytes = Number.POSITIVE_INFINITY;
  #held = 0;
  readonly #startedAt: number;
  readonly #now: () => number;
  readonly #deferred: Array<() => void> = [];

  constructor(limits: RecordingLimits, startedAt: number, now: () => number) {
    this.limits = limits;
    this.#startedAt = startedAt;
    this.#now = now;
  }

  /** Milliseconds since the session started. */
  elapsed(): number {
    return this.#now() - this.#startedAt;
  }

  add(kind: string, dir: RecordingEvent['dir'], data: Record<string, unknown>): void {
    this.addAt(this.elapsed(), kind, dir, data);
  }

  /** An event that happened at `at` (a deferred decoder reports its events after the fact). */
  addAt(at: number, kind: string, dir: RecordingEvent['dir'], data: Record<string, unknown>): void {
    if (this.dropped > 0) {
      this.dropped++;
      return;
    }
    const line = JSON.stringify({ at, kind, dir, data });
    if (this.bytes + line.length > this.limits.maxSessionBytes) {
      this.truncate(at);
      return;
    }
    this.bytes += line.length;
    this.lines.push(line);
    this.hold(line.length);
  }

  /** `n` more bytes held for the writer (a front-end's raw bytes count too). */
  hold(n: number): void {
    this.#held += n;
    if (this.#held >= this.spillBytes) this.onHeld?.();
  }

  /** Bytes held since the writer last took the lines. */
  get held(): number {
    return this.#held;
  }

  /** Keep nothing more; one marker says so. */
  truncate(at: number): void {
    if (this.dropped++ > 0) return;
    this.lines.push(
      JSON.stringify({
        at,
        kind: 'recording.truncated',
        dir: 'gateway',
        data: { maxSessionBytes: this.limits.maxSessionBytes },
      }),
    );
  }

  /**
   * Work a front-end defers to the writer, off the request path: it keeps raw bytes while
   * the session runs and turns them into events here (PostgreSQL). It may run more than
   * once (each time the writer takes a part) and must turn only what it has not yet.
   */
  defer(work: () => void): void {
    this.#deferred.push(work);
  }

  /** Run the deferred work, then hand over the lines held, ordered by time (stable). */
  take(): string[] {
    for (const work of this.#deferred) {
      try {
        work();
      } catch {
        this.lines.push(JSON.stringify({ at: 0, kind: 'recording.unreadable', dir: 'gateway', data: {} }));
      }
    }
    const at = (line: string) => Number(/^\{"at":(-?[0-9.e+-]+),/.exec(line)?.[1] ?? 0);
    const keyed = this.lines.map((line, i) => ({ line, at: at(line), i }));
    keyed.sort((a, b) => a.at - b.at || a.i - b.i);
    this.lines.length = 0;
    this.#held = 0;
    return keyed.map((k) => k.line);
  }

  /** The session ended: the last lines (deferred work run once more, then dropped). */
  finish(): string[] {
    const lines = this.take();
    this.#deferred.length = 0;
    this.onHeld = null;
    return lines;
  }
}

import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import type { KnownSecretMatcher } from '../detect/known-secrets.js';
import type { SessionHooks } from '../gateway/hooks.js';
import type { GatewaySession } from '../gateway/session.js';
import type { SessionRecord, Store } from '../store/types.js';
import { PART_PLAIN_BYTES, RecordingSealer, sealLines } from './format.js';
import { isRecordingMode, RecordingCapture, type RecordingLimits, type RecordingMode } from './model.js';
import { partLocation, type RecordingStorage } from './storage.js';

export interface RecordingSettings {
  /** Mode of a connection that names none. */
  readonly default: RecordingMode;
  readonly limits: RecordingLimits;
  /** Full recordings waiting to be written; beyond it `whenFull` applies. */
  readonly maxQueued: number;
  readonly whenFull: 'refuse' | 'metadata';
}

export interface RecordingServiceOptions {
  readonly store: Store;
  readonly audit: Pick<AuditLog, 'append'>;
  readonly storage: RecordingStorage;
  /** The keyring's recording key (`keys.index.recording`): wraps each recording's data key. */
  readonly wrapKey: Buffer;
  /**
   * A matcher over the vault's live secrets, current when it resolves (the shared index's:
   * `currentSecretMatcher`): every string is scrubbed against it before it is stored. A
   * rejection fails the write (the recording is dropped and audited as degraded).
   */
  readonly knownMatcher: () => Promise<KnownSecretMatcher>;
  readonly log: Logger;
  readonly registry: Registry;
  readonly clock: Clock;
  readonly settings: RecordingSettings;
}

/** Recordings the writer takes at once (sealed in parallel, committed in one transaction). */
const BATCH = 64;

/** A recording written in parts while its session runs (ADR 0024). */
interface Stream {
  readonly sealer: RecordingSealer;
  /** Parts stored so far, their bytes, the events in them. */
  parts: number;
  bytes: number;
  events: number;
  /** The part being taken, sealed and stored now. */
  busy: Promise<void> | null;
  /** The first failure: the recording is then not kept (audited at close). */
  failed: unknown;
}

interface Queued {
  readonly record: SessionRecord;
  readonly capture: RecordingCapture;
  readonly tickets: readonly string[];
}

interface RecordingMetrics {
  readonly written: Counter<'frontend'>;
  readonly degraded: Counter<'frontend' | 'action'>;
  readonly scrubbed: Counter<'frontend'>;
  readonly queued: Gauge;
}

const metricsByRegistry = new WeakMap<Registry, RecordingMetrics>();

function recordingMetrics(registry: Registry): RecordingMetrics {
  let metrics = metricsByRegistry.get(registry);
  if (metrics === undefined) {
    metrics = {
      written: new Counter({
        name: 'coatcheck_recordings_written_total',
        help: 'Full session recordings sealed and stored.',
        labelNames: ['frontend'],
        registers: [registry],
      }),
      degraded: new Counter({
        name: 'coatcheck_recording_degraded_total',
        help: 'Full recordings not kept: sessions refused, recorded as metadata only, or content dropped (queue full, write failed).',
        labelNames: ['frontend', 'action'],
        registers: [registry],
      }),
      scrubbed: new Counter({
        name: 'coatcheck_recording_scrubbed_total',
        help: 'Known secrets the writer removed from a recording before storing it (a front-end reported a value: defence in depth).',
        labelNames: ['frontend'],
        registers: [registry],
      }),
      queued: new Gauge({
        name: 'coatcheck_recording_queue',
        help: 'Full recordings waiting to be written.',
        registers: [registry],
      }),
    };
    metricsByRegistry.set(registry, metrics);
  }
  return metrics;
}

/**
 * Session recordings (ADR 0018): decides each session's mode when its connection is known,
 * holds the full recording's events while it runs, and writes finished recordings off the
 * request path through a bounded queue: scrubbed against the known secrets, compressed,
 * sealed under a per-recording data key, stored, and vouched for in the audit chain.
 */
export class SessionRecordings {
  readonly settings: RecordingSettings;
  readonly hook: SessionHooks;
  readonly #o: RecordingServiceOptions;
  readonly #metrics: RecordingMetrics;
  /** Waiting to be written. */
  readonly #queue: Queued[] = [];
  /** Being written now. */
  #inFlight = 0;
  #writer: Promise<void> | null = null;
  /** `recording.degraded` records being appended (flush waits for them). */
  readonly #notices = new Set<Promise<unknown>>();
  /** Recordings being written in parts while their sessions run. */
  readonly #streams = new WeakMap<RecordingCapture, Stream>();

  constructor(options: RecordingServiceOptions) {
    this.#o = options;
    this.settings = options.settings;
    this.#metrics = recordingMetrics(options.registry);
    this.hook = {
      open: () => undefined,
      exchange: () => undefined,
      close: (session, record) => this.#closed(session, record),
    };
  }

  /** Recordings waiting or being written: what `maxQueued` bounds. */
  get queued(): number {
    return this.#queue.length + this.#inFlight;
  }

  /** The mode a connection's sessions are recorded in. */
  modeFor(rules: Readonly<Record<string, unknown>>): RecordingMode {
    return isRecordingMode(rules.recording) ? rules.recording : this.settings.default;
  }

  /**
   * Set the session's mode once its connection is known. With the queue full, a `full`
   * session is refused (CC_ERR_RECORDING_BACKLOG) or recorded as metadata only, as
   * configured: counted and audited either way.
   */
  async begin(session: GatewaySession, connection: { readonly rules: Readonly<Record<string, unknown>> }) {
    if (session.recording !== null) return;
    const mode = this.modeFor(connection.rules);
    session.recordingMode = mode;
    if (mode !== 'full') return;
    if (this.queued >= this.settings.maxQueued) {
      const action = this.settings.whenFull === 'refuse' ? 'refused' : 'metadata';
      this.#metrics.degraded.inc({ frontend: session.frontend, action });
      await this.#o.audit.append({
        type: 'recording.degraded',
        actor: session.principal?.ref ?? `gateway:${session.frontend}`,
        data: {
          session: session.id,
          frontend: session.frontend,
          connection: session.connection,
          action,
          reason: 'queue-full',
        },
      });
      if (action === 'refused') {
        throw new CoatcheckError(
          'CC_ERR_RECORDING_BACKLOG',
          'coatcheck: this connection is recorded in full and the recording queue is full; retry shortly',
        );
      }
      session.recordingMode = 'metadata';
      return;
    }
    const capture = new RecordingCapture(this.settings.limits, session.startedAt, () => this.#o.clock.now());
    // A session that holds a part's worth has it written now, not at its end.
    capture.spillBytes = PART_PLAIN_BYTES;
    capture.onHeld = () => this.#spill(session.id, session.frontend, capture);
    session.recording = capture;
  }

  /**
   * Write what a running session holds as the next part: taken, scrubbed, sealed under the
   * recording's key and stored, one part at a time per session, after the current turn of
   * the event loop (never inside the front-end's call).
   */
  #spill(id: string, frontend: string, capture: RecordingCapture): void {
    let stream = this.#streams.get(capture);
    if (stream === undefined) {
      stream = { sealer: new RecordingSealer(id), parts: 0, bytes: 0, events: 0, busy: null, failed: null };
      this.#streams.set(capture, stream);
    }
    if (stream.busy !== null || stream.failed !== null) return;
    const s = stream;
    s.busy = (async () => {
      await new Promise<void>((resolve) => setImmediate(resolve));
      const lines = await this.#scrubbed(id, frontend, capture.take());
      s.events += lines.length;
      s.sealer.push(lines);
      await this.#storeParts(id, s);
    })()
      .catch((error: unknown) => {
        s.failed = error ?? new Error('a recording part could not be written');
        s.sealer.destroy();
      })
      .finally(() => {
        s.busy = null;
        // What arrived meanwhile is written now, not when the next event comes (it may never).
        if (capture.held >= capture.spillBytes) capture.onHeld?.();
      });
  }

  /** Store every whole part the sealer holds, in order. */
  async #storeParts(id: string, stream: Stream): Promise<void> {
    const location = this.#o.storage.locate(id);
    for (let part = await stream.sealer.sealPart(); part !== null; part = await stream.sealer.sealPart()) {
      await this.#o.storage.put(partLocation(location, stream.parts), part);
      stream.parts++;
      stream.bytes += part.length;
    }
  }

  /** Lines with every known secret replaced (counted and logged when any was). */
  async #scrubbed(id: string, frontend: string, lines: string[]): Promise<string[]> {
    const matcher = await this.#o.knownMatcher();
    let replaced = 0;
    const out = lines.map((line) => scrubLine(line, matcher, () => replaced++));
    if (replaced > 0) {
      this.#metrics.scrubbed.inc({ frontend }, replaced);
      this.#o.log.warn(
        { session: id, frontend, replaced },
        'known secrets were removed from a recording before it was stored',
      );
    }
    return out;
  }

  #closed(session: GatewaySession, record: SessionRecord): void {
    const capture = session.recording;
    if (capture === null) return;
    session.recording = null;
    // Whatever it still holds is written with its last part.
    capture.onHeld = null;
    if (this.queued >= this.settings.maxQueued) {
      this.#degrade(session.id, session.frontend, session.connection, 'dropped', 'queue-full');
      const stream = this.#streams.get(capture);
      if (stream !== undefined) {
        // Parts already written are not kept either: their key is forgotten, their objects removed.
        const cleanup = (async () => {
          await stream.busy;
          stream.sealer.destroy();
          await this.#removeParts(session.id, stream.parts);
        })().finally(() => this.#notices.delete(cleanup));
        this.#notices.add(cleanup);
      }
      return;
    }
    this.#queue.push({
      record,
      capture,
      tickets: [...session.ticketIds],
    });
    this.#metrics.queued.set(this.queued);
    this.#startWriters();
  }

  #degrade(
    session: string,
    frontend: string,
    connection: string | null,
    action: 'dropped',
    reason: 'queue-full' | 'write-failed',
  ): void {
    this.#metrics.degraded.inc({ frontend, action });
    this.#o.log.error({ session, frontend, reason }, 'a full session recording was not kept');
    const notice = this.#o.audit
      .append({
        type: 'recording.degraded',
        actor: `gateway:${frontend}`,
        data: { session, frontend, connection, action, reason },
      })
      .catch(() => this.#o.log.error({ session }, 'the recording.degraded audit record could not be written'))
      .finally(() => this.#notices.delete(notice));
    this.#notices.add(notice);
  }

  /**
   * The writer: takes up to BATCH queued recordings at a time, seals and stores each
   * (compression on the thread pool, files in parallel), then appends their audit records
   * (each with its row) in one tick, so one transaction carries the batch.
   */
  async #drain(): Promise<void> {
    for (let batch = this.#queue.splice(0, BATCH); batch.length > 0; batch = this.#queue.splice(0, BATCH)) {
      this.#inFlight += batch.length;
      try {
        const sealed = await Promise.all(
          batch.map((item) => this.#seal(item).catch((error: unknown) => error)),
        );
        await Promise.all(
          batch.map(async (item, i) => {
            try {
              const done = sealed[i];
              if (!(done instanceof Function)) throw done;
              await done();
              this.#metrics.written.inc({ frontend: item.record.frontend });
            } catch (error) {
              this.#degrade(
                item.record.id,
                item.record.frontend,
                item.record.connection,
                'dropped',
                'write-failed',
              );
              this.#o.log.error(
                {
                  session: item.record.id,
                  code: (error as { code?: string })?.code,
                  // Coatcheck errors say what failed without a value (the storage's names the S3 error).
                  ...(error instanceof CoatcheckError ? { reason: error.message } : {}),
                },
                'a session recording could not be written',
              );
            }
          }),
        );
      } finally {
        this.#inFlight -= batch.length;
        this.#metrics.queued.set(this.queued);
      }
    }
  }

  #startWriters(): void {
    this.#writer ??= this.#drain().finally(() => {
      this.#writer = null;
      if (this.#queue.length > 0) this.#startWriters();
    });
  }

  /** Scrub, seal and store one recording; returns the step that commits its audit record and row. */
  async #seal(item: Queued): Promise<() => Promise<unknown>> {
    const { record } = item;
    const stream = this.#streams.get(item.capture);
    if (stream !== undefined) {
      await stream.busy;
      if (stream.failed !== null) {
        await this.#removeParts(record.id, stream.parts);
        throw stream.failed;
      }
    }
    item.capture.addAt(record.endedAt - record.startedAt, 'session.end', 'gateway', {
      outcome: record.outcome,
    });
    // Deferred decoding (PostgreSQL) runs here, off the request path.
    const lines = await this.#scrubbed(record.id, record.frontend, item.capture.finish());
    const location = this.#o.storage.locate(record.id);
    let sealed: { file: Buffer; hash: string; chunks: number; wrappedKey: Buffer };
    let bytes: number;
    if (stream === undefined) {
      sealed = await sealLines(record.id, lines, this.#o.wrapKey);
      bytes = sealed.file.length;
    } else {
      try {
        stream.sealer.push(lines);
        await this.#storeParts(record.id, stream);
        const file = await stream.sealer.sealRest();
        sealed = { file, ...stream.sealer.finish(this.#o.wrapKey) };
      } catch (error) {
        stream.sealer.destroy();
        await this.#removeParts(record.id, stream.parts);
        throw error;
      }
      bytes = stream.bytes + sealed.file.length;
    }
    const events = (stream?.events ?? 0) + lines.length;
    try {
      await this.#o.storage.put(location, sealed.file);
    } catch (error) {
      if (stream !== undefined) await this.#removeParts(record.id, stream.parts);
      throw error;
    }
    // The row goes in with its audit record: one transaction, group-committed with the
    // other appends (a recording is never listed that the log does not vouch for).
    return () =>
      this.#o.audit.append(
        {
          type: 'recording.sealed',
          actor: `gateway:${record.frontend}`,
          data: {
            session: record.id,
            frontend: record.frontend,
            connection: record.connection,
            hash: sealed.hash,
            chunks: sealed.chunks,
            bytes,
            events,
            dropped: item.capture.dropped,
            ...(stream === undefined ? {} : { parts: stream.parts }),
          },
        },
        async (tx) => {
          await tx.insertRecording({
            id: record.id,
            frontend: record.frontend,
            principal: record.principal,
            connection: record.connection,
            startedAt: record.startedAt,
            endedAt: record.endedAt,
            events,
            bytes,
            chunks: sealed.chunks,
            hash: sealed.hash,
            location,
            wrappedKey: sealed.wrappedKey,
            tickets: item.tickets,
            createdAt: this.#o.clock.now(),
            erasedAt: null,
          });
        },
        undefined,
        { rowLocked: true },
      );
  }

  /** Parts of a recording that will not be kept (their key is already forgotten): removed, best effort. */
  async #removeParts(id: string, parts: number): Promise<void> {
    const location = this.#o.storage.locate(id);
    for (let n = 0; n < parts; n++) {
      await this.#o.storage.delete(partLocation(location, n)).catch(() => undefined);
    }
  }

  /** Wait until every queued recording is written, and every recording not kept is audited. */
  async flush(): Promise<void> {
    while (this.#writer !== null) await this.#writer;
    await Promise.all(this.#notices);
  }
}

/**
 * One event's JSON line with every known secret replaced by `[secret:<id>]` (in every
 * encoding the matcher knows: plain, JSON-escaped, base64…). The marker holds no quote or
 * backslash; should a replacement still break the line (a match across an escape), the
 * whole event is replaced by a `recording.scrubbed` event: nothing unscrubbed is kept.
 */
export function scrubLine(line: string, matcher: KnownSecretMatcher, hit: () => void): string {
  if (matcher.size === 0) return line;
  // A JSON line whose only escapes are JSON's own short ones (\" \n \t…) holds a secret
  // only in its plain or JSON-escaped form, which the matcher finds on the line as it is;
  // decoded views (\u, percent, HTML escapes, a literal backslash) are needed otherwise.
  const matches = needsViews(line) ? matcher.find(line, 'text') : matcher.findForms(line, 'text');
  if (matches.length === 0) return line;
  const sorted = [...matches].sort((a, b) => a.start - b.start || b.end - a.end);
  let out = '';
  let at = 0;
  for (const m of sorted) {
    if (m.end <= at) continue;
    out += line.slice(at, Math.max(at, m.start));
    out += `[secret:${m.secretId}]`;
    at = m.end;
    hit();
  }
  out += line.slice(at);
  try {
    const event = JSON.parse(out) as { at?: unknown };
    return out.length > 0 && typeof event === 'object' ? out : unreadableLine(event.at);
  } catch {
    const at = /^\{"at":(\d{1,15}(?:\.\d+)?),/.exec(line)?.[1];
    return unreadableLine(at === undefined ? 0 : Number(at));
  }
}

function needsViews(line: string): boolean {
  return line.includes('\\\\') || line.includes('\\u') || line.includes('%') || line.includes('&');
}

function unreadableLine(at: unknown): string {
  return JSON.stringify({
    at: typeof at === 'number' ? at : 0,
    kind: 'recording.scrubbed',
    dir: 'gateway',
    data: {},
  });
}

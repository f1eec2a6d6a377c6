import type { Logger } from 'pino';
import type { Clock } from '../core/clock.js';
import type { ErrorCode } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Principal } from '../core/principal.js';
import type { RecordingCapture, RecordingEvent, RecordingMode } from '../recording/model.js';
import type { SessionRecord, Store, StoreChange } from '../store/types.js';
import type { Vault } from '../vault/vault.js';
import type { GatewayMetrics } from './metrics.js';

/** Most events kept per session; later ones are counted, not kept (recordings stay bounded). */
export const MAX_SESSION_EVENTS = 256;

export interface SessionEvent {
  /** Milliseconds since the session started. */
  readonly at: number;
  readonly type: string;
  readonly data: Readonly<Record<string, unknown>>;
}

/**
 * One data-path session: who, through which connection, with which tickets, and what
 * happened (events carry ids, sizes and codes — never a value). Revoking a ticket,
 * agent or secret it depends on terminates it (see LiveSessions).
 */
export class GatewaySession {
  readonly id = newId('ses');
  readonly frontend: string;
  readonly startedAt: number;
  readonly #clock: Clock;
  /** Made on first use of `signal`: most sessions (one HTTP request each) never need one. */
  #abort: AbortController | null = null;
  /** Told of the end by `onTerminated`: far cheaper than an EventTarget listener on `signal`. */
  #terminatedListeners: Array<(code: ErrorCode) => void> | null = null;
  readonly ticketIds = new Set<string>();
  readonly secretIds = new Set<string>();
  /** Registered SSH keys the session logged in with (removing one ends the session: ADR 0023). */
  readonly sshKeyIds = new Set<string>();
  readonly events: SessionEvent[] = [];
  droppedEvents = 0;
  principal: Principal | null = null;
  connection: string | null = null;
  terminatedBy: ErrorCode | null = null;
  /** Run when the session closes (timers, listeners). */
  readonly cleanups: Array<() => void> = [];
  /** How this session is recorded; set when its connection is known (ADR 0018). */
  recordingMode: RecordingMode = 'metadata';
  /** The full recording's events while the session runs (mode `full` only). */
  recording: RecordingCapture | null = null;

  constructor(frontend: string, clock: Clock) {
    this.frontend = frontend;
    this.#clock = clock;
    this.startedAt = clock.now();
  }

  /** Aborted when the session must end (revocation); engines tear their streams down on it. */
  get signal(): AbortSignal {
    if (this.#abort === null) {
      this.#abort = new AbortController();
      if (this.terminatedBy !== null) this.#abort.abort(this.terminatedBy);
    }
    return this.#abort.signal;
  }

  /**
   * Run `listener` when the session ends (at once if it already has); returns the undo.
   * The per-request path's way to hear of a revocation without an AbortSignal.
   */
  onTerminated(listener: (code: ErrorCode) => void): () => void {
    if (this.terminatedBy !== null) {
      listener(this.terminatedBy);
      return () => undefined;
    }
    this.#terminatedListeners ??= [];
    const listeners = this.#terminatedListeners;
    listeners.push(listener);
    return () => {
      const at = listeners.indexOf(listener);
      if (at >= 0) listeners.splice(at, 1);
    };
  }

  event(type: string, data: Record<string, unknown>): void {
    if (this.events.length >= MAX_SESSION_EVENTS) {
      this.droppedEvents++;
      return;
    }
    this.events.push({ at: this.#clock.now() - this.startedAt, type, data });
  }

  /**
   * Report one event for the full recording (a no-op unless the mode is `full`; check
   * `recording !== null` before building an expensive event). What the gateway forwarded
   * and returned after substitution was reversed: tickets, never secrets.
   */
  record(kind: string, dir: RecordingEvent['dir'], data: Record<string, unknown>): void {
    this.recording?.add(kind, dir, data);
  }

  terminate(code: ErrorCode): void {
    if (this.terminatedBy !== null) return;
    this.terminatedBy = code;
    this.event('session.terminated', { code });
    this.record('session.terminated', 'gateway', { code });
    this.#abort?.abort(code);
    const listeners = this.#terminatedListeners;
    this.#terminatedListeners = null;
    if (listeners === null) return;
    // Every listener is told, whatever one of them does (an AbortSignal's listeners are
    // isolated the same way): a revocation must reach every exchange of the session, and
    // the caller goes on to end other sessions.
    for (const listener of listeners) {
      try {
        listener(code);
      } catch (error) {
        process.emitWarning(
          `a session termination listener failed (${(error as Error | null)?.name ?? 'error'})`,
          { code: 'COATCHECK_SESSION_LISTENER' },
        );
      }
    }
  }

  toRecord(outcome: string, summary: Record<string, unknown>, endedAt: number): SessionRecord {
    return {
      id: this.id,
      frontend: this.frontend,
      principal: this.principal?.ref ?? null,
      connection: this.connection,
      startedAt: this.startedAt,
      endedAt,
      outcome,
      summary: {
        ...summary,
        tickets: [...this.ticketIds],
        secrets: [...this.secretIds],
        events: this.events,
        droppedEvents: this.droppedEvents,
      },
    };
  }
}

/**
 * Live sessions, watched against the store's change feed: on every replica, a
 * revocation (ticket tree, agent, secret erasure) ends the sessions that depend on it.
 * After a `resync` (changes may have been missed) every live ticket is checked again.
 */
export class LiveSessions {
  readonly #sessions = new Set<GatewaySession>();
  readonly #vault: Vault;
  readonly #store: Store;
  readonly #log: Logger;
  readonly #unsubscribe: () => void;

  constructor(store: Store, vault: Vault, log: Logger) {
    this.#store = store;
    this.#vault = vault;
    this.#log = log;
    this.#unsubscribe = store.subscribe((change) => this.#onChange(change));
  }

  get size(): number {
    return this.#sessions.size;
  }

  add(session: GatewaySession): void {
    this.#sessions.add(session);
  }

  delete(session: GatewaySession): void {
    this.#sessions.delete(session);
  }

  close(): void {
    this.#unsubscribe();
  }

  #onChange(change: StoreChange): void {
    switch (change.type) {
      case 'ticket.revoked': {
        const ids = new Set(change.ids);
        for (const s of this.#sessions) {
          if ([...s.ticketIds].some((id) => ids.has(id))) s.terminate('CC_ERR_TICKET_REVOKED');
        }
        return;
      }
      case 'agent.revoked':
        for (const s of this.#sessions) {
          if (s.principal?.ref === `agent:${change.id}`) s.terminate('CC_ERR_AGENT_REVOKED');
        }
        return;
      case 'agent.sshkey.removed':
        for (const s of this.#sessions) {
          if (s.sshKeyIds.has(change.id)) s.terminate('CC_ERR_SSH_KEY_REMOVED');
        }
        return;
      case 'workflow.ended': {
        const ids = new Set(change.ids);
        for (const s of this.#sessions) {
          const node = s.principal?.kind === 'subtask' ? s.principal.attributes.subtask : undefined;
          if (typeof node === 'string' && ids.has(node)) s.terminate('CC_ERR_WORKFLOW_ENDED');
        }
        return;
      }
      case 'secret.erased':
        for (const s of this.#sessions) {
          if (s.secretIds.has(change.id)) s.terminate('CC_ERR_TICKET_SECRET_ERASED');
        }
        return;
      case 'resync':
        this.#recheck().catch((error: unknown) => {
          // Cannot tell whether anything was revoked: fail closed, end every session holding tickets.
          this.#log.error({ err: error }, 'live session recheck failed; ending sessions that hold tickets');
          for (const s of this.#sessions) if (s.ticketIds.size > 0) s.terminate('CC_ERR_STORE_UNAVAILABLE');
        });
        return;
      default:
        return;
    }
  }

  async #recheck(): Promise<void> {
    for (const s of [...this.#sessions]) {
      for (const id of s.ticketIds) {
        const view = await this.#vault.inspectTicket(id);
        if (view.status !== 'active' && view.status !== 'exhausted') {
          s.terminate(view.status === 'erased' ? 'CC_ERR_TICKET_SECRET_ERASED' : 'CC_ERR_TICKET_REVOKED');
          break;
        }
      }
      const node = s.principal?.kind === 'subtask' ? s.principal.attributes.subtask : undefined;
      if (typeof node === 'string') {
        const record = await this.#store.getWorkflow(node);
        if (record === null || record.status !== 'active') s.terminate('CC_ERR_WORKFLOW_ENDED');
      }
      const ref = s.principal?.ref;
      if (ref?.startsWith('agent:')) {
        const agent = await this.#store.getAgentById(ref.slice('agent:'.length));
        if (agent === null || agent.revokedAt !== null) s.terminate('CC_ERR_AGENT_REVOKED');
        if (s.sshKeyIds.size > 0 && agent !== null) {
          const live = new Set((await this.#store.listAgentSshKeys(agent.id, false)).map((k) => k.id));
          if ([...s.sshKeyIds].some((id) => !live.has(id))) s.terminate('CC_ERR_SSH_KEY_REMOVED');
        }
      }
    }
  }
}

/** Where finished sessions go. Recording is best-effort and bounded; the audit log is the record of releases. */
export interface Recorder {
  record(record: SessionRecord): void;
  /** Wait for queued recordings to be written. */
  flush(): Promise<void>;
}

/**
 * Writes recordings to the store in the background, batched: one transaction (one disk
 * flush) per `batchMs` or per `maxBatch` recordings. The queue is bounded; beyond it,
 * recordings are dropped and counted (the audit log, not the recording, is the record
 * of every release).
 */
export function createStoreRecorder(
  store: Store,
  log: Logger,
  metrics: GatewayMetrics,
  options: { batchMs?: number; maxBatch?: number; maxQueued?: number } = {},
): Recorder {
  const batchMs = options.batchMs ?? 50;
  const maxBatch = options.maxBatch ?? 256;
  const maxQueued = options.maxQueued ?? 10_000;
  let queue: SessionRecord[] = [];
  let timer: NodeJS.Timeout | null = null;
  let writing: Promise<void> = Promise.resolve();

  const write = () => {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
    const batch = queue;
    queue = [];
    if (batch.length === 0) return writing;
    writing = writing.then(() =>
      store
        // Plain inserts: no global lock (ADR 0015), so a slow replica holds up no other.
        .transaction(
          async (tx) => {
            for (const record of batch) await tx.insertSession(record);
          },
          { lock: 'rows' },
        )
        .catch((error: unknown) => {
          for (const record of batch) metrics.recordingFailures.inc({ frontend: record.frontend });
          log.error(
            { sessions: batch.length, code: (error as { code?: string })?.code },
            'session recordings could not be written',
          );
        }),
    );
    return writing;
  };

  return {
    record(record) {
      if (queue.length >= maxQueued) {
        metrics.recordingFailures.inc({ frontend: record.frontend });
        return;
      }
      queue.push(record);
      if (queue.length >= maxBatch) void write();
      else timer ??= setTimeout(() => void write(), batchMs);
    },
    flush: () => write(),
  };
}

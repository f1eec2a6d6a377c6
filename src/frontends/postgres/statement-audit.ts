import type { AuditLog } from '../../audit/audit-log.js';
import type { PostgresSessionFields } from '../../audit/events.js';
import type { StatementEvent } from './relay/relay-services.js';

/**
 * One timer for every session's statement audit: the batches due in one window are
 * written in the same turn of the event loop, so the audit log's group commit puts them
 * in one store transaction (one disk flush) instead of one per session.
 */
export class StatementAuditTick {
  readonly #ms: number;
  readonly #due = new Set<StatementAudit>();
  #timer: NodeJS.Timeout | null = null;

  constructor(ms: number) {
    this.#ms = ms;
  }

  /** Flush `audit` within the window (at most `ms` from now). */
  schedule(audit: StatementAudit): void {
    this.#due.add(audit);
    if (this.#timer !== null) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      const due = [...this.#due];
      this.#due.clear();
      for (const a of due) a.timedFlush();
    }, this.#ms);
    this.#timer.unref();
  }

  cancel(audit: StatementAudit): void {
    this.#due.delete(audit);
    if (this.#due.size === 0 && this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
  }
}

/**
 * Statement audit records, batched per session: every statement is audited (class,
 * decision, duration, rows, scrubbed text) in `postgres.query` records that each carry
 * up to MAX_BATCH statements, written at most BATCH_MS after the first of them (on a
 * timer shared by every session: see StatementAuditTick), or at once when MAX_PENDING
 * wait. A refusal is written at once. A failed write ends the session (fail closed).
 */
export class StatementAudit {
  static readonly MAX_BATCH = 64;
  static readonly MAX_PENDING = 16 * StatementAudit.MAX_BATCH;
  static readonly BATCH_MS = 50;
  readonly #audit: Pick<AuditLog, 'append'>;
  readonly #actor: string;
  readonly #base: PostgresSessionFields;
  readonly #tick: StatementAuditTick;
  #pending: StatementEvent[] = [];
  #scheduled = false;
  /** Batch writes not yet settled (a timed one may still run when the session ends). */
  readonly #writing = new Set<Promise<void>>();
  /** The first failed write: every later flush reports it (the trail has a gap). */
  #failure: { readonly error: unknown } | null = null;
  /** Called when a timed flush fails (the relay ends the session). */
  onFailure: (error: unknown) => void = () => undefined;

  constructor(
    audit: Pick<AuditLog, 'append'>,
    actor: string,
    base: PostgresSessionFields,
    tick: StatementAuditTick,
  ) {
    this.#audit = audit;
    this.#actor = actor;
    this.#base = base;
    this.#tick = tick;
  }

  add(event: StatementEvent): Promise<void> {
    this.#pending.push(event);
    if (event.decision === 'deny' || this.#pending.length >= StatementAudit.MAX_PENDING) return this.flush();
    if (!this.#scheduled) {
      this.#scheduled = true;
      this.#tick.schedule(this);
    }
    return Promise.resolve();
  }

  /** The shared timer's flush: a failure ends the session. */
  timedFlush(): void {
    this.#scheduled = false;
    this.flush().catch((error: unknown) => this.onFailure(error));
  }

  /**
   * Write what is pending and wait for every write started before (a timed one may be
   * running); rejects if any of this session's writes failed, now or earlier.
   */
  async flush(): Promise<void> {
    if (this.#scheduled) {
      this.#scheduled = false;
      this.#tick.cancel(this);
    }
    // Records of at most MAX_BATCH statements, appended in one turn: one store transaction.
    const pending = this.#pending;
    this.#pending = [];
    for (let at = 0; at < pending.length; at += StatementAudit.MAX_BATCH) {
      const batch =
        pending.length <= StatementAudit.MAX_BATCH
          ? pending
          : pending.slice(at, at + StatementAudit.MAX_BATCH);
      const write: Promise<void> = this.#audit
        .append({ type: 'postgres.query', actor: this.#actor, data: { ...this.#base, statements: batch } })
        .then(
          () => undefined,
          (error: unknown) => {
            this.#failure ??= { error };
          },
        )
        .finally(() => this.#writing.delete(write));
      this.#writing.add(write);
    }
    await Promise.all([...this.#writing]);
    if (this.#failure !== null) throw this.#failure.error;
  }
}

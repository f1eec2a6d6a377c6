import { CoatcheckError } from '../../../core/errors.js';
import type { FieldDescription } from '../protocol/messages.js';
import type { Classification } from '../sql/classify.js';
import type { StatementLineage } from '../sql/lineage.js';

/**
 * The relay's model of one PostgreSQL session after login, without sockets: the
 * prepared statements and portals the server holds, and the queue of answers the
 * server owes, one slot per forwarded client message, in order. Every backend message
 * is matched to the slot it answers (PostgreSQL answers strictly in order; after an
 * error in the extended protocol it skips everything up to Sync), so each row reaches
 * the masking and row-limit rules of the statement that produced it, however deeply
 * the client pipelines. Statements and portals are objects: a Describe, Bind or Execute
 * holds the one that existed when it was sent, so a later Parse or Close of the same
 * name cannot lend it another statement's description or policy.
 */

/** A prepared statement (protocol Parse or SQL PREPARE). */
export interface PreparedEntry {
  readonly name: string;
  /** Statement text for records (scrubbed). */
  readonly recorded: string;
  readonly classification: Classification;
  readonly kind: string;
  readonly tables: readonly string[];
  readonly functions: readonly string[];
  /** The whole normalised text (for policy); '' when no policy is configured. */
  readonly normalized: string;
  description: readonly FieldDescription[] | null;
  /** Output lineage (set when masking is active; null: unknown, every column is masked). */
  lineage?: StatementLineage | null;
}

/** A portal (Bind) or cursor (DECLARE). */
export interface PortalEntry {
  readonly name: string;
  readonly statement: PreparedEntry | null;
  readonly recorded: string;
  readonly cls: Classification['class'];
  readonly tickets: readonly string[];
  /** Column patterns from the policy decision of this execution. */
  readonly policyMask: ((name: string) => boolean) | null;
  description: readonly FieldDescription[] | null;
  /** Rows returned so far (across Executes and FETCHes): the row limit is per portal. */
  rows: number;
}

/** One statement's run: rows counted and masked against its description. */
export interface Run {
  readonly recorded: string;
  readonly cls: Classification['class'] | 'unknown';
  readonly tickets: readonly string[];
  readonly policyMask: ((name: string) => boolean) | null;
  /** Rows count against this portal or cursor (null: against this run only). */
  readonly portal: PortalEntry | null;
  readonly startedAt: number;
  rows: number;
  dropped: number;
  description: readonly FieldDescription[] | null;
  /** Mask plan for `description`, filled in by the session. */
  mask: unknown;
  /** Output lineage when masking is active (null: unknown, every column is masked). */
  lineage?: StatementLineage | null;
  /** The statement reads masked columns: its errors and notices are withheld. */
  touches?: boolean;
  /** The prepared statement this run's PREPARE creates (dropped again if it fails). */
  created?: PreparedEntry;
}

export type Slot =
  /** A simple Query: its statements' results, then ReadyForQuery. */
  | { readonly kind: 'query'; readonly runs: Run[]; index: number; readonly refusal: Refusal | null }
  | { readonly kind: 'parse'; readonly statement: PreparedEntry; readonly refusal: null }
  | { readonly kind: 'bind'; readonly refusal: null }
  | {
      readonly kind: 'describe';
      readonly statement: PreparedEntry | null;
      readonly portal: PortalEntry | null;
      readonly refusal: null;
    }
  | { readonly kind: 'execute'; readonly run: Run; readonly refusal: null }
  | { readonly kind: 'close'; readonly refusal: null }
  | { readonly kind: 'sync'; readonly refusal: null }
  /** A refused extended-protocol message: the server answers its stand-in with an error we replace. */
  | { readonly kind: 'refused'; readonly refusal: Refusal };

/** A refusal's answer, sent in place of the server's error for the stand-in message. */
export interface Refusal {
  readonly bytes: Buffer;
  /** Resolves once the refusal's audit record is durable (set when its batch is written). */
  durable: (() => Promise<void>) | null;
  /** Whether that record is durable already (the answer can go out at once). */
  ready: (() => boolean) | null;
}

export class ProtocolState {
  readonly statements = new Map<string, PreparedEntry>();
  readonly portals = new Map<string, PortalEntry>();
  readonly #queue: Slot[] = [];
  #head = 0;
  txStatus: 'I' | 'T' | 'E' = 'I';
  /**
   * The server failed an extended-protocol message and ignores everything until a Sync
   * that was not yet sent (the relay was still deciding the messages before it): slots
   * expected until that Sync are skipped as they arrive.
   */
  #ignoring = false;

  get pending(): number {
    return this.#queue.length - this.#head;
  }

  /** Queue the answer owed for a forwarded message; false when the server will skip it (see `#ignoring`). */
  expect(slot: Slot): boolean {
    if (this.#ignoring) {
      if (slot.kind !== 'sync') return false;
      this.#ignoring = false;
    }
    this.#queue.push(slot);
    return true;
  }

  head(): Slot | undefined {
    return this.#queue[this.#head];
  }

  #shift(): Slot {
    const s = this.#queue[this.#head]!;
    this.#queue[this.#head] = undefined as unknown as Slot;
    this.#head++;
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
    return s;
  }

  #protocol(what: string): CoatcheckError {
    return new CoatcheckError('CC_ERR_PG_PROTOCOL', `the upstream sent ${what} out of turn`);
  }

  /** ParseComplete, BindComplete, CloseComplete: the head slot of that kind is answered. */
  complete(kind: 'parse' | 'bind' | 'close'): Slot {
    const h = this.head();
    if (h?.kind !== kind) throw this.#protocol(`${kind} completion`);
    return this.#shift();
  }

  /** ParameterDescription: part of a statement Describe's answer. */
  parameterDescription(): void {
    if (this.head()?.kind !== 'describe') throw this.#protocol('ParameterDescription');
  }

  /**
   * RowDescription or NoData: the answer to a Describe (recorded on the statement or
   * portal it named), or the start of a simple-query statement's rows (returned).
   */
  description(fields: readonly FieldDescription[] | null): Run | null {
    const h = this.head();
    if (h?.kind === 'describe') {
      if (fields !== null) {
        if (h.portal !== null) h.portal.description = fields;
        else if (h.statement !== null) h.statement.description = fields;
      }
      this.#shift();
      return null;
    }
    if (h?.kind === 'query' && fields !== null) {
      const run = this.#currentRun(h);
      run.description = fields;
      run.mask = null;
      return run;
    }
    throw this.#protocol(fields === null ? 'NoData' : 'RowDescription');
  }

  #currentRun(h: Extract<Slot, { kind: 'query' }>): Run {
    const run = h.runs[Math.min(h.index, h.runs.length - 1)];
    if (run === undefined) throw this.#protocol('a result for an empty query');
    return run;
  }

  /** The run a DataRow or CopyData belongs to. */
  rowRun(): Run {
    const h = this.head();
    if (h?.kind === 'query') return this.#currentRun(h);
    if (h?.kind === 'execute') return h.run;
    throw this.#protocol('DataRow');
  }

  /** CommandComplete, EmptyQueryResponse, PortalSuspended: the run is over. */
  endRun(): { run: Run | null; slot: Slot } {
    const h = this.head();
    if (h?.kind === 'query') {
      const run = h.runs[h.index] ?? null;
      h.index++;
      return { run, slot: h };
    }
    if (h?.kind === 'execute') return { run: this.#shift() === h ? h.run : null, slot: h };
    throw this.#protocol('a command completion');
  }

  /**
   * ErrorResponse. In a simple query it ends the running statement (ReadyForQuery
   * follows). In the extended protocol it answers the head slot, and the server skips
   * every message up to Sync: those slots are dropped and returned (their runs never ran).
   */
  error(): { slot: Slot | null; run: Run | null; skipped: Slot[] } {
    const h = this.head();
    if (h === undefined || h.kind === 'sync') return { slot: null, run: null, skipped: [] };
    if (h.kind === 'query') {
      const run = h.runs[h.index] ?? null;
      h.index = h.runs.length;
      return { slot: h, run, skipped: [] };
    }
    const slot = this.#shift();
    const skipped: Slot[] = [];
    while (this.pending > 0 && this.head()!.kind !== 'sync') skipped.push(this.#shift());
    if (this.pending === 0) this.#ignoring = true;
    return { slot, run: slot.kind === 'execute' ? slot.run : null, skipped };
  }

  /** ReadyForQuery: answers a simple query or a Sync. */
  ready(status: 'I' | 'T' | 'E'): Slot {
    const h = this.head();
    if (h?.kind !== 'query' && h?.kind !== 'sync') throw this.#protocol('ReadyForQuery');
    this.txStatus = status;
    return this.#shift();
  }
}

import { createHmac, timingSafeEqual } from 'node:crypto';
import { canonicalJson } from '../core/canonical-json.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import type { AuditRecord, DeadReason, LivenessQuery, Store, StoreTx } from '../store/types.js';
import type { AuditEvent } from './events.js';

/**
 * The audit log: append-only, hash-chained (HMAC under a key derived from the store's
 * index key, so an edit cannot be re-chained without the master key), and durable
 * before anything it describes takes effect.
 *
 * Group commit: appends wait in a queue; at the next turn of the event loop (or after
 * `groupCommitMs`, or as soon as `maxBatch` are
 * waiting) one transaction writes the whole batch, so N concurrent exchanges cost one
 * disk flush. Each `append` resolves only after its batch is committed. An append may
 * carry a mutation that runs in the same transaction (in a savepoint), so a state change
 * and its record commit together or not at all.
 */

/** A record to append: one of the typed events of events.ts (ADR 0017); stored as `{ type, actor, data }`. */
export type AuditDraft = AuditEvent;

/**
 * A state change that commits with its record. It may return further records that
 * belong to the same change (they follow the main record, in the same transaction).
 */
// biome-ignore lint/suspicious/noConfusingVoidType: most mutations are async functions that return nothing
export type AuditMutation = (tx: StoreTx) => Promise<void | readonly AuditDraft[]>;

/**
 * What a release depends on, checked inside the transaction that writes its record
 * (ADR 0013): if any of these ids is dead by then (a revocation committed first), the
 * record is not written and the append is refused with `refuse(dead)`. So no release is
 * recorded after the revocation that forbids it, whatever the caches said.
 */
export interface AuditGuard {
  readonly ids: LivenessQuery;
  refuse(dead: ReadonlyMap<string, DeadReason>): Error;
}

export interface AuditOptions {
  readonly groupCommitMs?: number;
  readonly maxBatch?: number;
}

/** An audit head kept outside the store: the log must reach record `seq` with this hash. */
export interface AuditAnchor {
  readonly seq: number;
  readonly hash: string;
}

export type AuditVerifyResult =
  | { readonly ok: true; readonly records: number; readonly headSeq: number }
  | {
      readonly ok: false;
      readonly records: number;
      readonly seq: number;
      readonly problem: 'edited' | 'removed' | 'chain-broken' | 'truncated' | 'unreadable';
      readonly message: string;
    };

interface Pending {
  readonly draft: AuditDraft;
  readonly mutate: AuditMutation | undefined;
  readonly guard: AuditGuard | undefined;
  readonly resolve: (record: AuditRecord) => void;
  readonly reject: (error: unknown) => void;
}

const HEAD_META_KEY = 'audit_head';

export function chainHash(
  key: Buffer,
  prevHash: string,
  record: Omit<AuditRecord, 'hash' | 'prevHash'>,
): string {
  const body = canonicalJson({
    seq: record.seq,
    ts: record.ts,
    type: record.type,
    actor: record.actor,
    data: record.data,
  });
  return createHmac('sha256', key).update(prevHash).update('\n').update(body).digest('hex');
}

/** Every id the guards of `items` name, for one `deadAmong` query. */
function guardIds(items: readonly Pending[]): LivenessQuery {
  const tickets = new Set<string>();
  const agents = new Set<string>();
  const workflows = new Set<string>();
  const secrets = new Set<string>();
  for (const { guard } of items) {
    if (guard === undefined) continue;
    for (const id of guard.ids.tickets) tickets.add(id);
    for (const id of guard.ids.agents) agents.add(id);
    for (const id of guard.ids.workflows) workflows.add(id);
    for (const id of guard.ids.secrets) secrets.add(id);
  }
  return { tickets: [...tickets], agents: [...agents], workflows: [...workflows], secrets: [...secrets] };
}

/** The dead ids among those one guard names, or null when all are live. */
function deadFor(ids: LivenessQuery, dead: ReadonlyMap<string, DeadReason>): Map<string, DeadReason> | null {
  let out: Map<string, DeadReason> | null = null;
  for (const id of [...ids.tickets, ...ids.agents, ...ids.workflows, ...ids.secrets]) {
    const reason = dead.get(id);
    if (reason === undefined) continue;
    out ??= new Map();
    out.set(id, reason);
  }
  return out;
}

function sameHex(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

export class AuditLog {
  readonly #store: Store;
  readonly #key: Buffer;
  readonly #clock: Clock;
  readonly #groupCommitMs: number;
  readonly #maxBatch: number;
  #queue: Pending[] = [];
  #timer: NodeJS.Timeout | NodeJS.Immediate | null = null;
  #flushing: Promise<void> | null = null;
  #closed = false;
  /** The last failed batch write (health checks and logs read it); cleared by the next success. */
  lastFailure: { readonly at: number; readonly reason: string } | null = null;
  /** Told of every failed batch write (the server logs it; the cause never holds a secret value). */
  onFailure: (error: unknown) => void = () => undefined;

  constructor(store: Store, auditKey: Buffer, clock: Clock, options: AuditOptions = {}) {
    this.#store = store;
    this.#key = auditKey;
    this.#clock = clock;
    this.#groupCommitMs = options.groupCommitMs ?? 0;
    this.#maxBatch = options.maxBatch ?? 512;
  }

  /**
   * Append a record; resolves once it (and `mutate`, if given) is durable. With a `guard`,
   * the record is written only if everything the guard names is still live in the same
   * transaction.
   */
  append(draft: AuditDraft, mutate?: AuditMutation, guard?: AuditGuard): Promise<AuditRecord> {
    if (this.#closed) {
      return Promise.reject(new CoatcheckError('CC_ERR_AUDIT_UNAVAILABLE', 'the audit log is closed'));
    }
    return new Promise<AuditRecord>((resolve, reject) => {
      this.#queue.push({ draft, mutate, guard, resolve, reject });
      this.#schedule();
    });
  }

  #schedule(): void {
    if (this.#flushing !== null) return; // the running flush re-schedules when done
    if (this.#queue.length >= this.#maxBatch) {
      if (this.#timer !== null) this.#clearTimer();
      this.#timer = null;
      this.#startFlush();
      return;
    }
    if (this.#timer === null) {
      const fire = () => {
        this.#timer = null;
        this.#startFlush();
      };
      // 0: flush once the current I/O has been handled. Appends that arrive while a flush
      // is running wait for the next one, so batches still form under load without
      // making a lone request wait for a timer.
      this.#timer = this.#groupCommitMs === 0 ? setImmediate(fire) : setTimeout(fire, this.#groupCommitMs);
    }
  }

  #clearTimer(): void {
    const timer = this.#timer;
    if (timer === null) return;
    if ('hasRef' in timer && typeof (timer as NodeJS.Timeout).refresh === 'function')
      clearTimeout(timer as NodeJS.Timeout);
    else clearImmediate(timer as NodeJS.Immediate);
  }

  #startFlush(): void {
    if (this.#flushing !== null || this.#queue.length === 0) return;
    const batch = this.#queue.splice(0, this.#maxBatch);
    this.#flushing = this.#writeBatch(batch).finally(() => {
      this.#flushing = null;
      if (this.#queue.length > 0) this.#schedule();
    });
  }

  async #writeBatch(batch: Pending[]): Promise<void> {
    const outcomes = new Map<Pending, { record?: AuditRecord; error?: unknown }>();
    try {
      await this.#store.transaction(async (tx) => {
        outcomes.clear();
        const head = await tx.auditHead();
        let seq = head?.seq ?? 0;
        let prevHash = head?.hash ?? '';
        const records: AuditRecord[] = [];
        // Guards are checked together (one query per batch) and again after any mutation
        // earlier in the batch, which may have revoked what a later item depends on.
        let dead: Map<string, DeadReason> | null = null;
        for (const [index, item] of batch.entries()) {
          if (item.guard !== undefined) {
            dead ??= await tx.deadAmong(guardIds(batch.slice(index)), this.#clock.now());
            const mine = deadFor(item.guard.ids, dead);
            if (mine !== null) {
              outcomes.set(item, { error: item.guard.refuse(mine) });
              continue;
            }
          }
          let extra: readonly AuditDraft[] = [];
          if (item.mutate !== undefined) {
            try {
              extra = (await tx.savepoint(() => item.mutate!(tx))) ?? [];
            } catch (error) {
              outcomes.set(item, { error });
              continue;
            }
            dead = null;
          }
          for (const [n, draft] of [item.draft, ...extra].entries()) {
            seq += 1;
            const base = {
              seq,
              ts: this.#clock.now(),
              type: draft.type,
              actor: draft.actor,
              data: draft.data,
            };
            const record: AuditRecord = { ...base, prevHash, hash: chainHash(this.#key, prevHash, base) };
            prevHash = record.hash;
            records.push(record);
            if (n === 0) outcomes.set(item, { record });
          }
        }
        if (records.length > 0) {
          await tx.insertAuditRecords(records);
          await tx.setMeta(HEAD_META_KEY, `${seq}:${prevHash}`);
        }
      });
    } catch (cause) {
      this.lastFailure = { at: this.#clock.now(), reason: (cause as Error)?.name ?? 'Error' };
      try {
        this.onFailure(cause);
      } catch {
        // A failing logger must not keep the waiting operations from being refused.
      }
      const error = new CoatcheckError(
        'CC_ERR_AUDIT_UNAVAILABLE',
        'the audit log could not be written; the operation was refused',
        {
          cause,
        },
      );
      for (const item of batch) item.reject(error);
      return;
    }
    this.lastFailure = null;
    for (const item of batch) {
      const outcome = outcomes.get(item);
      if (outcome?.record !== undefined) item.resolve(outcome.record);
      else
        item.reject(
          outcome?.error ?? new CoatcheckError('CC_ERR_AUDIT_UNAVAILABLE', 'audit record was not written'),
        );
    }
  }

  /** Wait until everything appended so far is durable (or failed). */
  async flush(): Promise<void> {
    while (this.#queue.length > 0 || this.#flushing !== null) {
      if (this.#flushing === null) {
        if (this.#timer !== null) this.#clearTimer();
        this.#timer = null;
        this.#startFlush();
      }
      await this.#flushing;
    }
  }

  async close(): Promise<void> {
    await this.flush();
    this.#closed = true;
  }

  tail(limit: number): Promise<AuditRecord[]> {
    return this.#store.tailAudit(limit);
  }

  async *records(afterSeq = 0, pageSize = 1000): AsyncGenerator<AuditRecord> {
    let after = afterSeq;
    for (;;) {
      const page = await this.#store.readAudit(after, pageSize);
      for (const record of page) yield record;
      if (page.length < pageSize) return;
      after = page[page.length - 1]!.seq;
    }
  }

  /** Walk the whole chain; report the first record that was edited, removed, inserted or reordered. */
  /**
   * Check the chain. With an anchor (a head seq and hash kept outside the store, written
   * by `backup` or `audit anchor`), also prove the log reaches that record unchanged: a
   * copy that lost its last records, or a chain re-built after them, fails.
   */
  async verify(options: { anchor?: AuditAnchor } = {}): Promise<AuditVerifyResult> {
    const result = await this.#verifyChain();
    const anchor = options.anchor;
    if (!result.ok || anchor === undefined) return result;
    if (result.headSeq < anchor.seq) {
      return {
        ok: false,
        records: result.records,
        seq: result.headSeq + 1,
        problem: 'truncated',
        message: `the log ends at record ${result.headSeq} but the anchor says record ${anchor.seq} was written`,
      };
    }
    const [record] = anchor.seq === 0 ? [] : await this.#store.readAudit(anchor.seq - 1, 1);
    if (anchor.seq > 0 && (record === undefined || !sameHex(record.hash, anchor.hash))) {
      return {
        ok: false,
        records: result.records,
        seq: anchor.seq,
        problem: 'chain-broken',
        message: `record ${anchor.seq} is not the record the anchor names (the log was replaced or re-chained)`,
      };
    }
    return result;
  }

  /** The current head, to keep outside the store as an anchor. */
  async anchor(): Promise<AuditAnchor> {
    await this.flush();
    const head = await this.#store.auditHead();
    return { seq: head?.seq ?? 0, hash: head?.hash ?? '' };
  }

  async #verifyChain(): Promise<AuditVerifyResult> {
    let expectedSeq = 1;
    let prevHash = '';
    let count = 0;
    try {
      for await (const record of this.records()) {
        count++;
        if (record.seq !== expectedSeq) {
          return {
            ok: false,
            records: count,
            seq: expectedSeq,
            problem: 'removed',
            message: `record ${expectedSeq}${record.seq - 1 > expectedSeq ? `..${record.seq - 1}` : ''} is missing (next present is ${record.seq})`,
          };
        }
        const recomputed = chainHash(this.#key, record.prevHash, record);
        if (!sameHex(recomputed, record.hash)) {
          return {
            ok: false,
            records: count,
            seq: record.seq,
            problem: 'edited',
            message: `record ${record.seq} was edited (its hash does not match its content)`,
          };
        }
        if (!sameHex(record.prevHash, prevHash)) {
          return {
            ok: false,
            records: count,
            seq: record.seq,
            problem: 'chain-broken',
            message: `record ${record.seq} does not follow record ${record.seq - 1} (records were removed, inserted or reordered)`,
          };
        }
        prevHash = record.hash;
        expectedSeq++;
      }
    } catch (error) {
      const seq = expectedSeq;
      return {
        ok: false,
        records: count,
        seq,
        problem: 'unreadable',
        message: `record ${seq} cannot be read (${(error as { code?: string }).code ?? 'damaged'})`,
      };
    }
    const head = await this.#store.getMeta(HEAD_META_KEY);
    if (head !== null) {
      const [headSeqText, headHash] = head.split(':');
      const headSeq = Number(headSeqText);
      if (
        headSeq > expectedSeq - 1 ||
        (headSeq === expectedSeq - 1 && headHash !== undefined && !sameHex(headHash, prevHash))
      ) {
        return {
          ok: false,
          records: count,
          seq: expectedSeq,
          problem: 'truncated',
          message: `the log ends at record ${expectedSeq - 1} but record ${headSeq} was committed (records were removed from the end)`,
        };
      }
    }
    return { ok: true, records: count, headSeq: expectedSeq - 1 };
  }
}

import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { canonicalJson } from '../core/canonical-json.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import type { AuditRecord, DeadReason, LivenessQuery, Store, StoreOps, StoreTx } from '../store/types.js';
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
 *
 * Chains (ADR 0015): on PostgreSQL each AuditLog (each replica process) appends to a chain
 * of its own, without the database-wide lock: it alone writes that chain, so its order is
 * the order of its own batches. The main chain (the only one on SQLite) takes the lock and
 * holds the records of read-modify-write changes, the opening of every replica chain and
 * checkpoints that name every chain's head. `verify` checks every chain and that together
 * they hold every record.
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
  /**
   * How long a batch waits for more appends. 0 (the default): the next turn of the event
   * loop, or SATURATED_WINDOW_MS while the loop is saturated (see `loopUtilization`).
   */
  readonly groupCommitMs?: number;
  /**
   * The share of recent time the event loop was busy, 0-1 (default: measured with
   * `performance.eventLoopUtilization` over windows of about 100 ms). For tests.
   */
  readonly loopUtilization?: () => number;
  readonly maxBatch?: number;
  /**
   * Append to a chain of this log's own, without the global lock, when a batch allows it
   * (default: on PostgreSQL). Off: every record goes to the main chain.
   */
  readonly ownChain?: boolean;
  /** How often a replica chain that advanced is named in a main-chain checkpoint (default 5 s; 0: never). */
  readonly checkpointMs?: number;
}

/**
 * Options of one append. `rowLocked`: the mutation is safe without the global lock (it
 * locks the rows it reads and changes, as taking a ticket's uses does), so the record may go
 * to this replica's own chain. Other mutations run under the global lock, on the main chain.
 */
export interface AppendOptions {
  readonly rowLocked?: boolean;
}

/** An audit head kept outside the store: the log must reach record `seq` with this hash. */
export interface AuditAnchor {
  readonly seq: number;
  readonly hash: string;
}

type VerifyProblem = 'edited' | 'removed' | 'chain-broken' | 'truncated' | 'unreadable';
const VERIFY_PAGE = 1000;

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
  readonly rowLocked: boolean;
  readonly resolve: (record: AuditRecord) => void;
  readonly reject: (error: unknown) => void;
}

const HEAD_META_KEY = 'audit_head';
/** The main chain's id. */
const MAIN = '';
/** Main-chain record that opens a replica chain; the chain's first record follows it. */
export const CHAIN_OPENED = 'audit.chain.opened' as const;
/** Main-chain record naming the heads of replica chains (`data.chains`). */
export const CHECKPOINT = 'audit.checkpoint' as const;
/** PostgreSQL deadlock / serialization failure: the batch is retried (nothing was committed). */
const RETRYABLE = new Set(['40P01', '40001']);
const ATTEMPTS = 3;
/**
 * With `groupCommitMs` 0, a batch normally starts at the next turn of the event loop, so a
 * lone request never waits for a timer. Past this share of the loop busy (a saturated
 * gateway), it waits SATURATED_WINDOW_MS instead: batches carry more appends, and every
 * per-batch cost (BEGIN, COMMIT, the flush, the chain head) is shared by more requests. At
 * saturation a request's latency is its queueing, which the saved CPU shortens (measured,
 * ADR 0036: a fixed 2 ms window -9 to -19% CPU a request on SQLite; this gated one as
 * shipped 568 -> 510 µs, p50 no worse). Below it (one request at a time, half of peak
 * load) nothing changes.
 */
const SATURATED_UTILIZATION = 0.8;
const SATURATED_WINDOW_MS = 2;
/** The loop's utilization is measured over windows at least this long. */
const UTILIZATION_WINDOW_MS = 100;

/** The event loop's utilization over the last complete window of UTILIZATION_WINDOW_MS or more. */
function recentLoopUtilization(): () => number {
  let last = performance.eventLoopUtilization();
  let at = performance.now();
  let value = 0;
  return () => {
    const now = performance.now();
    if (now - at >= UTILIZATION_WINDOW_MS) {
      const current = performance.eventLoopUtilization();
      value = performance.eventLoopUtilization(current, last).utilization;
      last = current;
      at = now;
    }
    return value;
  };
}

/** How long a batch seals records before it inserts them and lets the event loop run (see #writeIn). */
const SEAL_SLICE_MS = 0.5;

export function chainHash(
  key: Buffer,
  prevHash: string,
  record: Omit<AuditRecord, 'hash' | 'prevHash'>,
): string {
  const chain = record.chain ?? MAIN;
  const chainSeq = record.chainSeq ?? record.seq;
  // Main-chain records at their own position hash as before chains existed; every other
  // record also binds its chain, its place in it and its place in the whole log.
  const body =
    chain === MAIN && chainSeq === record.seq
      ? canonicalJson({
          seq: record.seq,
          ts: record.ts,
          type: record.type,
          actor: record.actor,
          data: record.data,
        })
      : canonicalJson({
          seq: record.seq,
          chain,
          chainSeq,
          ts: record.ts,
          type: record.type,
          actor: record.actor,
          data: record.data,
        });
  return createHmac('sha256', key).update(prevHash).update('\n').update(body).digest('hex');
}

function chainOf(record: AuditRecord): string {
  return record.chain ?? MAIN;
}
function chainSeqOf(record: AuditRecord): number {
  return record.chainSeq ?? record.seq;
}
/** How a record is named in a report: `12` on the main chain, `12 (chain r_…, #3)` elsewhere. */
function nameOf(chain: string, chainSeq: number, seq?: number): string {
  if (chain === MAIN && (seq === undefined || seq === chainSeq)) return String(chainSeq);
  return `${seq ?? '?'} (chain ${chain === MAIN ? 'main' : chain}, #${chainSeq})`;
}

interface OwnChain {
  readonly id: string;
  chainSeq: number;
  hash: string;
  /** chainSeq last named in a checkpoint. */
  checkpointed: number;
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
  readonly #loopUtilization: () => number;
  readonly #maxBatch: number;
  readonly #ownChain: boolean;
  readonly #checkpointMs: number;
  /** This log's own chain, opened on first use; null again after a failed write to it. */
  #chain: OwnChain | null = null;
  #checkpointTimer: NodeJS.Timeout | null = null;
  #queue: Pending[] = [];
  #timer: NodeJS.Timeout | NodeJS.Immediate | null = null;
  #flushing: Promise<void> | null = null;
  #closed = false;
  /** The last failed batch write (health checks and logs read it); cleared by the next success. */
  lastFailure: { readonly at: number; readonly reason: string } | null = null;
  /** Told of every failed batch write (the server logs it; the cause never holds a secret value). */
  onFailure: (error: unknown) => void = () => undefined;
  /** Checkpoints that failed to be written (each leaves a chain's tail unanchored until the next). */
  checkpointFailures = 0;
  /** Batches committed, and the operations they carried (records / batches: the group-commit size). */
  batchesCommitted = 0;
  operationsCommitted = 0;
  /** Told of every failed checkpoint (the server logs it and counts it in its metrics). */
  onCheckpointFailure: (error: unknown) => void = () => undefined;

  constructor(store: Store, auditKey: Buffer, clock: Clock, options: AuditOptions = {}) {
    this.#store = store;
    this.#key = auditKey;
    this.#clock = clock;
    this.#groupCommitMs = options.groupCommitMs ?? 0;
    this.#loopUtilization = options.loopUtilization ?? recentLoopUtilization();
    this.#maxBatch = options.maxBatch ?? 512;
    this.#ownChain = options.ownChain ?? store.driver === 'postgres';
    this.#checkpointMs = options.checkpointMs ?? 5000;
  }

  /**
   * Append a record; resolves once it (and `mutate`, if given) is durable. With a `guard`,
   * the record is written only if everything the guard names is still live in the same
   * transaction.
   */
  append(
    draft: AuditDraft,
    mutate?: AuditMutation,
    guard?: AuditGuard,
    options: AppendOptions = {},
  ): Promise<AuditRecord> {
    if (this.#closed) {
      return Promise.reject(new CoatcheckError('CC_ERR_AUDIT_UNAVAILABLE', 'the audit log is closed'));
    }
    return new Promise<AuditRecord>((resolve, reject) => {
      this.#queue.push({ draft, mutate, guard, rowLocked: options.rowLocked === true, resolve, reject });
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
      // making a lone request wait for a timer; a saturated loop waits a little longer.
      const wait =
        this.#groupCommitMs > 0
          ? this.#groupCommitMs
          : this.#loopUtilization() >= SATURATED_UTILIZATION
            ? SATURATED_WINDOW_MS
            : 0;
      this.#timer = wait === 0 ? setImmediate(fire) : setTimeout(fire, wait);
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
    // A mutation that is not row-locked needs the global lock, and so the main chain.
    const main = !this.#ownChain || batch.some((item) => item.mutate !== undefined && !item.rowLocked);
    const outcomes = new Map<Pending, { record?: AuditRecord; error?: unknown }>();
    try {
      const chain = main ? null : await this.#openChain();
      for (let attempt = 1; ; attempt++) {
        try {
          const head = await this.#store.transaction((tx) => this.#writeIn(tx, batch, chain, outcomes), {
            lock: main ? 'global' : 'rows',
          });
          if (chain !== null) {
            chain.chainSeq = head.chainSeq;
            chain.hash = head.hash;
          }
          break;
        } catch (error) {
          // A deadlock with a revocation (rows locked in another order): PostgreSQL rolled
          // this attempt back, so it is safe to run the whole batch again.
          const code = String((error as { code?: unknown } | null)?.code ?? '');
          if (attempt >= ATTEMPTS || !RETRYABLE.has(code)) throw error;
        }
      }
    } catch (cause) {
      // Whether a failed write to our own chain committed may be unknown (a lost COMMIT):
      // continue in a new chain rather than guess its head.
      if (!main) this.#chain = null;
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
    this.batchesCommitted += 1;
    this.operationsCommitted += batch.length;
    for (const item of batch) {
      const outcome = outcomes.get(item);
      if (outcome?.record !== undefined) item.resolve(outcome.record);
      else
        item.reject(
          outcome?.error ?? new CoatcheckError('CC_ERR_AUDIT_UNAVAILABLE', 'audit record was not written'),
        );
    }
  }

  /** One batch in one transaction, on the main chain (`chain` null) or on our own. */
  async #writeIn(
    tx: StoreTx,
    batch: readonly Pending[],
    chain: OwnChain | null,
    outcomes: Map<Pending, { record?: AuditRecord; error?: unknown }>,
  ): Promise<{ chainSeq: number; hash: string }> {
    outcomes.clear();
    let chainSeq: number;
    let prevHash: string;
    if (chain === null) {
      const head = await tx.auditChainHead(MAIN);
      chainSeq = head?.chainSeq ?? 0;
      prevHash = head?.hash ?? '';
    } else {
      chainSeq = chain.chainSeq;
      prevHash = chain.hash;
    }
    const drafts: Array<{ readonly item: Pending; readonly draft: AuditDraft; readonly first: boolean }> = [];
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
      for (const [n, draft] of [item.draft, ...extra].entries()) drafts.push({ item, draft, first: n === 0 });
    }
    if (drafts.length === 0) return { chainSeq, hash: prevHash };
    // Places in the whole log are taken only now, after every guard and mutation: a record
    // that waited for a revocation's row lock gets a later seq than the revocation's record.
    const seqs = await tx.allocateAuditSeqs(drafts.length);
    const chainId = chain?.id ?? MAIN;
    // Sealed and inserted in slices, the event loop served between them: a batch of large
    // records (a busy PostgreSQL session's statements, 64 to a record, ~0.1 ms to seal and
    // as long to insert) held the loop for milliseconds at once, stalling every connection.
    // A slice is inserted once sealing it took SEAL_SLICE_MS (inserting takes about as
    // long): a batch of small records (an HTTP exchange's) is rarely cut, since each pause
    // also delays the batch's own callers. The transaction stays open across the pauses:
    // the store's other operations wait for it (they take its lock), and the batch commits
    // whole or not at all, as before.
    let slice: AuditRecord[] = [];
    let sliceStart = performance.now();
    for (const [i, { item, draft, first }] of drafts.entries()) {
      chainSeq += 1;
      const record = this.#seal(seqs[i]!, chainId, chainSeq, prevHash, draft);
      prevHash = record.hash;
      slice.push(record);
      if (first) outcomes.set(item, { record });
      if (i < drafts.length - 1 && performance.now() - sliceStart >= SEAL_SLICE_MS) {
        await tx.insertAuditRecords(slice);
        slice = [];
        await new Promise<void>((resolve) => setImmediate(resolve));
        sliceStart = performance.now();
      }
    }
    await tx.insertAuditRecords(slice);
    if (chain === null) await tx.setMeta(HEAD_META_KEY, `${chainSeq}:${prevHash}`);
    else await tx.setAuditChainHead({ chain: chain.id, chainSeq, hash: prevHash });
    return { chainSeq, hash: prevHash };
  }

  #seal(seq: number, chain: string, chainSeq: number, prevHash: string, draft: AuditDraft): AuditRecord {
    const base = {
      seq,
      ...(chain === MAIN && chainSeq === seq ? {} : { chain, chainSeq }),
      ts: this.#clock.now(),
      type: draft.type,
      actor: draft.actor,
      data: draft.data,
    };
    return { ...base, prevHash, hash: chainHash(this.#key, prevHash, base) };
  }

  /** Append one record to the main chain inside `tx` (which holds the global lock). */
  async #appendMain(tx: StoreTx, draft: AuditDraft): Promise<AuditRecord> {
    const head = await tx.auditChainHead(MAIN);
    const chainSeq = (head?.chainSeq ?? 0) + 1;
    const [seq] = await tx.allocateAuditSeqs(1);
    const record = this.#seal(seq!, MAIN, chainSeq, head?.hash ?? '', draft);
    await tx.insertAuditRecords([record]);
    await tx.setMeta(HEAD_META_KEY, `${chainSeq}:${record.hash}`);
    return record;
  }

  /** Our own chain, opened (by a main-chain record its first record follows) on first use. */
  async #openChain(): Promise<OwnChain> {
    if (this.#chain !== null) return this.#chain;
    const id = `r_${randomBytes(8).toString('hex')}`;
    const opened = await this.#store.transaction(async (tx) => {
      const record = await this.#appendMain(tx, {
        type: CHAIN_OPENED,
        actor: 'system:audit',
        data: { chain: id },
      });
      await tx.setAuditChainHead({ chain: id, chainSeq: 0, hash: record.hash });
      return record;
    });
    this.#chain = { id, chainSeq: 0, hash: opened.hash, checkpointed: 0 };
    if (this.#checkpointMs > 0 && this.#checkpointTimer === null) {
      this.#checkpointTimer = setInterval(() => {
        const chain = this.#chain;
        if (chain === null || chain.chainSeq <= chain.checkpointed) return;
        // The next tick tries again; until then the chain's tail is not named on the main chain.
        this.#checkpoint().catch((error: unknown) => this.#checkpointFailed(error));
      }, this.#checkpointMs);
      this.#checkpointTimer.unref();
    }
    return this.#chain;
  }

  /**
   * A main-chain record naming the committed head of every replica chain: it orders them
   * against the main chain and lets `verify` notice records cut from a chain's end.
   */
  #checkpoint(): Promise<AuditRecord> {
    return this.#store.transaction(async (tx) => {
      const heads = await tx.auditChainHeads();
      const chains: Record<string, { chainSeq: number; hash: string }> = {};
      for (const head of heads) chains[head.chain] = { chainSeq: head.chainSeq, hash: head.hash };
      const record = await this.#appendMain(tx, {
        type: CHECKPOINT,
        actor: 'system:audit',
        data: { chains },
      });
      const own = this.#chain;
      const named = own === null ? undefined : chains[own.id];
      if (own !== null && named !== undefined) own.checkpointed = Math.max(own.checkpointed, named.chainSeq);
      return record;
    });
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
    if (this.#checkpointTimer !== null) clearInterval(this.#checkpointTimer);
    this.#checkpointTimer = null;
    // A replica that stops cleanly leaves its chain's last head on the main chain.
    const chain = this.#chain;
    if (chain !== null && chain.chainSeq > chain.checkpointed)
      await this.#checkpoint().catch((error: unknown) => this.#checkpointFailed(error));
  }

  /** A checkpoint that could not be written: counted and reported (never thrown: no operation waits on it). */
  #checkpointFailed(error: unknown): void {
    this.checkpointFailures += 1;
    try {
      this.onCheckpointFailure(error);
    } catch {
      // A failing logger must not turn a missed checkpoint into an unhandled rejection.
    }
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

  /**
   * Check every chain. With an anchor (a head seq and hash kept outside the store, written
   * by `backup` or `audit anchor`), also prove the log reaches that record unchanged: a
   * copy that lost its last records, or a chain re-built after them, fails.
   */
  async verify(options: { anchor?: AuditAnchor } = {}): Promise<AuditVerifyResult> {
    const result = await this.#store.readSnapshot((db) => this.#verifyIn(db));
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

  /**
   * The current head, to keep outside the store as an anchor. With replica chains, a
   * checkpoint naming every chain's head is written first and is the anchor: verifying
   * against it proves every chain complete up to the heads it names.
   */
  async anchor(): Promise<AuditAnchor> {
    await this.flush();
    if (this.#ownChain) {
      const record = await this.#checkpoint();
      return { seq: record.seq, hash: record.hash };
    }
    const head = await this.#store.auditHead();
    return { seq: head?.seq ?? 0, hash: head?.hash ?? '' };
  }

  async #verifyIn(db: StoreOps): Promise<AuditVerifyResult> {
    let count = 0;
    let headSeq = 0;
    type Failure = Extract<AuditVerifyResult, { ok: false }>;
    const fail = (seq: number, problem: VerifyProblem, message: string): Failure => ({
      ok: false,
      records: count,
      seq,
      problem,
      message,
    });
    /** Walk one chain in chain order from `origin`; `check` adds per-record checks. */
    const walk = async (
      chain: string,
      origin: { readonly prevHash: string; readonly seq: number },
      check: (record: AuditRecord, chainSeq: number, name: string) => Failure | null,
    ): Promise<Failure | { ok: true; chainSeq: number; hash: string }> => {
      let expected = 1;
      let prevHash = origin.prevHash;
      let lastSeq = origin.seq;
      let prevName = '';
      try {
        for (let after = 0; ; ) {
          const page = await db.readAuditChain(chain, after, VERIFY_PAGE);
          for (const record of page) {
            count++;
            const chainSeq = chainSeqOf(record);
            const name = nameOf(chain, chainSeq, record.seq);
            if (chainOf(record) !== chain) {
              return fail(record.seq, 'chain-broken', `record ${name} is not in the chain it was read from`);
            }
            if (chainSeq !== expected) {
              const legacy = chain === MAIN && chainSeq === record.seq;
              return fail(
                legacy ? expected : record.seq,
                'removed',
                `record ${nameOf(chain, expected)}${chainSeq - 1 > expected ? `..${chainSeq - 1}` : ''} is missing (next present is ${name})`,
              );
            }
            if (!sameHex(chainHash(this.#key, record.prevHash, record), record.hash)) {
              return fail(
                record.seq,
                'edited',
                `record ${name} was edited (its hash does not match its content)`,
              );
            }
            if (!sameHex(record.prevHash, prevHash) || record.seq <= lastSeq) {
              return fail(
                record.seq,
                'chain-broken',
                `record ${name} does not follow record ${prevName || (chain === MAIN ? String(record.seq - 1) : 'that opened its chain')} (records were removed, inserted or reordered)`,
              );
            }
            const problem = check(record, chainSeq, name);
            if (problem !== null) return problem;
            prevHash = record.hash;
            lastSeq = record.seq;
            prevName = name;
            if (record.seq > headSeq) headSeq = record.seq;
            expected++;
          }
          if (page.length < VERIFY_PAGE) break;
          after = chainSeqOf(page[page.length - 1]!);
        }
      } catch (error) {
        return fail(
          chain === MAIN ? expected : lastSeq + 1,
          'unreadable',
          `record ${nameOf(chain, expected)} cannot be read (${(error as { code?: string }).code ?? 'damaged'})`,
        );
      }
      return { ok: true, chainSeq: expected - 1, hash: prevHash };
    };

    // The main chain: every replica chain's opening, and the checkpoints naming their heads.
    const opened = new Map<string, { readonly seq: number; readonly hash: string }>();
    const named = new Map<
      string,
      { readonly chainSeq: number; readonly hash: string; readonly seq: number }
    >();
    const main = await walk(MAIN, { prevHash: '', seq: 0 }, (record, _chainSeq, name) => {
      if (record.type === CHAIN_OPENED) {
        const id = record.data.chain;
        if (typeof id !== 'string' || id === MAIN || opened.has(id)) {
          return fail(
            record.seq,
            'chain-broken',
            `record ${name} opens a chain that is invalid or already open`,
          );
        }
        opened.set(id, { seq: record.seq, hash: record.hash });
      } else if (record.type === CHECKPOINT) {
        const chains = record.data.chains;
        if (typeof chains !== 'object' || chains === null) {
          return fail(record.seq, 'chain-broken', `checkpoint ${name} names no chains`);
        }
        for (const [id, head] of Object.entries(chains as Record<string, unknown>)) {
          const h = head as { chainSeq?: unknown; hash?: unknown } | null;
          if (!opened.has(id) || typeof h?.chainSeq !== 'number' || typeof h.hash !== 'string') {
            return fail(record.seq, 'chain-broken', `checkpoint ${name} names chain ${id} wrongly`);
          }
          const before = named.get(id);
          if (before !== undefined && before.chainSeq > h.chainSeq) {
            return fail(record.seq, 'chain-broken', `checkpoint ${name} names an older head of chain ${id}`);
          }
          named.set(id, { chainSeq: h.chainSeq, hash: h.hash, seq: record.seq });
        }
      }
      return null;
    });
    if (!main.ok) return main;
    const head = await db.getMeta(HEAD_META_KEY);
    if (head !== null) {
      const [headSeqText, headHash] = head.split(':');
      const metaSeq = Number(headSeqText);
      if (
        metaSeq > main.chainSeq ||
        (metaSeq === main.chainSeq && headHash !== undefined && !sameHex(headHash, main.hash))
      ) {
        return fail(
          main.chainSeq + 1,
          'truncated',
          `the log ends at record ${main.chainSeq} but record ${metaSeq} was committed (records were removed from the end)`,
        );
      }
    }

    // Every replica chain: opened on the main chain, intact, reaching the head the last
    // checkpoint names and the head its own commits recorded.
    const heads = new Map((await db.auditChainHeads()).map((h) => [h.chain, h]));
    for (const id of [...new Set([...opened.keys(), ...heads.keys()])].sort()) {
      const origin = opened.get(id);
      if (origin === undefined) {
        const [first] = await db.readAuditChain(id, 0, 1);
        return fail(first?.seq ?? 0, 'chain-broken', `chain ${id} was never opened (records were inserted)`);
      }
      const wanted = named.get(id);
      const walked = await walk(id, { prevHash: origin.hash, seq: origin.seq }, (record, chainSeq, name) => {
        if (wanted === undefined || chainSeq !== wanted.chainSeq) return null;
        if (!sameHex(record.hash, wanted.hash) || record.seq > wanted.seq) {
          return fail(
            record.seq,
            'chain-broken',
            `record ${name} is not the record checkpoint ${wanted.seq} names (the chain was replaced or re-chained)`,
          );
        }
        return null;
      });
      if (!walked.ok) return walked;
      const committed = heads.get(id);
      if (
        (wanted !== undefined && walked.chainSeq < wanted.chainSeq) ||
        committed === undefined ||
        committed.chainSeq > walked.chainSeq ||
        (committed.chainSeq === walked.chainSeq && !sameHex(committed.hash, walked.hash))
      ) {
        return fail(
          headSeq + 1,
          'truncated',
          `chain ${id} ends at #${walked.chainSeq} but more was committed to it (records were removed from its end)`,
        );
      }
    }

    // Nothing outside the chains: an inserted record in no opened chain is caught here.
    const total = await db.countAudit();
    if (total !== count) {
      return fail(
        headSeq + 1,
        'chain-broken',
        `${total - count} record(s) belong to no chain the main chain opened (records were inserted)`,
      );
    }
    return { ok: true, records: count, headSeq };
  }
}

import { createHash } from 'node:crypto';
import type { AuditLog } from '../audit/audit-log.js';
import { canonicalJson } from '../core/canonical-json.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { Principal } from '../core/principal.js';
import type { ApprovalRecord, Store } from '../store/types.js';
import { PREVIEW_CUT_MARK, type PreviewScrubber, type PreviewSource, shortPreview } from './preview.js';

/**
 * Just-in-time approval of one exact operation.
 *
 *   pending ──approve (quorum reached)──► approved ──use──► used        (single-use)
 *      │                                     └── valid until expiresAt  (time-boxed: --for)
 *      ├──deny──► denied
 *      └──pendingTtl passes──► expired
 *
 * An approval is bound to the operation's fingerprint (the requester, the connection,
 * the action, and the exact statement or request), so it cannot be replayed for another
 * operation; it cannot be given by its requester; it can require N approvers from named
 * groups. Summaries shown to approvers name ticket ids, never tickets or secrets.
 */

export interface Operation {
  readonly kind: 'http' | 'sql' | 'mcp' | 'ssh' | 'other';
  readonly connection: string;
  /** The policy action (`sql:write`, `http:POST`). */
  readonly action: string;
  /** One line for a human: `DELETE FROM orders WHERE id = 7`, `POST /repos/x/issues`. Secret-free. */
  readonly summary: string;
  /** The exact operation: statement text, method, path, body hash… Part of the fingerprint. */
  readonly detail: Readonly<Record<string, string | number | null>>;
  /**
   * The exact operation as an approver reads it (raw: tickets and secrets still in it),
   * built only when an approval is requested, then cleaned and bounded (src/approvals/
   * preview.ts) and kept in the approval's `preview` column. Display only: never part of
   * the fingerprint, never stored uncleaned.
   */
  readonly preview?: PreviewSource;
}

export interface Approver {
  readonly ref: string;
  readonly name: string;
  readonly groups: readonly string[];
}

export interface ApprovalView {
  readonly id: string;
  readonly status: ApprovalRecord['status'];
  readonly requester: string;
  readonly requesterName: string;
  readonly operation: Operation;
  /**
   * The cleaned preview of the exact operation (tickets as `[ticket tkt_…]`, secrets as
   * `[secret:…]` or `[REDACTED:…]`), at most 64 KiB; null when none was built. Lists carry
   * its first characters only (`previewTruncated`); `get` carries all that is stored.
   */
  readonly preview: string | null;
  /** The preview shown is shorter than the stored one (a list), or the stored one was cut at 64 KiB. */
  readonly previewTruncated: boolean;
  readonly approvers: readonly string[];
  readonly quorum: number;
  readonly decisions: ReadonlyArray<{
    by: string;
    name: string;
    decision: 'approve' | 'deny';
    at: string;
    reason: string | null;
  }>;
  readonly singleUse: boolean;
  readonly createdAt: string;
  readonly expiresAt: string;
}

export interface ApprovalsOptions {
  /** How long a request waits for a decision before it expires. */
  readonly pendingTtlMs: number;
  /** How long a single-use approval stays usable (the held operation, or its retry). */
  readonly useWindowMs: number;
  /** Told about every new request (the webhook); failures are the notifier's to report. */
  readonly notify?: (approval: ApprovalView) => Promise<void>;
  /** How often a held operation re-reads its request when no change event came (default 1 s). */
  readonly pollMs?: number;
  /** Cleans an operation's preview before it is stored; without one no preview is kept. */
  readonly scrubPreview?: PreviewScrubber;
}

type Data = {
  requesterName: string;
  operation: Operation;
  approvers: string[];
  quorum: number;
  decisions: ApprovalView['decisions'][number][];
  singleUse: boolean;
};

export function operationFingerprint(requester: string, operation: Operation): string {
  const body = canonicalJson({
    requester,
    kind: operation.kind,
    connection: operation.connection,
    action: operation.action,
    detail: operation.detail,
  });
  return createHash('sha256').update(body).digest('hex');
}

function notPending(id: string, status: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_APPROVAL_NOT_PENDING', `approval ${id} is ${status}`, {
    details: { approval: id, status },
  });
}

export class Approvals {
  readonly #store: Store;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #options: ApprovalsOptions;
  /**
   * Held operations waiting for a decision, by request id. One store subscription serves
   * them all (taken while any waits), so the number of listeners on the change feed does
   * not grow with the number of holds or with how long they last.
   */
  readonly #waiters = new Map<string, Set<() => void>>();
  #unsubscribe: (() => void) | null = null;

  constructor(store: Store, audit: AuditLog, clock: Clock, options: ApprovalsOptions) {
    this.#store = store;
    this.#audit = audit;
    this.#clock = clock;
    this.#options = options;
  }

  #view(record: ApprovalRecord, short = false): ApprovalView {
    const data = record.data as unknown as Data;
    const expired = record.status === 'pending' && record.expiresAt <= this.#clock.now();
    const stored = record.preview ?? null;
    const shown = stored === null || !short ? null : shortPreview(stored);
    return {
      id: record.id,
      status: expired ? 'expired' : record.status,
      requester: record.requester,
      requesterName: data.requesterName,
      operation: data.operation,
      preview: shown?.text ?? stored,
      previewTruncated: (shown?.truncated ?? false) || stored?.endsWith(PREVIEW_CUT_MARK) === true,
      approvers: data.approvers,
      quorum: data.quorum,
      decisions: data.decisions,
      singleUse: data.singleUse,
      createdAt: new Date(record.createdAt).toISOString(),
      expiresAt: new Date(record.expiresAt).toISOString(),
    };
  }

  async get(id: string): Promise<ApprovalView> {
    const record = await this.#store.getApproval(id);
    if (record === null)
      throw new CoatcheckError('CC_ERR_NOT_FOUND', `no approval ${id}`, { details: { approval: id } });
    return this.#view(record);
  }

  async list(status?: ApprovalRecord['status']): Promise<ApprovalView[]> {
    // Expired requests are still stored as pending until touched; show them as they are.
    const records = await this.#store.listApprovals({
      status: status === 'expired' ? 'pending' : status,
      limit: 200,
    });
    return records.map((r) => this.#view(r, true)).filter((v) => status === undefined || v.status === status);
  }

  /**
   * A usable approval for exactly this operation by this requester, if any: approved and
   * within its validity. Single-use approvals are consumed here (compare-and-set, so two
   * concurrent uses cannot both pass).
   */
  async use(principal: Principal, operation: Operation): Promise<ApprovalView | null> {
    const fingerprint = operationFingerprint(principal.ref, operation);
    const now = this.#clock.now();
    for (const record of await this.#store.findApprovals(fingerprint, principal.ref)) {
      if (record.status !== 'approved' || record.expiresAt <= now) continue;
      const data = record.data as unknown as Data;
      if (data.singleUse) {
        const used: ApprovalRecord = { ...record, status: 'used' };
        // The spend and its record commit together. Only a lost race (another use won the
        // compare-and-set) moves on to the next candidate; any other failure — the record
        // could not be written, the store is down — rolls the spend back and grants nothing.
        try {
          await this.#audit.append(
            {
              type: 'approval.use',
              actor: principal.ref,
              data: { approval: record.id, connection: data.operation.connection },
            },
            async (tx) => {
              if (!(await tx.updateApproval(used, 'approved'))) throw notPending(record.id, 'used');
            },
          );
        } catch (error) {
          if (error instanceof CoatcheckError && error.code === 'CC_ERR_APPROVAL_NOT_PENDING') continue;
          throw error;
        }
        await this.#store.publish({ type: 'approval.changed', id: record.id });
        return this.#view(used);
      }
      await this.#audit.append({
        type: 'approval.use',
        actor: principal.ref,
        data: { approval: record.id, connection: data.operation.connection },
      });
      return this.#view(record);
    }
    return null;
  }

  /** Ask for approval of `operation`; a pending request for the same operation is reused. */
  async request(
    principal: Principal,
    operation: Operation,
    policy: { approvers: readonly string[]; quorum: number },
  ): Promise<ApprovalView> {
    const fingerprint = operationFingerprint(principal.ref, operation);
    const now = this.#clock.now();
    const existing = (await this.#store.findApprovals(fingerprint, principal.ref)).find(
      (r) => r.status === 'pending' && r.expiresAt > now,
    );
    if (existing !== undefined) return this.#view(existing);
    // The preview is kept beside the operation, never in it (nor in its fingerprint).
    const { preview: source, ...bound } = operation;
    const data: Data = {
      requesterName: principal.name,
      operation: bound,
      approvers: [...policy.approvers],
      quorum: Math.max(1, policy.quorum),
      decisions: [],
      singleUse: true,
    };
    const record: ApprovalRecord = {
      id: newId('apr'),
      fingerprint,
      requester: principal.ref,
      status: 'pending',
      createdAt: now,
      expiresAt: now + this.#options.pendingTtlMs,
      data: data as unknown as Record<string, unknown>,
      preview: await this.#preview(source),
    };
    await this.#audit.append(
      {
        type: 'approval.request',
        actor: principal.ref,
        data: {
          approval: record.id,
          connection: operation.connection,
          action: operation.action,
          summary: operation.summary,
          approvers: data.approvers,
          quorum: data.quorum,
        },
      },
      (tx) => tx.insertApproval(record),
    );
    const view = this.#view(record);
    await this.#options.notify?.(view).catch(() => undefined);
    return view;
  }

  /** The cleaned preview; a failure to build or clean one keeps no text (never the raw one). */
  async #preview(source: PreviewSource | undefined): Promise<string | null> {
    const scrub = this.#options.scrubPreview;
    if (source === undefined || scrub === undefined) return null;
    try {
      return await scrub(source());
    } catch {
      return '[preview unavailable: it could not be cleaned]';
    }
  }

  async decide(
    id: string,
    input: { approver: Approver; decision: 'approve' | 'deny'; forMs?: number; reason?: string },
    actor: string,
  ): Promise<ApprovalView> {
    const record = await this.#store.getApproval(id);
    if (record === null)
      throw new CoatcheckError('CC_ERR_NOT_FOUND', `no approval ${id}`, { details: { approval: id } });
    const now = this.#clock.now();
    if (record.status !== 'pending') throw notPending(id, record.status);
    if (record.expiresAt <= now) throw notPending(id, 'expired');
    const data = record.data as unknown as Data;
    if (input.approver.ref === record.requester) {
      throw new CoatcheckError(
        'CC_ERR_APPROVAL_SELF',
        `approval ${id} was requested by ${input.approver.name}, who cannot approve it`,
        {
          details: { approval: id },
        },
      );
    }
    if (input.decision === 'approve') {
      if (data.approvers.length > 0 && !input.approver.groups.some((g) => data.approvers.includes(g))) {
        throw new CoatcheckError(
          'CC_ERR_APPROVAL_NOT_APPROVER',
          `approval ${id} needs an approver from ${data.approvers.join(' or ')}`,
          {
            details: { approval: id, approvers: data.approvers },
          },
        );
      }
      if (data.decisions.some((d) => d.by === input.approver.ref)) {
        throw new CoatcheckError(
          'CC_ERR_APPROVAL_NOT_APPROVER',
          `${input.approver.name} already approved ${id}`,
          { details: { approval: id } },
        );
      }
    }
    const decisions = [
      ...data.decisions,
      {
        by: input.approver.ref,
        name: input.approver.name,
        decision: input.decision,
        at: new Date(now).toISOString(),
        reason: input.reason?.slice(0, 500) ?? null,
      },
    ];
    const approvals = decisions.filter((d) => d.decision === 'approve').length;
    let status: ApprovalRecord['status'] = 'pending';
    let expiresAt = record.expiresAt;
    let singleUse = data.singleUse;
    if (input.decision === 'deny') status = 'denied';
    else if (approvals >= data.quorum) {
      status = 'approved';
      singleUse = input.forMs === undefined;
      expiresAt = now + (input.forMs ?? this.#options.useWindowMs);
    }
    const next: ApprovalRecord = {
      ...record,
      status,
      expiresAt,
      data: { ...data, decisions, singleUse } as unknown as Record<string, unknown>,
    };
    await this.#audit.append(
      {
        type: input.decision === 'approve' ? 'approval.approve' : 'approval.deny',
        actor,
        data: {
          approval: id,
          approver: input.approver.ref,
          status,
          approvals,
          quorum: data.quorum,
          validUntil: status === 'approved' ? new Date(expiresAt).toISOString() : null,
          singleUse,
          reason: input.reason?.slice(0, 500) ?? null,
        },
      },
      async (tx) => {
        if (!(await tx.updateApproval(next, 'pending'))) throw notPending(id, 'decided');
      },
    );
    await this.#store.publish({ type: 'approval.changed', id });
    return this.#view(next);
  }

  /**
   * Hold until the request is decided or `timeoutMs` passes. Wakes on store change events
   * (every replica publishes them) and polls as a fallback.
   */
  async waitForDecision(id: string, timeoutMs: number, signal?: AbortSignal): Promise<ApprovalView> {
    const deadline = Date.now() + timeoutMs;
    const pollMs = this.#options.pollMs ?? 1000;
    let wake: (() => void) | null = null;
    const onWake = () => wake?.();
    const stopWaiting = this.#addWaiter(id, onWake);
    // One abort listener for the whole hold, removed when it ends (not one per poll).
    signal?.addEventListener('abort', onWake, { once: true });
    try {
      for (;;) {
        const view = await this.get(id);
        if (view.status !== 'pending') return view;
        const left = deadline - Date.now();
        if (left <= 0 || signal?.aborted) return view;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(left, pollMs));
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        wake = null;
      }
    } finally {
      signal?.removeEventListener('abort', onWake);
      stopWaiting();
    }
  }

  /** Requests held operations are waiting on, and whether the change feed subscription is held. */
  waiting(): { requests: number; subscribed: boolean } {
    return { requests: this.#waiters.size, subscribed: this.#unsubscribe !== null };
  }

  #addWaiter(id: string, wake: () => void): () => void {
    let set = this.#waiters.get(id);
    if (set === undefined) {
      set = new Set();
      this.#waiters.set(id, set);
    }
    set.add(wake);
    this.#unsubscribe ??= this.#store.subscribe((change) => {
      if (change.type === 'resync') {
        for (const waiters of this.#waiters.values()) for (const w of waiters) w();
      } else if (change.type === 'approval.changed') {
        for (const w of this.#waiters.get(change.id) ?? []) w();
      }
    });
    return () => {
      const waiters = this.#waiters.get(id);
      waiters?.delete(wake);
      if (waiters !== undefined && waiters.size === 0) this.#waiters.delete(id);
      if (this.#waiters.size === 0 && this.#unsubscribe !== null) {
        this.#unsubscribe();
        this.#unsubscribe = null;
      }
    };
  }
}

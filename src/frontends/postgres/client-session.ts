import type { Socket } from 'node:net';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import { isTicket, TICKET_LENGTH } from '../../core/ticket-format.js';
import type { PatternSet, ResponseScan } from '../../gateway/inspector.js';
import type { ExchangePipeline, Operation } from '../../gateway/pipeline.js';
import type { GatewaySession } from '../../gateway/session.js';
import type { Target } from '../../vault/destinations.js';
import { decodeBackend, decodeDataRow, decodeFrontend } from './protocol/decode.js';
import {
  encodeBackend,
  encodeDataRow,
  encodeFrontend,
  errorResponse,
  noticeResponse,
} from './protocol/encode.js';
import type { FieldDescription, Frame, FrontendMessage } from './protocol/messages.js';
import { FramePump, WriteBatcher } from './pump.js';
import { checkRules, columnMatcher, type PostgresRules } from './rules.js';
import type { Classification, SqlClassifier, StatementClass } from './sql/classify.js';
import type { StatementPolicy, StatementVerdict } from './statement-policy.js';
import type { Upstream } from './upstream/connect.js';
import { sqlstateFor, toErrorResponse } from './wire-errors.js';

/** Longest statement text kept (scrubbed) in audit records and recordings. */
const MAX_RECORDED_SQL = 2048;
/** Type OIDs whose masked value can be the text `***`; other masked values become NULL. */
const TEXT_TYPES = new Set([25, 1043, 1042, 19, 705]);
const MASK = Buffer.from('***');

export interface StatementEvent {
  readonly sql: string;
  readonly class: StatementClass | 'unparsable' | 'unknown';
  readonly decision: 'allow' | 'deny';
  readonly rule: string | null;
  readonly code: ErrorCode | null;
  readonly durationMs: number;
  readonly rows: number;
  readonly outcome: 'ok' | 'error' | 'refused';
  readonly tickets: readonly string[];
}

export interface RelayServices {
  readonly pipeline: ExchangePipeline;
  readonly classifier: SqlClassifier;
  readonly now: () => number;
  /** Known secrets as search patterns, current (rebuilt in the background when the vault changes). */
  readonly patterns: () => PatternSet;
  /** Report one statement (audit + recording); a rejection ends the session (fail closed). */
  readonly onStatement: (event: StatementEvent) => Promise<void>;
  /** Per-statement policy and approvals; absent when no policy is configured. */
  readonly statementPolicy?: StatementPolicy | null;
}

interface OpenStatement {
  readonly sql: string;
  readonly cls: StatementClass;
  readonly tickets: readonly string[];
  readonly startedAt: number;
  readonly simple: boolean;
  readonly portal: string;
  rows: number;
  dropped: number;
  description: readonly FieldDescription[] | null;
  mask: MaskPlan | null;
  /** Column patterns from a policy's `@mask` for this statement, beside the connection's. */
  readonly policyMask: ((name: string) => boolean) | null;
}

interface MaskPlan {
  /** Per column: 0 leave, 1 mask. */
  readonly columns: Uint8Array;
  readonly any: boolean;
}

interface Prepared {
  readonly sql: string;
  readonly classification: Classification;
  readonly policyMask?: ((name: string) => boolean) | null;
}

type Output =
  | { readonly kind: 'upstream'; prefix: Buffer | null }
  | { readonly kind: 'synthetic'; bytes: Buffer };

function scrubTickets(sql: string, ids: ReadonlyMap<string, string>): string {
  return sql.replace(/cct_[0-9A-Za-z]{28}/g, (t) => ids.get(t) ?? 'tkt_?').slice(0, MAX_RECORDED_SQL);
}

/**
 * One relayed PostgreSQL session after login: client frames are classified, checked
 * against the connection's rules, have their tickets exchanged and are forwarded;
 * upstream frames are passed through (in coalesced writes) except where a row must be
 * masked, a row limit applies, or a refusal must be placed in order.
 */
export class RelaySession {
  readonly #client: Socket;
  readonly #upstream: Socket;
  readonly #clientPump: FramePump;
  readonly #upstreamPump: FramePump;
  readonly #toClient: WriteBatcher;
  readonly #toUpstream: WriteBatcher;
  readonly #services: RelayServices;
  readonly #session: GatewaySession;
  readonly #principal: Principal;
  readonly #target: Target;
  readonly #rules: PostgresRules;
  readonly #masked: (name: string) => boolean;
  /** Row descriptions are tracked when a connection rule or a policy may mask columns. */
  readonly #maskingActive: boolean;
  readonly #done: Promise<void>;
  #finish!: () => void;

  readonly #outputs: Output[] = [];
  readonly #open: OpenStatement[] = [];
  readonly #describes: Array<{ kind: 'S' | 'P'; name: string }> = [];
  readonly #statements = new Map<string, Prepared>();
  readonly #portals = new Map<string, { statement: string; tickets: readonly string[] }>();
  readonly #statementDescriptions = new Map<string, readonly FieldDescription[]>();
  readonly #portalDescriptions = new Map<string, readonly FieldDescription[]>();
  #txStatus: 'I' | 'T' | 'E' = 'I';
  /** A statement was refused inside a transaction block: like PostgreSQL, the block is aborted. */
  #poisoned = false;
  /** Extended protocol: a message was refused; discard until Sync, then answer with this error. */
  #pendingError: Buffer | null = null;
  /** Messages of the current extended batch were forwarded upstream. */
  #batchForwarded = false;
  #standardStrings = true;
  #scan: ResponseScan | null = null;
  /**
   * Tickets this session exchanged (the login ticket, then each statement's), most recent
   * last: a ticket minted for a secret in a result is a child of the narrowest of them.
   */
  readonly #exchanged = new Set<string>();
  #closed = false;
  rows = 0;
  statements = 0;

  constructor(
    client: Socket,
    clientFramer: import('./protocol/framer.js').MessageFramer,
    upstream: Upstream,
    context: {
      services: RelayServices;
      session: GatewaySession;
      principal: Principal;
      target: Target;
      rules: PostgresRules;
    },
  ) {
    this.#client = client;
    this.#upstream = upstream.socket;
    this.#services = context.services;
    this.#session = context.session;
    this.#principal = context.principal;
    // At this point the session holds only what the login exchanged.
    for (const id of context.session.ticketIds) this.#exchanged.add(id);
    this.#target = context.target;
    this.#rules = context.rules;
    this.#masked = columnMatcher(context.rules.maskColumns);
    this.#maskingActive =
      context.rules.maskColumns.length > 0 || (context.services.statementPolicy?.hasMasks() ?? false);
    for (const [name, value] of upstream.parameters) {
      if (name === 'standard_conforming_strings') this.#standardStrings = value === 'on';
    }
    this.#done = new Promise((resolve) => {
      this.#finish = resolve;
    });
    this.#toClient = new WriteBatcher(client, () => {
      this.#upstreamPump.hold('client-full');
      client.once('drain', () => this.#upstreamPump.release('client-full'));
    });
    this.#toUpstream = new WriteBatcher(upstream.socket, () => {
      this.#clientPump.hold('upstream-full');
      upstream.socket.once('drain', () => this.#clientPump.release('upstream-full'));
    });
    this.#clientPump = new FramePump(client, clientFramer, {
      frame: (f) => this.#fromClient(f),
      afterBatch: () => this.#toUpstream.flush(),
      error: (e) => this.fail(e),
    });
    this.#upstreamPump = new FramePump(upstream.socket, upstream.framer, {
      frame: (f) => this.#fromUpstream(f),
      afterBatch: () => this.#toClient.flush(),
      error: (e) => this.fail(e),
    });
  }

  /** Relay until either side ends. Resolves when both sockets are closed. */
  run(): Promise<void> {
    const end = () => this.close();
    this.#client.on('close', end);
    this.#client.on('error', end);
    this.#upstream.on('close', end);
    this.#upstream.on('error', end);
    this.#session.signal.addEventListener('abort', () => {
      const code = (this.#session.terminatedBy ?? 'CC_ERR_GATEWAY_SESSION_TERMINATED') as ErrorCode;
      this.#toClient.flush();
      this.#writeClient(
        toErrorResponse(
          new CoatcheckError(
            code,
            `coatcheck: the session was ended (${code}): a ticket, agent or secret it depends on was revoked`,
          ),
          'FATAL',
        ),
      );
      this.close();
    });
    this.#clientPump.start();
    this.#upstreamPump.start();
    return this.#done;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#clientPump.stop();
    this.#upstreamPump.stop();
    this.#toClient.flush();
    this.#toUpstream.flush();
    this.#client.end();
    this.#upstream.end();
    setTimeout(() => this.#upstream.destroy(), 1000).unref();
    setTimeout(() => this.#client.destroy(), 1000).unref();
    this.#finish();
  }

  /** End the session with a FATAL error (audit failure, masking failure, protocol error). */
  fail(error: unknown): void {
    if (this.#closed) return;
    const e =
      error instanceof CoatcheckError
        ? error
        : new CoatcheckError('CC_ERR_PG_MASKING_FAILED', 'coatcheck: the session failed and was closed', {
            cause: error,
          });
    this.#session.event('session.error', { code: e.code });
    this.#toClient.flush();
    this.#writeClient(toErrorResponse(e, 'FATAL'));
    this.close();
  }

  // ---- output ordering --------------------------------------------------------------

  #writeClient(bytes: Buffer): void {
    if (this.#client.destroyed) return;
    if (!this.#client.write(bytes)) {
      this.#upstreamPump.hold('client-full');
      this.#client.once('drain', () => this.#upstreamPump.release('client-full'));
    }
  }

  /** Queue bytes for the upstream; adjacent frames of one client read go out in one write. */
  #writeUpstream(bytes: Buffer): void {
    this.#toUpstream.push(bytes);
  }

  /** A gateway-made answer, placed after every answer the upstream still owes. */
  #synthetic(bytes: Buffer): void {
    if (this.#outputs.length === 0) {
      this.#toClient.flush();
      this.#writeClient(bytes);
    } else this.#outputs.push({ kind: 'synthetic', bytes });
  }

  #ready(): Buffer {
    return encodeBackend({ type: 'ReadyForQuery', status: this.#poisoned ? 'E' : this.#txStatus });
  }

  #refusalBytes(code: ErrorCode, message: string): Buffer {
    return errorResponse(sqlstateFor(code), message, { detail: code });
  }

  // ---- client → upstream -----------------------------------------------------------

  #fromClient(frame: Frame): void | Promise<void> {
    const m = decodeFrontend(frame);
    if (this.#pendingError !== null && m.type !== 'Sync') {
      // Discarding until Sync, as PostgreSQL does after an error in the extended protocol.
      if (m.type === 'Terminate') this.close();
      return;
    }
    switch (m.type) {
      case 'Query':
        return this.#query(m.sql, frame);
      case 'Parse':
        return this.#parse(m, frame);
      case 'Bind':
        return this.#bind(m, frame);
      case 'Execute':
        return this.#execute(m.portal, frame);
      case 'Describe':
        this.#describes.push({ kind: m.kind, name: m.name });
        return this.#forwardExtended(frame.raw);
      case 'Close':
        if (m.kind === 'S') this.#statements.delete(m.name);
        else this.#portals.delete(m.name);
        return this.#forwardExtended(frame.raw);
      case 'Flush':
        return this.#writeUpstream(frame.raw);
      case 'Sync':
        return this.#sync(frame);
      case 'CopyData':
      case 'CopyDone':
      case 'CopyFail':
        return this.#writeUpstream(frame.raw);
      case 'Terminate':
        this.#writeUpstream(frame.raw);
        this.close();
        return;
      case 'FunctionCall':
        this.#refuseSimple(
          'CC_ERR_PG_UNSUPPORTED',
          'coatcheck: the fast-path FunctionCall message is not carried; use SELECT',
          '(FunctionCall)',
          'unknown',
          '0A000',
        );
        return;
      case 'PasswordMessage':
        throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'a password message arrived after login');
    }
  }

  #forwardExtended(raw: Buffer): void {
    this.#batchForwarded = true;
    this.#writeUpstream(raw);
  }

  #sync(frame: Frame): void {
    const error = this.#pendingError;
    this.#pendingError = null;
    if (error === null || this.#batchForwarded) {
      this.#outputs.push({ kind: 'upstream', prefix: error });
      this.#writeUpstream(frame.raw);
    } else {
      this.#synthetic(Buffer.concat([error, this.#ready()]));
    }
    this.#batchForwarded = false;
  }

  /** Refuse a simple-protocol Query: ErrorResponse + ReadyForQuery, in order; the session stays usable. */
  #refuseSimple(
    code: ErrorCode,
    message: string,
    sql: string,
    cls: StatementEvent['class'],
    sqlstate?: string,
  ): void {
    if (this.#txStatus === 'T') this.#poisoned = true;
    this.#synthetic(
      Buffer.concat([
        sqlstate === undefined
          ? this.#refusalBytes(code, message)
          : errorResponse(sqlstate, message, { detail: code }),
        this.#ready(),
      ]),
    );
    this.#report(sql, cls, 'deny', code, message);
  }

  #refuseExtended(code: ErrorCode, message: string, sql: string, cls: StatementEvent['class']): void {
    if (this.#txStatus === 'T') this.#poisoned = true;
    this.#pendingError = this.#refusalBytes(code, message);
    this.#report(sql, cls, 'deny', code, message);
  }

  #report(
    sql: string,
    cls: StatementEvent['class'],
    decision: 'allow' | 'deny',
    code: ErrorCode | null,
    message: string | null,
  ): void {
    const rule = message?.match(/by rule ([a-z-]+)/)?.[1] ?? null;
    this.#emit({
      sql: scrubTickets(sql, new Map()),
      class: cls,
      decision,
      rule,
      code,
      durationMs: 0,
      rows: 0,
      outcome: decision === 'deny' ? 'refused' : 'ok',
      tickets: [],
    });
  }

  #emit(event: StatementEvent): void {
    this.statements++;
    this.#services.onStatement(event).catch((error: unknown) => this.fail(error));
  }

  /** While a refused statement's transaction block is open, only ROLLBACK (or COMMIT, made a ROLLBACK) goes through. */
  #poisonedGate(c: Classification, sql: string): { rewrite: string | null } | null {
    if (!this.#poisoned) return { rewrite: null };
    if (c.statements.length === 1 && c.statements[0] === 'TransactionStmt') {
      const upper = sql.trim().toUpperCase();
      if (upper.startsWith('ROLLBACK') || upper.startsWith('ABORT')) return { rewrite: null };
      if (upper.startsWith('COMMIT') || upper.startsWith('END')) return { rewrite: 'ROLLBACK' };
    }
    return null;
  }

  #classify(sql: string): Classification | CoatcheckError {
    try {
      return this.#services.classifier.classify(sql);
    } catch (error) {
      if (error instanceof CoatcheckError) return error;
      throw error;
    }
  }

  #query(sql: string, frame: Frame): void | Promise<void> {
    const c = this.#classify(sql);
    if (c instanceof CoatcheckError)
      return this.#refuseSimple(c.code, `coatcheck: ${c.message}`, sql, 'unparsable');
    const gate = this.#poisonedGate(c, sql);
    if (gate === null) {
      return this.#refuseSimple(
        'CC_ERR_PG_STATEMENT_DENIED',
        'coatcheck: current transaction is aborted (a statement was refused), commands ignored until end of transaction block',
        sql,
        c.class,
        '25P02',
      );
    }
    const refusal = checkRules(c, this.#rules, {
      copyOut: c.statements.includes('CopyStmt') && c.class === 'read',
    });
    if (refusal !== null) return this.#refuseSimple(refusal.code, refusal.message, sql, c.class);
    const verdict = this.#statementPolicy(sql, c);
    if (verdict instanceof Promise) {
      return verdict.then((v) =>
        v.allow
          ? this.#queryAllowed(sql, c, frame, gate, v.mask)
          : this.#refuseSimple(v.code, v.message, sql, c.class),
      );
    }
    if (!verdict.allow) return this.#refuseSimple(verdict.code, verdict.message, sql, c.class);
    return this.#queryAllowed(sql, c, frame, gate, verdict.mask);
  }

  /** Decide a statement by policy (synchronously when no human is needed). */
  #statementPolicy(sql: string, c: Classification): StatementVerdict | Promise<StatementVerdict> {
    const policy = this.#services.statementPolicy;
    if (policy === undefined || policy === null) return { allow: true };
    return policy({
      principal: this.#principal,
      connection: this.#target.connection ?? '',
      sql,
      cls: c.class,
      onHold: (id) => {
        this.#toClient.flush();
        this.#writeClient(
          noticeResponse(
            '01000',
            `coatcheck: statement waits for approval ${id} (coatcheck approvals approve ${id})`,
          ),
        );
      },
    });
  }

  #queryAllowed(
    sql: string,
    c: Classification,
    frame: Frame,
    gate: { rewrite: string | null },
    mask?: readonly string[],
  ): void | Promise<void> {
    if (mask !== undefined && mask.length > 0 && c.statements.includes('CopyStmt') && c.class === 'read') {
      return this.#refuseSimple(
        'CC_ERR_PG_STATEMENT_DENIED',
        'coatcheck: statement refused by rule mask-columns (COPY TO); a policy masks columns here and COPY output cannot be masked, use SELECT',
        sql,
        c.class,
      );
    }
    if (gate.rewrite !== null) {
      this.#poisoned = false;
      return this.#forwardQuery(
        gate.rewrite,
        c,
        encodeFrontend({ type: 'Query', sql: gate.rewrite }),
        [],
        mask,
      );
    }
    if (sql.includes('cct_')) return this.#queryWithTickets(sql, c, mask);
    return this.#forwardQuery(sql, c, frame.raw, [], mask);
  }

  #forwardQuery(
    sql: string,
    c: Classification,
    raw: Buffer,
    tickets: readonly string[],
    mask?: readonly string[],
  ): void {
    this.#open.push({
      sql,
      cls: c.class,
      tickets,
      startedAt: this.#services.now(),
      simple: true,
      portal: '',
      rows: 0,
      dropped: 0,
      description: null,
      mask: null,
      policyMask: mask === undefined || mask.length === 0 ? null : columnMatcher(mask),
    });
    this.#outputs.push({ kind: 'upstream', prefix: null });
    this.#writeUpstream(raw);
  }

  /** Tickets in a simple query: only inside standard string literals, exchanged (audited) for this agent and connection. */
  async #queryWithTickets(sql: string, c: Classification, mask?: readonly string[]): Promise<void> {
    const bytes = Buffer.from(sql, 'utf8');
    const found: Array<{ at: number; ticket: string }> = [];
    for (let at = bytes.indexOf('cct_'); at !== -1; at = bytes.indexOf('cct_', at + 1)) {
      const text = bytes.toString('latin1', at, at + TICKET_LENGTH);
      if (isTicket(text)) found.push({ at, ticket: text });
    }
    if (found.length === 0)
      return this.#forwardQuery(sql, c, encodeFrontend({ type: 'Query', sql }), [], mask);
    const outside = found.some(
      ({ at }) => !c.literals.some((l) => l.start < at && at + TICKET_LENGTH < l.end),
    );
    if (outside || !this.#standardStrings) {
      return this.#refuseSimple(
        'CC_ERR_PG_STATEMENT_DENIED',
        "coatcheck: statement refused by rule ticket-placement; a ticket is exchanged only inside a standard string literal ('...') with standard_conforming_strings on, or as a bound parameter",
        sql,
        c.class,
      );
    }
    const exchanged = await this.#exchange(
      found.map((f) => f.ticket),
      sql,
      c.class,
    );
    if (exchanged === null) return;
    const parts: Buffer[] = [];
    let last = 0;
    for (const { at, ticket } of found) {
      parts.push(bytes.subarray(last, at));
      parts.push(Buffer.from(exchanged.values.get(ticket)!.replace(/'/g, "''"), 'utf8'));
      last = at + TICKET_LENGTH;
    }
    parts.push(bytes.subarray(last));
    const rewritten = Buffer.concat(parts).toString('utf8');
    this.#forwardQuery(
      scrubTickets(sql, exchanged.ids),
      c,
      encodeFrontend({ type: 'Query', sql: rewritten }),
      [...exchanged.ids.values()],
      mask,
    );
  }

  /** Exchange tickets; a refusal answers the client (and is audited by the vault) and yields null. */
  async #exchange(
    tickets: readonly string[],
    sql: string,
    cls: StatementClass,
    extended = false,
  ): Promise<{ values: Map<string, string>; buffers: Map<string, Buffer>; ids: Map<string, string> } | null> {
    const unique = [...new Set(tickets)];
    const operation: Operation = {
      action: cls === 'read' ? 'sql:select' : `sql:${cls}`,
      description: `postgres ${cls} on ${this.#target.connection}`,
      attributes: { class: cls },
    };
    try {
      const released = await this.#services.pipeline.exchange(this.#session, unique, {
        principal: this.#principal,
        target: this.#target,
        operation,
        // SQL text and bound parameters: released only for secrets bound to sql on this connection.
        placement: 'sql',
      });
      const values = new Map<string, string>();
      const buffers = new Map<string, Buffer>();
      const ids = new Map<string, string>();
      for (const [ticket, exchange] of released) {
        const value = exchange.value.reveal();
        if (value.includes(0) || Buffer.from(value.toString('utf8'), 'utf8').compare(value) !== 0) {
          throw new CoatcheckError(
            'CC_ERR_PG_STATEMENT_DENIED',
            `coatcheck: the secret behind ticket ${exchange.ticketId} is not valid UTF-8 text without NUL; pass it as a binary bound parameter`,
          );
        }
        values.set(ticket, value.toString('utf8'));
        buffers.set(ticket, value);
        ids.set(ticket, exchange.ticketId);
        this.#remember(exchange.ticketId);
      }
      return { values, buffers, ids };
    } catch (error) {
      const e =
        error instanceof CoatcheckError
          ? error
          : new CoatcheckError('CC_ERR_INTERNAL', 'ticket exchange failed', { cause: error });
      const message = `coatcheck: ticket refused (${e.code}): ${e.message}`;
      if (extended) this.#refuseExtended(e.code, message, sql, cls);
      else this.#refuseSimple(e.code, message, sql, cls);
      return null;
    }
  }

  #parse(m: Extract<FrontendMessage, { type: 'Parse' }>, frame: Frame): void | Promise<void> {
    const c = this.#classify(m.sql);
    if (c instanceof CoatcheckError)
      return this.#refuseExtended(c.code, `coatcheck: ${c.message}`, m.sql, 'unparsable');
    const gate = this.#poisonedGate(c, m.sql);
    if (gate !== null && gate.rewrite !== null) {
      this.#statements.set(m.name, { sql: gate.rewrite, classification: c });
      this.#poisoned = false;
      return this.#forwardExtended(encodeFrontend({ ...m, sql: gate.rewrite }));
    }
    if (gate === null) {
      return this.#refuseExtended(
        'CC_ERR_PG_STATEMENT_DENIED',
        'coatcheck: current transaction is aborted (a statement was refused), commands ignored until end of transaction block',
        m.sql,
        c.class,
      );
    }
    const refusal = checkRules(c, this.#rules, {
      copyOut: c.statements.includes('CopyStmt') && c.class === 'read',
    });
    if (refusal !== null) return this.#refuseExtended(refusal.code, refusal.message, m.sql, c.class);
    const verdict = this.#statementPolicy(m.sql, c);
    if (verdict instanceof Promise) {
      return verdict.then((v) =>
        v.allow
          ? this.#parseAllowed(m, c, frame, v.mask)
          : this.#refuseExtended(v.code, v.message, m.sql, c.class),
      );
    }
    if (!verdict.allow) return this.#refuseExtended(verdict.code, verdict.message, m.sql, c.class);
    return this.#parseAllowed(m, c, frame, verdict.mask);
  }

  #parseAllowed(
    m: Extract<FrontendMessage, { type: 'Parse' }>,
    c: Classification,
    frame: Frame,
    mask?: readonly string[],
  ): void {
    if (m.sql.includes('cct_')) {
      this.#refuseExtended(
        'CC_ERR_PG_STATEMENT_DENIED',
        'coatcheck: statement refused by rule ticket-placement; in the extended protocol pass tickets as bound parameters',
        m.sql,
        c.class,
      );
      return;
    }
    this.#statements.set(m.name, {
      sql: m.sql,
      classification: c,
      policyMask: mask === undefined || mask.length === 0 ? null : columnMatcher(mask),
    });
    this.#forwardExtended(frame.raw);
  }

  #bind(m: Extract<FrontendMessage, { type: 'Bind' }>, frame: Frame): void | Promise<void> {
    const prepared = this.#statements.get(m.statement);
    if (prepared === undefined) {
      // Unknown to the gateway (never parsed through it): the upstream will answer with its own error.
      this.#portals.set(m.portal, { statement: m.statement, tickets: [] });
      return this.#forwardExtended(frame.raw);
    }
    const found: string[] = [];
    for (const p of m.parameters) {
      if (p === null || p.length < TICKET_LENGTH) continue;
      for (let at = p.indexOf('cct_'); at !== -1; at = p.indexOf('cct_', at + 1)) {
        const text = p.toString('latin1', at, at + TICKET_LENGTH);
        if (isTicket(text)) found.push(text);
      }
    }
    if (found.length === 0) {
      this.#portals.set(m.portal, { statement: m.statement, tickets: [] });
      return this.#forwardExtended(frame.raw);
    }
    return this.#bindWithTickets(m, found, prepared);
  }

  async #bindWithTickets(
    m: Extract<FrontendMessage, { type: 'Bind' }>,
    found: readonly string[],
    prepared: Prepared,
  ): Promise<void> {
    const exchanged = await this.#exchange(found, prepared.sql, prepared.classification.class, true);
    if (exchanged === null) return;
    const parameters = m.parameters.map((p) => {
      if (p === null || p.indexOf('cct_') === -1) return p;
      const parts: Buffer[] = [];
      let last = 0;
      for (let at = p.indexOf('cct_'); at !== -1; at = p.indexOf('cct_', at + 1)) {
        const text = p.toString('latin1', at, at + TICKET_LENGTH);
        const value = exchanged.buffers.get(text);
        if (value === undefined) continue;
        parts.push(p.subarray(last, at), value);
        last = at + TICKET_LENGTH;
        at = last - 1;
      }
      parts.push(p.subarray(last));
      return Buffer.concat(parts);
    });
    this.#portals.set(m.portal, { statement: m.statement, tickets: [...exchanged.ids.values()] });
    this.#forwardExtended(encodeFrontend({ ...m, parameters }));
  }

  #execute(portal: string, frame: Frame): void {
    const bound = this.#portals.get(portal);
    const prepared = bound === undefined ? undefined : this.#statements.get(bound.statement);
    this.#open.push({
      sql: prepared?.sql ?? '(unknown prepared statement)',
      cls: prepared?.classification.class ?? 'read',
      tickets: bound?.tickets ?? [],
      startedAt: this.#services.now(),
      simple: false,
      portal,
      rows: 0,
      dropped: 0,
      description: null,
      mask: null,
      policyMask: prepared?.policyMask ?? null,
    });
    this.#forwardExtended(frame.raw);
  }

  // ---- upstream → client -----------------------------------------------------------

  #planMask(fields: readonly FieldDescription[], policyMask: ((name: string) => boolean) | null): MaskPlan {
    const columns = new Uint8Array(fields.length);
    let any = false;
    fields.forEach((f, i) => {
      if (this.#masked(f.name) || policyMask?.(f.name) === true) {
        columns[i] = 1;
        any = true;
      }
    });
    return { columns, any };
  }

  #finishStatement(outcome: 'ok' | 'error'): void {
    const s = this.#open.shift();
    if (s === undefined) return;
    this.rows += s.rows;
    this.#emit({
      sql: s.sql,
      class: s.cls,
      decision: 'allow',
      rule: null,
      code: null,
      durationMs: this.#services.now() - s.startedAt,
      rows: s.rows,
      outcome,
      tickets: s.tickets,
    });
  }

  #fromUpstream(frame: Frame): void | Promise<void> {
    switch (frame.code) {
      case 0x44: // DataRow
        return this.#dataRow(frame);
      case 0x54: {
        // RowDescription: for the running simple query, or the answer to a Describe.
        // Column names matter only to mask rules; without them it is passed on undecoded.
        const head = this.#open[0];
        const forDescribe = this.#describes.length > 0 && (head === undefined || !head.simple);
        const d = forDescribe ? this.#describes.shift()! : null;
        if (this.#maskingActive) {
          const m = decodeBackend(frame);
          if (m.type !== 'RowDescription') return;
          if (d !== null) {
            if (d.kind === 'S') this.#statementDescriptions.set(d.name, m.fields);
            else this.#portalDescriptions.set(d.name, m.fields);
          } else if (head !== undefined) {
            head.description = m.fields;
            head.mask = this.#planMask(m.fields, head.policyMask);
          }
        }
        this.#toClient.push(frame.raw);
        return;
      }
      case 0x6e: // NoData: answers a Describe
        if (this.#describes.length > 0 && (this.#open[0] === undefined || !this.#open[0].simple))
          this.#describes.shift();
        this.#toClient.push(frame.raw);
        return;
      case 0x43: // CommandComplete
        return this.#commandComplete(frame);
      case 0x49: // EmptyQueryResponse
      case 0x73: // PortalSuspended
        if (this.#open[0] !== undefined && !this.#open[0].simple) this.#finishStatement('ok');
        this.#toClient.push(frame.raw);
        return;
      case 0x45: // ErrorResponse
        if (this.#open[0] !== undefined) this.#finishStatement('error');
        this.#toClient.push(frame.raw);
        return;
      case 0x5a: // ReadyForQuery
        return this.#readyForQuery(frame);
      case 0x53: {
        // ParameterStatus: track standard_conforming_strings (ticket placement depends on it).
        const m = decodeBackend(frame);
        if (m.type === 'ParameterStatus' && m.name === 'standard_conforming_strings')
          this.#standardStrings = m.value === 'on';
        this.#toClient.push(frame.raw);
        return;
      }
      case 0x64: // CopyData (COPY TO): known secrets are replaced as in rows
        if (this.#rules.scanSecrets) return this.#copyData(frame);
        this.#toClient.push(frame.raw);
        return;
      case 0x52:
      case 0x4b:
        throw new CoatcheckError(
          'CC_ERR_PG_PROTOCOL',
          'the upstream sent an authentication message after login',
        );
      default:
        this.#toClient.push(frame.raw);
        return;
    }
  }

  #readyForQuery(frame: Frame): void {
    const m = decodeBackend(frame);
    if (m.type !== 'ReadyForQuery') return;
    this.#txStatus = m.status;
    if (m.status === 'I') this.#poisoned = false;
    // A simple query that got no ErrorResponse succeeded; an Execute still open at Sync never ran.
    while (this.#open.length > 0) this.#finishStatement(this.#open[0]!.simple ? 'ok' : 'error');
    this.#describes.length = 0;
    const head = this.#outputs.shift();
    if (head === undefined || head.kind !== 'upstream')
      throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'the upstream sent ReadyForQuery out of turn');
    if (head.prefix !== null) {
      if (m.status === 'T') this.#poisoned = true;
      this.#toClient.push(head.prefix);
    }
    this.#toClient.push(this.#poisoned && m.status === 'T' ? this.#ready() : frame.raw);
    while (this.#outputs[0]?.kind === 'synthetic') {
      const s = this.#outputs.shift() as { kind: 'synthetic'; bytes: Buffer };
      this.#toClient.push(s.bytes);
    }
  }

  #commandComplete(frame: Frame): void {
    const head = this.#open[0];
    if (head !== undefined && head.dropped > 0) {
      const m = decodeBackend(frame);
      const tag = m.type === 'CommandComplete' ? m.tag.replace(/\d+$/, String(head.rows)) : 'SELECT';
      this.#toClient.push(
        noticeResponse(
          '01000',
          `coatcheck: rule row-limit: ${head.dropped} rows beyond the limit of ${this.#rules.rowLimit} were not returned`,
        ),
      );
      this.#toClient.push(encodeBackend({ type: 'CommandComplete', tag }));
    } else this.#toClient.push(frame.raw);
    if (head !== undefined) {
      if (head.simple) {
        // A multi-statement query has one CommandComplete per statement: reset the per-statement state.
        head.description = null;
        head.mask = null;
      } else this.#finishStatement('ok');
    }
  }

  #descriptionFor(head: OpenStatement): readonly FieldDescription[] | null {
    if (head.description !== null) return head.description;
    const portal = this.#portalDescriptions.get(head.portal);
    if (portal !== undefined) return portal;
    const bound = this.#portals.get(head.portal);
    return bound === undefined ? null : (this.#statementDescriptions.get(bound.statement) ?? null);
  }

  #dataRow(frame: Frame): void | Promise<void> {
    const head = this.#open[0];
    if (head !== undefined) {
      if (this.#rules.rowLimit > 0 && head.rows >= this.#rules.rowLimit) {
        head.dropped++;
        return;
      }
      head.rows++;
      if (this.#maskingActive && head.mask === null) {
        const description = this.#descriptionFor(head);
        if (description === null) {
          throw new CoatcheckError(
            'CC_ERR_PG_MASKING_FAILED',
            'coatcheck: rows arrived for a statement the client never described; with mask rules they cannot be masked, so the session was closed',
          );
        }
        head.description = description;
        head.mask = this.#planMask(description, head.policyMask);
      }
    }
    const mask = head?.mask?.any ? head.mask : null;
    const needsMask = mask !== null;
    const mayHoldSecret = this.#rules.scanSecrets && this.#mayContainSecret(frame.raw);
    if (!needsMask && !mayHoldSecret) {
      this.#toClient.push(frame.raw);
      return;
    }
    const values = decodeDataRow(frame.body);
    let changed = false;
    if (mask !== null) {
      const description = head?.description ?? null;
      for (let i = 0; i < values.length; i++) {
        if (values[i] === null || mask.columns[i] !== 1) continue;
        values[i] = TEXT_TYPES.has(description?.[i]?.typeOid ?? 0) ? MASK : null;
        changed = true;
      }
    }
    if (!mayHoldSecret) {
      this.#toClient.push(changed ? encodeDataRow(values) : frame.raw);
      return;
    }
    return this.#replaceSecrets(values, changed, frame);
  }

  #mayContainSecret(bytes: Buffer): boolean {
    // One indexed pass, escaped forms included (the pattern list holds only the raw forms).
    return this.#services.patterns().mayContain(bytes);
  }

  async #scanner(): Promise<ResponseScan> {
    this.#scan ??= await this.#services.pipeline.inspect(
      this.#session,
      this.#principal,
      this.#target,
      this.#exchanged,
    );
    return this.#scan;
  }

  /** Keep a bounded window of exchanged ticket ids (the most recent statements'). */
  #remember(ticketId: string): void {
    this.#exchanged.delete(ticketId);
    this.#exchanged.add(ticketId);
    if (this.#exchanged.size > 256) this.#exchanged.delete(this.#exchanged.values().next().value!);
  }

  /** Known secrets in row values become tickets bound to this agent (lengths rewritten). */
  async #replaceSecrets(values: Array<Buffer | null>, changed: boolean, frame: Frame): Promise<void> {
    const scan = await this.#scanner();
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || v === MASK || !this.#mayContainSecret(v)) continue;
      const replaced = Buffer.from(await scan.header(v.toString('latin1')), 'latin1');
      if (!replaced.equals(v)) {
        values[i] = replaced;
        changed = true;
      }
    }
    this.#toClient.push(changed ? encodeDataRow(values) : frame.raw);
  }

  #copyData(frame: Frame): void | Promise<void> {
    if (!this.#mayContainSecret(frame.body)) {
      this.#toClient.push(frame.raw);
      return;
    }
    return (async () => {
      const scan = await this.#scanner();
      const replaced = Buffer.from(await scan.header(frame.body.toString('latin1')), 'latin1');
      this.#toClient.push(encodeBackend({ type: 'CopyData', data: replaced }));
    })();
  }
}

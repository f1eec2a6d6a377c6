import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import { isTicket, TICKET_LENGTH } from '../../core/ticket-format.js';
import type { Authorized } from '../../gateway/authorized.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import type { Operation } from '../../gateway/pipeline.js';
import type { GatewaySession } from '../../gateway/session.js';
import type { Target } from '../../vault/destinations.js';
import { BackendInspector, type OutputIndex, withheldNotice } from './backend-inspect.js';
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
import { PgRecording } from './recording.js';
import {
  type PreparedEntry,
  ProtocolState,
  type Refusal,
  type Run,
  type Slot,
} from './relay/protocol-state.js';
import type { RelayServices, StatementEvent } from './relay/relay-services.js';
import { scrubStatement } from './relay/scrub-statement.js';
import { type Decided, type DecideStep, StatementDecider } from './relay/statement-decider.js';
import type { StatementFacts } from './relay/statement-facts.js';
import { checkRules, columnMatcher, type PostgresRules } from './rules.js';
import type { Classification, StatementClass } from './sql/classify.js';
import { LineageTracker, type StatementLineage } from './sql/lineage.js';
import { createPgCatalog, type PgCatalog } from './sql/pg-catalog.js';
import type { StatementVerdict } from './statement-policy.js';
import type { Upstream, UpstreamTarget } from './upstream/connect.js';
import { sqlstateFor, toErrorResponse } from './wire-errors.js';

/** Longest statement text kept (scrubbed) in audit records and recordings. */
const MAX_RECORDED_SQL = 2048;
/** Type OIDs whose masked value can be the text `***`; other masked values become NULL. */
const TEXT_TYPES = new Set([25, 1043, 1042, 19, 705]);
const MASK = Buffer.from('***');
/** Output owed to the client above which the client is not read until it drains. */
const MAX_OWED_BYTES = 1024 * 1024;
/** Distinct refused statements listed in one batched refusal record (the rest are counted). */
const MAX_REFUSALS_LISTED = 64;
/** Stand-ins forwarded for a refused message: the server fails them in place, so it keeps the protocol and transaction state (an aborted block stays aborted) exactly as a refusal by PostgreSQL would. */
const REFUSED_QUERY = encodeFrontend({ type: 'Query', sql: 'COATCHECK REFUSED' });
const REFUSED_PARSE = encodeFrontend({
  type: 'Parse',
  name: '',
  sql: 'COATCHECK REFUSED',
  parameterTypes: [],
});

interface MaskPlan {
  /** Per column: 0 leave, 1 mask. */
  readonly columns: Uint8Array;
  readonly any: boolean;
}

interface RefusalBatch {
  readonly events: Map<string, { sql: string; code: ErrorCode; class: string; count: number }>;
  first: StatementEvent | null;
  count: number;
  written: Promise<void> | null;
  done: boolean;
}

/** A statement whose lineage could not be matched: every column masked, errors withheld. */
const UNKNOWN_LINEAGE: StatementLineage = {
  statement: 'unknown',
  columns: null,
  maskAll: true,
  relations: new Map(),
  touchesMasked: true,
};

function maskMatcher(mask: readonly string[] | undefined): ((name: string) => boolean) | null {
  return mask === undefined || mask.length === 0 ? null : columnMatcher(mask);
}

function renderParameter(p: Buffer | null, format: number): string | null {
  if (p === null) return null;
  return format === 1 ? `\\x${p.toString('hex')}` : p.toString('utf8');
}

/**
 * One relayed PostgreSQL session after login: client messages are classified (each
 * statement of a simple Query on its own), checked against the connection's rules and
 * policy (each execution: Bind, EXECUTE), have their tickets exchanged and are
 * forwarded; upstream messages are matched to the message they answer
 * (relay/protocol-state.ts) and passed through in coalesced writes, except where a row
 * must be masked, a row limit applies, or a refusal takes the place of its stand-in's
 * error.
 */
export type { RelayServices, StatementEvent } from './relay/relay-services.js';

export class RelaySession {
  readonly #client: Socket;
  readonly #upstream: Duplex;
  readonly #clientPump: FramePump;
  readonly #upstreamPump: FramePump;
  readonly #toClient: WriteBatcher;
  readonly #toUpstream: WriteBatcher;
  readonly #services: RelayServices;
  readonly #session: GatewaySession;
  readonly #authorized: Authorized;
  /** The full recording's view of the session (null unless the connection records in full). */
  readonly #recording: PgRecording | null;
  readonly #principal: Principal;
  readonly #target: Target;
  readonly #rules: PostgresRules;
  readonly #inspector: BackendInspector;
  /** Masking by lineage (null when no column is masked on this connection or by policy). */
  readonly #tracker: LineageTracker | null;
  readonly #catalog: PgCatalog | null;
  /** A statement that read masked columns ran in the open transaction block: withhold its errors and notices. */
  #sticky = false;
  /** A DDL or privilege statement ran in the open transaction: drop the catalog cache when it ends. */
  #ddlInBlock = false;
  /** Row descriptions are tracked when a connection rule or a policy may mask columns. */
  readonly #maskingActive: boolean;
  /** Classification, rules and policy for each statement: socket-free (relay/statement-decider.ts). */
  readonly #decider: StatementDecider;
  readonly #done: Promise<void>;
  #finish!: () => void;

  readonly #state = new ProtocolState();
  /** Extended protocol: a message was refused; discard until Sync (as PostgreSQL does after an error). */
  #discarding = false;
  #refusals: RefusalBatch | null = null;
  #scan: ResponseScan | null = null;
  #scanIndex: OutputIndex | null = null;
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
      /** The login's policy decision: tickets in SQL text are exchanged under it. */
      authorized: Authorized;
      target: Target;
      rules: PostgresRules;
      /** The upstream this session logged in to (lineage reads its catalog over a connection of its own). */
      upstream: { target: UpstreamTarget; password: Buffer };
    },
  ) {
    this.#client = client;
    this.#upstream = upstream.socket;
    this.#services = context.services;
    this.#session = context.session;
    this.#principal = context.principal;
    this.#authorized = context.authorized;
    // At this point the session holds only what the login exchanged.
    for (const id of context.session.ticketIds) this.#exchanged.add(id);
    this.#target = context.target;
    this.#rules = context.rules;
    this.#maskingActive =
      context.rules.maskColumns.length > 0 || (context.services.statementPolicy?.hasMasks() ?? false);
    this.#inspector = new BackendInspector(
      () => context.services.outputIndex(),
      () => this.#scanner(),
    );
    if (this.#maskingActive) {
      const t = context.upstream.target;
      this.#catalog = createPgCatalog({
        host: t.host,
        port: t.port,
        user: t.user,
        password: context.upstream.password.toString('utf8'),
        database: t.database,
        ssl: upstream.tls
          ? { rejectUnauthorized: t.sslMode === 'verify-full', ...(t.ca === undefined ? {} : { ca: t.ca }) }
          : false,
      });
      this.#tracker = new LineageTracker({
        masked: columnMatcher(context.rules.maskColumns),
        catalog: this.#catalog,
      });
    } else {
      this.#catalog = null;
      this.#tracker = null;
    }
    this.#decider = new StatementDecider({
      services: context.services,
      principal: context.principal,
      target: context.target,
      rules: context.rules,
      statements: this.#state.statements,
      tracker: this.#tracker,
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
    for (const [name, value] of upstream.parameters) {
      if (name === 'standard_conforming_strings') this.#decider.standardStrings = value === 'on';
    }
    this.#done = new Promise((resolve) => {
      this.#finish = resolve;
    });
    this.#toClient = new WriteBatcher(client, () => {
      this.#upstreamPump.hold('client-full');
      client.once('drain', () => this.#upstreamPump.release('client-full'));
    });
    const recording = context.session.recording;
    this.#recording = recording === null ? null : new PgRecording(recording);
    if (this.#recording !== null) {
      const tap = this.#recording;
      this.#toClient.tap = (data) => tap.clientBytes(data);
    }
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

  /** Bytes written to the client and not yet taken by it (for tests and metrics). */
  get owedBytes(): number {
    return this.#client.writableLength;
  }

  /** Relay until either side ends. Resolves when both sockets are closed. */
  run(): Promise<void> {
    const end = () => this.close();
    this.#client.on('close', end);
    this.#client.on('error', end);
    this.#upstream.on('close', end);
    this.#upstream.on('error', (error) => {
      // A relayed upstream that was lost says so (CC_ERR_RELAY_STREAM_LOST), in the client's protocol.
      if (error instanceof CoatcheckError && !this.#closed) {
        this.#toClient.flush();
        this.#writeClient(
          toErrorResponse(new CoatcheckError(error.code, `coatcheck: ${error.message}`), 'FATAL'),
        );
      }
      end();
    });
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
    if (this.#refusals !== null) this.#writeRefusals(this.#refusals).catch(() => undefined);
    this.#toClient.flush();
    this.#toUpstream.flush();
    this.#client.end();
    this.#upstream.end();
    this.#catalog?.close().catch(() => undefined);
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

  // ---- output ------------------------------------------------------------------------

  #writeClient(bytes: Buffer): void {
    if (this.#client.destroyed) return;
    this.#recording?.clientBytes(bytes);
    if (!this.#client.write(bytes)) {
      this.#upstreamPump.hold('client-full');
      this.#client.once('drain', () => this.#upstreamPump.release('client-full'));
    }
  }

  /** Queue bytes for the upstream; adjacent frames of one client read go out in one write. */
  #writeUpstream(bytes: Buffer): void {
    this.#toUpstream.push(bytes);
  }

  #refusalBytes(code: ErrorCode, message: string, sqlstate?: string): Buffer {
    return errorResponse(sqlstate ?? sqlstateFor(code), message, { detail: code });
  }

  /** Backpressure: while more than MAX_OWED_BYTES wait for a client that does not read, stop reading it. */
  #owedCheck(): void {
    if (this.#client.writableLength <= MAX_OWED_BYTES) return;
    this.#clientPump.hold('client-owes');
    this.#client.once('drain', () => this.#clientPump.release('client-owes'));
  }

  // ---- refusals ----------------------------------------------------------------------

  /**
   * A refusal: audited in a batch with the refusals around it (one record for a burst),
   * answered in its place in the response order once that record is durable. The
   * server fails a stand-in message in the refused message's place, so its transaction
   * and protocol state are what PostgreSQL's own refusal would leave.
   */
  #refuse(
    extended: boolean,
    code: ErrorCode,
    message: string,
    sql: string,
    cls: StatementEvent['class'],
    sqlstate?: string,
  ): void {
    const refusal: Refusal = {
      bytes: this.#refusalBytes(code, message, sqlstate),
      durable: null,
      ready: null,
    };
    this.#record(refusal, sql, cls, code, message);
    if (extended) {
      this.#discarding = true;
      // The stand-in replaces the unnamed statement: so does our model.
      this.#state.statements.delete('');
      this.#expect({ kind: 'refused', refusal });
      this.#writeUpstream(REFUSED_PARSE);
    } else {
      this.#expect({ kind: 'query', runs: [], index: 0, refusal });
      this.#writeUpstream(REFUSED_QUERY);
    }
  }

  #record(
    refusal: Refusal,
    sql: string,
    cls: StatementEvent['class'],
    code: ErrorCode,
    message: string,
  ): void {
    let batch = this.#refusals;
    if (batch === null) {
      batch = { events: new Map(), first: null, count: 0, written: null, done: false };
      this.#refusals = batch;
    }
    const recorded = this.#scrub(sql);
    const rule = message.match(/by rule ([a-z-]+)/)?.[1] ?? null;
    batch.first ??= {
      sql: recorded,
      class: cls,
      decision: 'deny',
      rule,
      code,
      durationMs: 0,
      rows: 0,
      outcome: 'refused',
      tickets: [],
    };
    batch.count++;
    const key = `${code}\0${cls}\0${recorded}`;
    const seen = batch.events.get(key);
    if (seen !== undefined) seen.count++;
    else batch.events.set(key, { sql: recorded, code, class: cls, count: 1 });
    const b = batch;
    refusal.durable = () => this.#writeRefusals(b);
    refusal.ready = () => b.done;
  }

  #writeRefusals(batch: RefusalBatch): Promise<void> {
    if (batch.written !== null) return batch.written;
    if (this.#refusals === batch) this.#refusals = null;
    const listed = [...batch.events.values()];
    const shown = listed.slice(0, MAX_REFUSALS_LISTED);
    this.statements += batch.count;
    batch.written = this.#services
      .onStatement({
        ...batch.first!,
        count: batch.count,
        ...(batch.count > 1 ? { refused: shown } : {}),
        ...(listed.length > shown.length ? { omitted: listed.length - shown.length } : {}),
      })
      .then(() => {
        batch.done = true;
      });
    return batch.written;
  }

  /** Send a refusal's answer once its record is durable (holding the upstream until then). */
  #answerRefusal(refusal: Refusal): void | Promise<void> {
    const durable = refusal.durable!();
    if (refusal.ready?.() === true) {
      this.#toClient.push(refusal.bytes);
      return;
    }
    return durable.then(() => {
      this.#toClient.push(refusal.bytes);
    });
  }

  #scrub(sql: string, ids: ReadonlyMap<string, string> = new Map()): string {
    return scrubStatement(sql.slice(0, MAX_RECORDED_SQL * 2), this.#services.patterns(), ids).slice(
      0,
      MAX_RECORDED_SQL,
    );
  }

  #emit(event: StatementEvent): void {
    this.statements++;
    this.#services.onStatement(event).catch((error: unknown) => this.fail(error));
  }

  // ---- client → upstream -----------------------------------------------------------

  #fromClient(frame: Frame): void | Promise<void> {
    this.#recording?.clientFrame(frame.raw);
    const m = decodeFrontend(frame);
    this.#owedCheck();
    if (this.#discarding && m.type !== 'Sync') {
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
      case 'Describe': {
        const statement = m.kind === 'S' ? (this.#state.statements.get(m.name) ?? null) : null;
        const portal = m.kind === 'P' ? (this.#state.portals.get(m.name) ?? null) : null;
        this.#expect({ kind: 'describe', statement, portal, refusal: null });
        return this.#writeUpstream(frame.raw);
      }
      case 'Close':
        if (m.kind === 'S') this.#state.statements.delete(m.name);
        else this.#state.portals.delete(m.name);
        this.#expect({ kind: 'close', refusal: null });
        return this.#writeUpstream(frame.raw);
      case 'Flush':
        return this.#writeUpstream(frame.raw);
      case 'Sync':
        this.#discarding = false;
        this.#expect({ kind: 'sync', refusal: null });
        return this.#writeUpstream(frame.raw);
      case 'CopyData':
      case 'CopyDone':
      case 'CopyFail':
        return this.#writeUpstream(frame.raw);
      case 'Terminate':
        this.#writeUpstream(frame.raw);
        this.close();
        return;
      case 'FunctionCall':
        // Answered like a simple query (ErrorResponse, ReadyForQuery), as FunctionCall is.
        return this.#refuse(
          false,
          'CC_ERR_PG_UNSUPPORTED',
          'coatcheck: the fast-path FunctionCall message is not carried; use SELECT',
          '(FunctionCall)',
          'unknown',
          '0A000',
        );
      case 'PasswordMessage':
        throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'a password message arrived after login');
    }
  }

  // ---- simple Query ------------------------------------------------------------------

  #query(sql: string, frame: Frame): void | Promise<void> {
    const c = this.#decider.classify(sql);
    if (c instanceof CoatcheckError)
      return this.#refuse(false, c.code, `coatcheck: ${c.message}`, sql, 'unparsable');
    const refusal = checkRules(c, this.#rules, {
      copyOut: c.statements.includes('CopyStmt') && c.class === 'read',
    });
    if (refusal !== null) return this.#refuse(false, refusal.code, refusal.message, sql, c.class);
    const facts = this.#decider.split(sql, c);
    if (facts instanceof CoatcheckError)
      return this.#refuse(false, facts.code, `coatcheck: ${facts.message}`, sql, 'unparsable');
    const tickets = this.#decider.ticketsIn(sql);
    const decided: Decided[] = [];
    // Each statement is decided on its own facts, in order; one refusal refuses the whole
    // Query. Synchronous (no closure, no promise) unless a decision waits for a human.
    for (let i = 0; i < facts.length; i++) {
      const step = this.#decider.decideStatement(facts[i]!, tickets);
      if (step instanceof Promise)
        return this.#queryDecideRest(sql, c, frame, facts, tickets, decided, i, step);
      if ('refused' in step)
        return this.#refuse(false, step.refused.code, step.refused.message, sql, step.refused.cls);
      decided.push(step);
    }
    return this.#queryDecided(sql, c, frame, decided, tickets);
  }

  /** The rest of a Query's decisions once one of them waits (an approval). */
  async #queryDecideRest(
    sql: string,
    c: Classification,
    frame: Frame,
    facts: readonly StatementFacts[],
    tickets: readonly string[],
    decided: Decided[],
    from: number,
    waiting: Promise<DecideStep>,
  ): Promise<void> {
    let step: DecideStep = await waiting;
    for (let i = from; ; ) {
      if ('refused' in step)
        return this.#refuse(false, step.refused.code, step.refused.message, sql, step.refused.cls);
      decided.push(step);
      if (++i >= facts.length) break;
      const next = this.#decider.decideStatement(facts[i]!, tickets);
      step = next instanceof Promise ? await next : next;
    }
    return this.#queryDecided(sql, c, frame, decided, tickets);
  }

  /** Every statement of a Query is allowed: mask by lineage (when masking), then forward. */
  #queryDecided(
    sql: string,
    c: Classification,
    frame: Frame,
    decided: Decided[],
    tickets: readonly string[],
  ): void | Promise<void> {
    if (this.#tracker === null) return this.#queryAllowed(sql, c, frame, decided, tickets);
    // Masking by lineage: after rules and policy, before any ticket is exchanged.
    return this.#decider
      .analyze(
        sql,
        decided.map((d) => d.mask),
      )
      .then((r) => {
        if (!r.ok) return this.#refuse(false, r.code, r.message, sql, c.class);
        const aligned = r.statements.length === decided.length;
        decided.forEach((d, i) => {
          d.lineage = aligned ? r.statements[i]! : UNKNOWN_LINEAGE;
        });
        return this.#queryAllowed(sql, c, frame, decided, tickets);
      });
  }

  #queryAllowed(
    sql: string,
    c: Classification,
    frame: Frame,
    decided: readonly Decided[],
    tickets: readonly string[],
  ): void | Promise<void> {
    if (
      decided.some((d) => d.mask !== undefined && d.mask.length > 0) &&
      c.statements.includes('CopyStmt') &&
      c.class === 'read'
    ) {
      return this.#refuse(
        false,
        'CC_ERR_PG_STATEMENT_DENIED',
        'coatcheck: statement refused by rule mask-columns (COPY TO); a policy masks columns here and COPY output cannot be masked, use SELECT',
        sql,
        c.class,
      );
    }
    if (tickets.length > 0) return this.#queryWithTickets(sql, c, decided);
    return this.#forwardQuery(this.#scrub(sql), decided, frame.raw, []);
  }

  #forwardQuery(
    recorded: string,
    decided: readonly Decided[],
    raw: Buffer,
    tickets: readonly string[],
  ): void {
    const now = this.#services.now();
    const runs: Run[] = decided.map((d) => {
      const policyMask = maskMatcher(d.mask);
      const lineage =
        this.#tracker === null
          ? {}
          : { lineage: d.lineage ?? null, touches: d.lineage?.touchesMasked ?? true };
      const cursor =
        d.facts.fetch === undefined ? null : (this.#state.portals.get(d.facts.fetch.name) ?? null);
      return {
        recorded: decided.length === 1 ? recorded : this.#scrub(d.facts.source),
        cls: d.cls,
        tickets,
        policyMask:
          cursor?.policyMask === null || cursor === null
            ? policyMask
            : unionMask(policyMask, cursor.policyMask),
        portal: cursor,
        startedAt: now,
        rows: 0,
        dropped: 0,
        description: null,
        mask: null,
        ...lineage,
      };
    });
    this.#mirror(decided, runs);
    this.#expect({ kind: 'query', runs, index: 0, refusal: null });
    this.#writeUpstream(raw);
  }

  /** What the statements of a Query do to the server's prepared statements and cursors. */
  #mirror(decided: readonly Decided[], runs: readonly Run[]): void {
    decided.forEach((d, i) => {
      const f = d.facts;
      const s = this.#state;
      if (f.prepare !== undefined) {
        // A name in use makes PostgreSQL refuse the PREPARE and keep the old statement: so do we.
        if (s.statements.has(f.prepare.name)) return;
        const entry: PreparedEntry = {
          name: f.prepare.name,
          recorded: runs[i]!.recorded,
          classification: f.classification,
          kind: f.prepare.kind,
          tables: f.tables,
          functions: f.functions,
          normalized: this.#normalizedOrEmpty(f.source),
          description: null,
        };
        s.statements.set(entry.name, entry);
        runs[i]!.created = entry;
      } else if (f.deallocate !== undefined) {
        if (f.deallocate.name === null) {
          s.statements.clear();
          if (f.node === 'DiscardStmt') s.portals.clear();
        } else s.statements.delete(f.deallocate.name);
      } else if (f.declare !== undefined) {
        s.portals.set(f.declare.name, {
          name: f.declare.name,
          statement: null,
          recorded: runs[i]!.recorded,
          cls: d.cls,
          tickets: runs[i]!.tickets,
          policyMask: runs[i]!.policyMask,
          description: null,
          rows: 0,
        });
      } else if (f.closeCursor !== undefined) {
        if (f.closeCursor.name === null) s.portals.clear();
        else s.portals.delete(f.closeCursor.name);
      }
    });
  }

  #normalizedOrEmpty(source: string): string {
    const n = this.#decider.normalized(source);
    return n instanceof CoatcheckError ? '' : n;
  }

  /** Tickets in a simple query: only inside standard string literals, exchanged (audited) for this agent and connection. */
  async #queryWithTickets(sql: string, c: Classification, decided: readonly Decided[]): Promise<void> {
    const bytes = Buffer.from(sql, 'utf8');
    const found: Array<{ at: number; ticket: string }> = [];
    for (let at = bytes.indexOf('cct_'); at !== -1; at = bytes.indexOf('cct_', at + 1)) {
      const text = bytes.toString('latin1', at, at + TICKET_LENGTH);
      if (isTicket(text)) found.push({ at, ticket: text });
    }
    const outside = found.some(
      ({ at }) => !c.literals.some((l) => l.start < at && at + TICKET_LENGTH < l.end),
    );
    if (outside || !this.#decider.standardStrings) {
      return this.#refuse(
        false,
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
      this.#scrub(sql, exchanged.ids),
      decided,
      encodeFrontend({ type: 'Query', sql: rewritten }),
      [...exchanged.ids.values()],
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
        authorized: this.#authorized,
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
      this.#refuse(extended, e.code, message, sql, cls);
      return null;
    }
  }

  // ---- extended protocol -------------------------------------------------------------

  #parse(m: Extract<FrontendMessage, { type: 'Parse' }>, frame: Frame): void | Promise<void> {
    const c = this.#decider.classify(m.sql);
    if (c instanceof CoatcheckError)
      return this.#refuse(true, c.code, `coatcheck: ${c.message}`, m.sql, 'unparsable');
    const refusal = checkRules(c, this.#rules, {
      copyOut: c.statements.includes('CopyStmt') && c.class === 'read',
    });
    if (refusal !== null) return this.#refuse(true, refusal.code, refusal.message, m.sql, c.class);
    if (m.sql.includes('cct_')) {
      return this.#refuse(
        true,
        'CC_ERR_PG_STATEMENT_DENIED',
        'coatcheck: statement refused by rule ticket-placement; in the extended protocol pass tickets as bound parameters',
        m.sql,
        c.class,
      );
    }
    const facts = this.#decider.split(m.sql, c);
    if (facts instanceof CoatcheckError)
      return this.#refuse(true, facts.code, `coatcheck: ${facts.message}`, m.sql, 'unparsable');
    const f = facts[0];
    const normalized = f === undefined ? '' : this.#decider.normalized(f.source);
    if (normalized instanceof CoatcheckError)
      return this.#refuse(true, normalized.code, `coatcheck: ${normalized.message}`, m.sql, c.class);
    const entry: PreparedEntry = {
      name: m.name,
      recorded: this.#scrub(m.sql),
      classification: c,
      kind: f?.kind ?? 'empty',
      tables: f?.tables ?? [],
      functions: f?.functions ?? [],
      normalized,
      description: null,
    };
    // Decided now only to refuse early: each execution (Bind) is decided again, with its parameters.
    const verdict = this.#decider.decide({
      cls: c.class,
      kind: entry.kind,
      tables: entry.tables,
      functions: entry.functions,
      text: normalized,
      parameters: null,
      tickets: [],
      preparation: true,
    });
    const settle = (v: StatementVerdict): void | Promise<void> => {
      if (!v.allow) return this.#refuse(true, v.code, v.message, m.sql, c.class);
      if (this.#tracker === null) return this.#parseAllowed(entry, frame);
      return this.#decider.analyze(m.sql, [v.mask]).then((r) => {
        if (!r.ok) return this.#refuse(true, r.code, r.message, m.sql, c.class);
        entry.lineage = r.statements.length === 1 ? r.statements[0]! : UNKNOWN_LINEAGE;
        this.#parseAllowed(entry, frame);
      });
    };
    return verdict instanceof Promise ? verdict.then(settle) : settle(verdict);
  }

  #parseAllowed(entry: PreparedEntry, frame: Frame): void {
    // A named statement that exists already: PostgreSQL refuses the Parse and keeps the old one; so do we.
    const existing = entry.name === '' ? undefined : this.#state.statements.get(entry.name);
    if (existing === undefined) this.#state.statements.set(entry.name, entry);
    // The slot holds the new entry: if the server refuses this Parse, only that entry is dropped.
    this.#expect({ kind: 'parse', statement: entry, refusal: null });
    this.#writeUpstream(frame.raw);
  }

  #bind(m: Extract<FrontendMessage, { type: 'Bind' }>, frame: Frame): void | Promise<void> {
    const prepared = this.#state.statements.get(m.statement);
    if (prepared === undefined) {
      return this.#refuse(
        true,
        'CC_ERR_PG_STATEMENT_DENIED',
        `coatcheck: statement refused: prepared statement "${m.statement}" is not known to the gateway`,
        '(Bind)',
        'unknown',
      );
    }
    const found: string[] = [];
    for (const p of m.parameters) {
      if (p === null || p.length < TICKET_LENGTH) continue;
      for (let at = p.indexOf('cct_'); at !== -1; at = p.indexOf('cct_', at + 1)) {
        const text = p.toString('latin1', at, at + TICKET_LENGTH);
        if (isTicket(text)) found.push(text);
      }
    }
    // Each execution is decided with its parameters (and approved, where policy says so).
    const parameters =
      this.#services.statementPolicy === undefined || this.#services.statementPolicy === null
        ? null
        : m.parameters.map((p, i) =>
            renderParameter(
              p,
              m.parameterFormats.length === 1 ? m.parameterFormats[0]! : (m.parameterFormats[i] ?? 0),
            ),
          );
    const verdict = this.#decider.decide({
      cls: prepared.classification.class,
      kind: prepared.kind,
      tables: prepared.tables,
      functions: prepared.functions,
      text: prepared.normalized,
      parameters,
      tickets: found,
      preparation: false,
    });
    const settle = (v: StatementVerdict): void | Promise<void> => {
      if (!v.allow)
        return this.#refuse(true, v.code, v.message, prepared.recorded, prepared.classification.class);
      if (found.length === 0) return this.#bindForward(m, prepared, [], frame.raw, v.mask);
      return this.#bindWithTickets(m, found, prepared, v.mask);
    };
    return verdict instanceof Promise ? verdict.then(settle) : settle(verdict);
  }

  #bindForward(
    m: Extract<FrontendMessage, { type: 'Bind' }>,
    prepared: PreparedEntry,
    tickets: readonly string[],
    raw: Buffer,
    mask: readonly string[] | undefined,
  ): void {
    this.#state.portals.set(m.portal, {
      name: m.portal,
      statement: prepared,
      recorded: prepared.recorded,
      cls: prepared.classification.class,
      tickets,
      policyMask: maskMatcher(mask),
      description: null,
      rows: 0,
    });
    this.#expect({ kind: 'bind', refusal: null });
    this.#writeUpstream(raw);
  }

  async #bindWithTickets(
    m: Extract<FrontendMessage, { type: 'Bind' }>,
    found: readonly string[],
    prepared: PreparedEntry,
    mask: readonly string[] | undefined,
  ): Promise<void> {
    const exchanged = await this.#exchange(found, prepared.recorded, prepared.classification.class, true);
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
    this.#bindForward(m, prepared, [...exchanged.ids.values()], encodeFrontend({ ...m, parameters }), mask);
  }

  #execute(name: string, frame: Frame): void {
    const portal = this.#state.portals.get(name);
    if (portal === undefined) {
      this.#refuse(
        true,
        'CC_ERR_PG_STATEMENT_DENIED',
        `coatcheck: statement refused: portal "${name}" is not known to the gateway`,
        '(Execute)',
        'unknown',
      );
      return;
    }
    this.#expect({
      kind: 'execute',
      run: {
        recorded: portal.recorded,
        cls: portal.cls,
        tickets: portal.tickets,
        policyMask: portal.policyMask,
        portal,
        startedAt: this.#services.now(),
        rows: 0,
        dropped: 0,
        description: portal.description ?? portal.statement?.description ?? null,
        mask: null,
        ...(this.#tracker === null
          ? {}
          : {
              lineage: portal.statement?.lineage ?? null,
              touches: portal.statement?.lineage?.touchesMasked ?? true,
            }),
      },
      refusal: null,
    });
    this.#writeUpstream(frame.raw);
  }

  // ---- upstream → client -----------------------------------------------------------

  /**
   * The one place a result's columns are matched against the masks: by lineage (the
   * statement's plan and the RowDescription's table and column), and by the column
   * patterns of this execution's policy decision.
   */
  #planMask(fields: readonly FieldDescription[], run: Run): MaskPlan {
    const columns =
      this.#tracker === null
        ? new Uint8Array(fields.length)
        : this.#tracker.planColumns(run.lineage ?? UNKNOWN_LINEAGE, fields);
    let any = false;
    fields.forEach((f, i) => {
      if (run.policyMask?.(f.name) === true) columns[i] = 1;
      if (columns[i] === 1) any = true;
    });
    return { columns, any };
  }

  /** Whether the server's errors and notices are withheld now: the running statement reads masked columns. */
  #withholding(): boolean {
    if (this.#tracker === null) return false;
    if (this.#sticky) return true;
    const h = this.#state.head();
    if (h?.kind === 'query') return h.runs[h.index]?.touches === true;
    if (h?.kind === 'execute') return h.run.touches === true;
    return false;
  }

  /**
   * Send one upstream frame through the output inspector: known secrets and detector
   * findings become tickets (the frame itself when nothing changed, undecoded). A throw
   * ends the session (fail closed); the frame is never forwarded then.
   */
  #out(frame: Frame): void | Promise<void> {
    if (!this.#rules.scanSecrets) {
      this.#toClient.push(frame.raw);
      return;
    }
    let out: Buffer | Promise<Buffer>;
    try {
      out = this.#inspector.inspect(frame);
    } catch (error) {
      this.fail(error);
      return;
    }
    if (out instanceof Promise) {
      return out.then(
        (bytes) => {
          if (!this.#closed) this.#toClient.push(bytes);
        },
        (error: unknown) => this.fail(error),
      );
    }
    this.#toClient.push(out);
  }

  #finishRun(run: Run | null, outcome: 'ok' | 'error'): void {
    if (run === null) return;
    this.rows += run.rows;
    this.#emit({
      sql: run.recorded,
      class: run.cls,
      decision: 'allow',
      rule: null,
      code: null,
      durationMs: this.#services.now() - run.startedAt,
      rows: run.rows,
      outcome,
      tickets: run.tickets,
    });
  }

  /** Owe the answer to a forwarded message, unless the server is ignoring messages until Sync. */
  #expect(slot: Slot): void {
    if (!this.#state.expect(slot)) this.#skipped([slot]);
  }

  /** Runs of slots the server skipped (after an error, up to Sync) never ran. */
  #skipped(slots: readonly Slot[]): void {
    for (const s of slots) {
      if (s.kind === 'execute') this.#finishRun(s.run, 'error');
      else if (s.kind === 'query')
        for (const r of s.runs) {
          this.#finishRun(r, 'error');
          // A PREPARE that never ran made no statement.
          if (r.created !== undefined && this.#state.statements.get(r.created.name) === r.created)
            this.#state.statements.delete(r.created.name);
        }
      else if (s.kind === 'parse' && this.#state.statements.get(s.statement.name) === s.statement)
        this.#state.statements.delete(s.statement.name);
      if (s.refusal !== null) {
        // Its refusal is recorded; the client sees the error that made the server skip it.
        s.refusal.durable?.().catch(() => undefined);
      }
    }
  }

  #fromUpstream(frame: Frame): void | Promise<void> {
    switch (frame.code) {
      case 0x44: // DataRow
        return this.#dataRow(frame);
      case 0x54: {
        // RowDescription: the answer to a Describe, or a simple-query statement's columns.
        if (this.#maskingActive) {
          const m = decodeBackend(frame);
          if (m.type !== 'RowDescription') return;
          this.#state.description(m.fields);
        } else this.#state.description([]);
        // Planned from the frame as the server sent it; a column name may hold a secret.
        return this.#out(frame);
      }
      case 0x6e: // NoData
        this.#state.description(null);
        return this.#out(frame);
      case 0x74: // ParameterDescription
        this.#state.parameterDescription();
        return this.#out(frame);
      case 0x31: // ParseComplete
        this.#state.complete('parse');
        return this.#out(frame);
      case 0x32: // BindComplete
        this.#state.complete('bind');
        return this.#out(frame);
      case 0x33: // CloseComplete
        this.#state.complete('close');
        return this.#out(frame);
      case 0x43: // CommandComplete
        return this.#commandComplete(frame);
      case 0x49: // EmptyQueryResponse
      case 0x73: {
        // PortalSuspended
        const { run, slot } = this.#state.endRun();
        if (slot.kind === 'execute') this.#finishRun(run, 'ok');
        this.#afterStatement(run);
        return this.#out(frame);
      }
      case 0x45: // ErrorResponse
        return this.#errorResponse(frame);
      case 0x4e: // NoticeResponse
        return this.#noticeResponse(frame);
      case 0x41: // NotificationResponse
        return this.#notificationResponse(frame);
      case 0x5a: // ReadyForQuery
        return this.#readyForQuery(frame);
      case 0x53: // ParameterStatus
        return this.#parameterStatus(frame);
      case 0x64: // CopyData (COPY TO): text, CSV and binary, inspected as rows are
        return this.#out(frame);
      case 0x52:
      case 0x4b:
        throw new CoatcheckError(
          'CC_ERR_PG_PROTOCOL',
          'the upstream sent an authentication message after login',
        );
      default:
        // CopyOutResponse, CopyBothResponse, CopyDone, ...: they carry the COPY format state.
        return this.#out(frame);
    }
  }

  #errorResponse(frame: Frame): void | Promise<void> {
    // Decided before the slot is answered: the failing statement is the running one.
    const withhold = this.#withholding();
    const { slot, run, skipped } = this.#state.error();
    this.#skipped(skipped);
    if (slot?.kind === 'parse' && this.#state.statements.get(slot.statement.name) === slot.statement)
      this.#state.statements.delete(slot.statement.name);
    if (slot?.kind === 'query') {
      // PREPAREs that did not run (the failed statement and those after it) made no statement.
      const failed = run === null ? slot.runs.length : slot.runs.indexOf(run);
      for (const r of slot.runs.slice(failed))
        if (r.created !== undefined && this.#state.statements.get(r.created.name) === r.created)
          this.#state.statements.delete(r.created.name);
    }
    if (slot !== null && slot.refusal !== null) return this.#answerRefusal(slot.refusal);
    this.#finishRun(run, 'error');
    // A failed `ssn::int` quotes the value, a unique violation the key: no server text survives.
    return this.#out(withhold ? this.#withheld(frame) : frame);
  }

  #noticeResponse(frame: Frame): void | Promise<void> {
    return this.#out(this.#withholding() ? this.#withheld(frame) : frame);
  }

  /** An ErrorResponse or NoticeResponse with only its severity and SQLSTATE kept. */
  #withheld(frame: Frame): Frame {
    const raw = withheldNotice(frame);
    return { code: frame.code, body: raw.subarray(5), raw };
  }

  #notificationResponse(frame: Frame): void | Promise<void> {
    return this.#out(frame);
  }

  #parameterStatus(frame: Frame): void | Promise<void> {
    // Track standard_conforming_strings (ticket placement and normalising depend on it).
    const m = decodeBackend(frame);
    if (m.type === 'ParameterStatus' && m.name === 'standard_conforming_strings')
      this.#decider.standardStrings = m.value === 'on';
    return this.#out(frame);
  }

  #readyForQuery(frame: Frame): void | Promise<void> {
    const m = decodeBackend(frame);
    if (m.type !== 'ReadyForQuery') return;
    const slot = this.#state.ready(m.status);
    // A simple query's statements that got no ErrorResponse and no completion never ran.
    if (slot.kind === 'query')
      for (let i = slot.index; i < slot.runs.length; i++) this.#finishRun(slot.runs[i]!, 'error');
    if (m.status === 'I') {
      this.#sticky = false;
      if (this.#ddlInBlock) {
        // A transaction that ran DDL ended (committed or rolled back): the catalog may differ.
        this.#catalog?.invalidate();
        this.#ddlInBlock = false;
      }
    }
    return this.#out(frame);
  }

  #commandComplete(frame: Frame): void | Promise<void> {
    const { run, slot } = this.#state.endRun();
    if (run !== null && run.dropped > 0) {
      const m = decodeBackend(frame);
      const tag = m.type === 'CommandComplete' ? m.tag.replace(/\d+$/, String(run.rows)) : 'SELECT';
      this.#toClient.push(
        noticeResponse(
          '01000',
          `coatcheck: rule row-limit: ${run.dropped} rows beyond the limit of ${this.#rules.rowLimit} were not returned`,
        ),
      );
      this.#toClient.push(encodeBackend({ type: 'CommandComplete', tag }));
      void slot;
      this.#finishRun(run, 'ok');
      this.#afterStatement(run);
      return;
    }
    void slot;
    this.#finishRun(run, 'ok');
    this.#afterStatement(run);
    return this.#out(frame);
  }

  /** A statement completed: DDL drops the catalog cache; reading masked columns makes the open block withheld. */
  #afterStatement(run: Run | null): void {
    if (run === null || this.#tracker === null) return;
    if (run.cls === 'ddl' || run.cls === 'privilege') {
      this.#catalog?.invalidate();
      this.#ddlInBlock = true;
    }
    // Sticky for the rest of an open transaction block: a deferred constraint fails at COMMIT.
    if (run.touches === true) this.#sticky = true;
  }

  #dataRow(frame: Frame): void | Promise<void> {
    const run = this.#state.rowRun();
    const counted = run.portal ?? run;
    if (this.#rules.rowLimit > 0 && counted.rows >= this.#rules.rowLimit) {
      run.dropped++;
      return;
    }
    if (run.portal !== null) run.portal.rows++;
    run.rows++;
    let mask: MaskPlan | null = null;
    if (this.#maskingActive) {
      if (run.mask === null) {
        const description =
          run.description ?? run.portal?.description ?? run.portal?.statement?.description ?? null;
        if (description === null) {
          throw new CoatcheckError(
            'CC_ERR_PG_MASKING_FAILED',
            'coatcheck: rows arrived for a statement the client never described; with mask rules they cannot be masked, so the session was closed',
          );
        }
        run.description = description;
        run.mask = this.#planMask(description, run);
      }
      mask = (run.mask as MaskPlan).any ? (run.mask as MaskPlan) : null;
    }
    // Mask first, then inspect: masked values are never looked at (nor minted as tickets).
    if (mask === null) return this.#out(frame);
    const values = decodeDataRow(frame.body);
    let changed = false;
    const description = run.description;
    for (let i = 0; i < values.length; i++) {
      if (values[i] === null || mask.columns[i] !== 1) continue;
      values[i] = TEXT_TYPES.has(description?.[i]?.typeOid ?? 0) ? MASK : null;
      changed = true;
    }
    if (!changed) return this.#out(frame);
    const raw = encodeDataRow(values);
    return this.#out({ code: 0x44, body: raw.subarray(5), raw });
  }

  async #scanner(): Promise<ResponseScan> {
    // A new scan when the index changed: a secret added since is in the index, so it must be in the scan too.
    const index = this.#services.outputIndex();
    if (this.#scan === null || this.#scanIndex !== index) {
      this.#scan = await this.#services.pipeline.inspect(
        this.#session,
        this.#principal,
        this.#target,
        this.#exchanged,
      );
      this.#scanIndex = index;
    }
    return this.#scan;
  }

  /** Keep a bounded window of exchanged ticket ids (the most recent statements'). */
  #remember(ticketId: string): void {
    this.#exchanged.delete(ticketId);
    this.#exchanged.add(ticketId);
    if (this.#exchanged.size > 256) this.#exchanged.delete(this.#exchanged.values().next().value!);
  }
}

function unionMask(
  a: ((name: string) => boolean) | null,
  b: ((name: string) => boolean) | null,
): ((name: string) => boolean) | null {
  if (a === null) return b;
  if (b === null) return a;
  return (name) => a(name) || b(name);
}

import { isUtf8 } from 'node:buffer';
import { randomInt, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import { type SecureContext, TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { AuditLog } from '../../audit/audit-log.js';
import type { ConnectionView } from '../../connections/connections.js';
import type { Clock } from '../../core/clock.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import { newId } from '../../core/ids.js';
import { agentRef, type Principal } from '../../core/principal.js';
import { AGENT_KEY_PREFIX, isTicket } from '../../core/ticket-format.js';
import type { Authorized, Cleared } from '../../gateway/authorized.js';
import type { Engine } from '../../gateway/engine.js';
import type { PatternSet } from '../../gateway/inspector.js';
import type { GatewayMetrics } from '../../gateway/metrics.js';
import type { ExchangePipeline } from '../../gateway/pipeline.js';
import { GatewaySession } from '../../gateway/session.js';
import type { UpstreamDialer } from '../../gateway/upstream-dial.js';
import type { Store } from '../../store/types.js';
import type { Target } from '../../vault/destinations.js';
import type { OutputIndex } from './backend-inspect.js';
import { RelaySession, type StatementEvent } from './client-session.js';
import { decodeBackend, decodeFrontend, decodeStartup } from './protocol/decode.js';
import { encodeBackend } from './protocol/encode.js';
import { MAX_PREAUTH_MESSAGE_BYTES, MessageFramer } from './protocol/framer.js';
import { AUTH, type Frame } from './protocol/messages.js';
import { type PostgresRules, rulesFrom } from './rules.js';
import { SocketReader } from './socket-reader.js';
import {
  allowlistedNames,
  OLDEST_SERVER_MAJOR,
  PARSER_MAJOR,
  type SqlClassifier,
  type UpstreamFacts,
} from './sql/classify.js';
import { StatementAudit, StatementAuditTick } from './statement-audit.js';
import type { StatementPolicy } from './statement-policy.js';
import {
  cancelUpstream,
  connectUpstream,
  queryUpstream,
  type Upstream,
  type UpstreamTarget,
  upstreamTarget,
} from './upstream/connect.js';
import { toErrorResponse } from './wire-errors.js';

export interface PostgresEngineOptions {
  readonly maxMessageBytes: number;
  readonly loginTimeoutMs: number;
  readonly upstreamTimeoutMs: number;
  /** The listener's TLS context; null = no TLS offered (SSLRequest answered 'N'). */
  readonly tls: SecureContext | null;
  /** Refuse the cleartext password unless the client connection is TLS (false only for loopback listeners). */
  readonly requireTls: boolean;
  /** Audit every statement (true), or only refused ones. */
  readonly auditStatements: boolean;
  /** How upstream sockets are opened (directly, or through a connection's relay); default: directly. */
  readonly dial?: UpstreamDialer;
}

export interface PostgresEngineServices {
  readonly pipeline: ExchangePipeline;
  readonly classifier: SqlClassifier;
  readonly store: Store;
  readonly audit: AuditLog;
  readonly log: Logger;
  readonly patterns: () => PatternSet;
  /** The output fast-path index (known secrets and detector keywords), current. */
  readonly outputIndex: () => OutputIndex;
  readonly now: () => number;
  readonly clock: Clock;
  /** Per-statement policy and approvals (null: no policy configured). */
  readonly statementPolicy?: StatementPolicy | null;
  /**
   * Whether an agent key may open a session (decided then by the sql:session policy).
   * False under the built-in policy: a key is bound to no connection, so the login needs a ticket.
   */
  readonly keyLoginPermitted?: () => boolean;
  /** Statement counts go here (the process's registry); none in bare test wiring. */
  readonly metrics?: GatewayMetrics;
  /** The driver's error mapping (Mount.fail): anything not deliberate becomes CC_ERR_INTERNAL with a logged incident id. */
  readonly fail?: (error: unknown) => CoatcheckError;
}

/**
 * Client startup parameters forwarded upstream. Anything else (options, role settings,
 * lexing settings) is dropped; client_encoding is checked and pinned (see PINNED).
 */
const FORWARDED_PARAMETERS = new Set([
  'application_name',
  'datestyle',
  'timezone',
  'intervalstyle',
  'extra_float_digits',
]);

/**
 * Settings the gateway pins at upstream login (startup parameters are the session's
 * defaults: RESET and DISCARD ALL return to them). They decide how the server lexes
 * statement text, so the parser and the server read the same bytes the same way.
 */
const PINNED: ReadonlyArray<readonly [string, string]> = [
  ['client_encoding', 'UTF8'],
  ['standard_conforming_strings', 'on'],
  ['backslash_quote', 'safe_encoding'],
];
/** Pinned settings the server reports (ParameterStatus): a change ends the session. */
const REPORTED_PINS = new Map([
  ['client_encoding', 'UTF8'],
  ['standard_conforming_strings', 'on'],
]);

/** client_encoding values a client may ask for: UTF8 (and SQL_ASCII, served as UTF8). Spelling as PostgreSQL normalizes it. */
function acceptedEncoding(value: string): boolean {
  const name = value.toLowerCase().replace(/[^a-z0-9]/g, '');
  return name === 'utf8' || name === 'unicode' || name === 'sqlascii';
}

/** The major version in a server_version string ("15.8 (Debian ...)", "9.6.3"), or null. */
export function serverMajor(version: string | undefined): number | null {
  const m = /^(\d+)(?:\.(\d+))?/.exec(version ?? '');
  if (m === null) return null;
  const major = Number(m[1]);
  return major >= 10 ? major : null;
}

/** The text part of a Query or Parse body (statement name and text; Parse's parameter OIDs are binary). */
function statementText(frame: Frame): Buffer | null {
  if (frame.code === 0x51) return frame.body;
  if (frame.code !== 0x50) return null;
  const name = frame.body.indexOf(0);
  const end = name === -1 ? -1 : frame.body.indexOf(0, name + 1);
  return end === -1 ? frame.body : frame.body.subarray(0, end);
}

interface CancelKey {
  readonly secret: number;
  readonly target: UpstreamTarget;
  readonly processId: number;
  readonly secretKey: number;
}

interface Client {
  socket: Socket;
  readonly reader: SocketReader;
  tls: boolean;
  readonly remote: string;
  /** Called once the client has logged in (the listener stops counting it as a pending login). */
  onAuthenticated?: () => void;
}

interface Login {
  readonly principal: Principal;
  readonly view: ConnectionView;
  readonly rules: PostgresRules;
  readonly upstream: UpstreamTarget;
  readonly target: Target;
  /** The upstream password: the secret the ticket stood for, or the connection's credential. */
  readonly password: Buffer;
  /** The login's policy decision (sql:session): tickets in the session's SQL are exchanged under it. */
  readonly authorized: Authorized;
  /** The same, its audit record durable: the upstream connection is opened only with it. */
  readonly cleared: Cleared;
  /** When the login's ticket (or its parent chain) or the agent's key expires; the session ends then. */
  readonly expiresAt: number | null;
  readonly expiryCode: ErrorCode;
}

function loginFailed(reason: ErrorCode, message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_PG_LOGIN_FAILED', message, { details: { reason } });
}

/**
 * The PostgreSQL engine: handshake (SSLRequest, GSSENCRequest, CancelRequest,
 * StartupMessage), login with a ticket or agent key as the password, upstream login
 * with the connection's credential, then the relay (client-session.ts).
 */
export class PostgresEngine implements Engine<Client> {
  readonly name = 'postgres';
  readonly #services: PostgresEngineServices;
  readonly #options: PostgresEngineOptions;
  readonly #cancels = new Map<number, CancelKey>();
  readonly live = new Set<RelaySession>();
  readonly #statementTick = new StatementAuditTick(StatementAudit.BATCH_MS);

  constructor(services: PostgresEngineServices, options: PostgresEngineOptions) {
    this.#services = services;
    this.#options = options;
  }

  /** Wrap an accepted socket. */
  client(socket: Socket): Client {
    return {
      socket,
      reader: new SocketReader(
        socket,
        // Until the client has logged in, every message is small (a password is a ticket or a key).
        new MessageFramer({
          startup: true,
          maxMessageBytes: Math.min(MAX_PREAUTH_MESSAGE_BYTES, this.#options.maxMessageBytes),
        }),
      ),
      tls: false,
      remote: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? 0}`,
    };
  }

  async initialize(_client: Client): Promise<void> {
    // The handshake needs the whole startup exchange; `handle` runs it.
  }

  sendError(client: Client, error: CoatcheckError): void {
    if (!client.socket.destroyed) client.socket.end(toErrorResponse(error, 'FATAL'));
  }

  /** Serve one client connection to its end. Never throws: failures become a FATAL ErrorResponse and a close. */
  async handle(client: Client): Promise<void> {
    const timer = setTimeout(() => {
      this.sendError(client, new CoatcheckError('CC_ERR_PG_PROTOCOL', 'coatcheck: login timed out'));
      client.socket.destroy();
    }, this.#options.loginTimeoutMs);
    let session: GatewaySession | null = null;
    try {
      const startup = await this.#startup(client);
      if (startup === null) return;
      session = this.#services.pipeline.openSession(new GatewaySession('postgres', this.#services.clock));
      session.event('connected', { remote: client.remote, tls: client.tls });
      const login = await this.#login(client, session, startup);
      clearTimeout(timer);
      client.onAuthenticated?.();
      await this.#relay(client, session, login, startup);
    } catch (error) {
      clearTimeout(timer);
      const e = this.#deliberate(error);
      session?.event('session.error', { code: e.code });
      this.sendError(client, e);
      if (session !== null) this.#services.pipeline.closeSession(session, e.code, {});
    } finally {
      clearTimeout(timer);
    }
  }

  #deliberate(error: unknown): CoatcheckError {
    if (error instanceof CoatcheckError) return error;
    if (this.#services.fail !== undefined) return this.#services.fail(error);
    const incident = newId('inc');
    this.#services.log.error(
      { incident, errName: (error as Error)?.name },
      'postgres front-end: unexpected failure',
    );
    return new CoatcheckError('CC_ERR_INTERNAL', `coatcheck: internal error (incident ${incident})`, {
      details: { incident },
    });
  }

  /** The startup exchange. Returns the StartupMessage parameters, or null when the connection was a cancel. */
  async #startup(client: Client): Promise<Map<string, string> | null> {
    let sslAsked = false;
    let gssAsked = false;
    for (;;) {
      const m = decodeStartup(await client.reader.next());
      switch (m.type) {
        case 'SSLRequest': {
          if (sslAsked || client.tls) throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'SSLRequest sent twice');
          sslAsked = true;
          if (this.#options.tls === null) {
            client.socket.write('N');
            continue;
          }
          // Bytes pipelined after SSLRequest would be read as if they came over TLS: refuse them.
          if (client.reader.framer.pending > 0)
            throw new CoatcheckError(
              'CC_ERR_PG_PROTOCOL',
              'data was sent after SSLRequest before the answer',
            );
          client.socket.write('S');
          await this.#upgrade(client);
          continue;
        }
        case 'GSSENCRequest':
          if (gssAsked) throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'GSSENCRequest sent twice');
          gssAsked = true;
          client.socket.write('N');
          continue;
        case 'CancelRequest':
          await this.#cancel(m.processId, m.secretKey);
          client.socket.destroy();
          return null;
        case 'StartupMessage': {
          const parameters = new Map<string, string>();
          for (const [k, v] of m.parameters) parameters.set(k, v);
          if (parameters.has('replication')) {
            throw new CoatcheckError(
              'CC_ERR_PG_UNSUPPORTED',
              'coatcheck: replication connections are not carried',
            );
          }
          const encoding = parameters.get('client_encoding');
          if (encoding !== undefined && !acceptedEncoding(encoding)) {
            throw new CoatcheckError(
              'CC_ERR_PG_ENCODING_UNSUPPORTED',
              'coatcheck: client_encoding must be UTF8; the gateway reads statements as UTF-8',
            );
          }
          const unrecognized = m.parameters.map(([k]) => k).filter((k) => k.startsWith('_pq_.'));
          if (m.minor > 0 || unrecognized.length > 0) {
            client.socket.write(
              encodeBackend({ type: 'NegotiateProtocolVersion', newestMinor: 0, unrecognized }),
            );
          }
          client.reader.framer.expectStartup = false;
          return parameters;
        }
      }
    }
  }

  async #upgrade(client: Client): Promise<void> {
    const tls = new TLSSocket(client.socket, { isServer: true, secureContext: this.#options.tls! });
    client.reader.switchTo(tls);
    await new Promise<void>((resolve, reject) => {
      tls.once('secure', () => resolve());
      tls.once('error', (error) =>
        reject(new CoatcheckError('CC_ERR_PG_PROTOCOL', 'the TLS handshake failed', { cause: error })),
      );
    });
    client.socket = tls;
    client.tls = true;
  }

  async #cancel(processId: number, secretKey: number): Promise<void> {
    const key = this.#cancels.get(processId);
    const given = Buffer.alloc(4);
    given.writeInt32BE(secretKey);
    const expected = Buffer.alloc(4);
    expected.writeInt32BE(key?.secret ?? 0);
    // Unknown or wrong keys are dropped silently, as PostgreSQL does.
    if (key === undefined || !timingSafeEqual(given, expected)) return;
    await cancelUpstream(
      key.target,
      key.processId,
      key.secretKey,
      this.#options.upstreamTimeoutMs,
      this.#options.dial,
    ).catch(() => undefined);
  }

  async #login(client: Client, session: GatewaySession, parameters: Map<string, string>): Promise<Login> {
    const user = parameters.get('user') ?? '';
    const database = parameters.get('database') || user;
    if (this.#options.requireTls && !client.tls) {
      throw new CoatcheckError(
        'CC_ERR_PG_TLS_REQUIRED',
        'coatcheck: this listener requires TLS before the password is sent (use sslmode=require)',
      );
    }
    client.socket.write(
      encodeBackend({ type: 'Authentication', code: AUTH.CleartextPassword, data: Buffer.alloc(0) }),
    );
    const m = decodeFrontend(await client.reader.next());
    if (m.type !== 'PasswordMessage')
      throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'expected a password message');
    const nul = m.data.indexOf(0);
    if (nul !== m.data.length - 1)
      throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'malformed password message');
    const password = m.data.toString('utf8', 0, nul);
    const shown = user.slice(0, 64);
    try {
      // `<connection>` or `<connection>/<database>` (when the connection lists the database).
      const slash = database.indexOf('/');
      const connectionName = slash === -1 ? database : database.slice(0, slash);
      const chosen = slash === -1 ? null : database.slice(slash + 1);
      const view = await this.#services.pipeline.services.connections.get(connectionName);
      if (view === null || view.type !== 'postgres') {
        throw new CoatcheckError(
          'CC_ERR_PG_DATABASE_INVALID',
          `coatcheck: there is no postgres connection named ${connectionName.slice(0, 64)}`,
          { details: { connection: connectionName.slice(0, 64) } },
        );
      }
      if (chosen !== null) {
        const allowed = rulesFrom(view.rules).databases;
        const valid = /^[A-Za-z0-9_][A-Za-z0-9_$-]{0,62}$/.test(chosen);
        if (!valid || !(allowed.includes('*') || allowed.includes(chosen))) {
          throw new CoatcheckError(
            'CC_ERR_PG_DATABASE_INVALID',
            `coatcheck: connection ${view.name} does not allow database ${valid ? chosen : '(invalid name)'}`,
            { details: { connection: view.name } },
          );
        }
      }
      session.connection = view.name;
      await this.#services.pipeline.beginRecording(session, view);
      const upstream =
        chosen === null
          ? { ...upstreamTarget(view.url, view.name), via: view.via }
          : { ...upstreamTarget(view.url, view.name), database: chosen, via: view.via };
      const target: Target = { connection: view.name, host: upstream.host, port: upstream.port };
      const agent = await this.#services.store.getAgentByName(user);
      const now = this.#services.now();
      if (agent === null)
        throw loginFailed('CC_ERR_AGENT_UNKNOWN', `coatcheck: login refused: no agent named ${shown}`);
      if (agent.revokedAt !== null)
        throw loginFailed('CC_ERR_AGENT_REVOKED', `coatcheck: login refused: agent ${agent.id} was revoked`);
      if (agent.expiresAt !== null && agent.expiresAt <= now)
        throw loginFailed(
          'CC_ERR_AGENT_EXPIRED',
          `coatcheck: login refused: the key of agent ${agent.id} has expired`,
        );
      // Opening a session is decided like a session statement (policy action sql:session).
      const operation = {
        action: 'sql:session',
        description: `postgres login to ${view.name}`,
        attributes: { sql_class: 'login' },
      };
      let principal: Principal;
      let secret: Buffer;
      let authorized: Authorized;
      let cleared: Cleared;
      let expiresAt: number | null = agent.expiresAt;
      let expiryCode: ErrorCode = 'CC_ERR_AGENT_EXPIRED';
      if (password.startsWith(AGENT_KEY_PREFIX)) {
        if (!(this.#services.keyLoginPermitted?.() ?? false)) {
          throw loginFailed(
            'CC_ERR_PG_KEY_LOGIN_NOT_PERMITTED',
            `coatcheck: login refused: an agent key does not open connection ${view.name} under the built-in policy; log in with a ticket issued to ${shown} for this connection`,
          );
        }
        principal = await this.#services.pipeline.services.agents
          .authenticate(password)
          .catch((error: unknown) => {
            const code = error instanceof CoatcheckError ? error.code : 'CC_ERR_INTERNAL';
            throw loginFailed(code, `coatcheck: login refused: the agent key was not accepted (${code})`);
          });
        if (principal.ref !== agentRef(agent.id))
          throw loginFailed(
            'CC_ERR_AGENT_UNKNOWN',
            `coatcheck: login refused: the agent key is not the key of ${shown}`,
          );
        session.principal = principal;
        const decision = await this.#services.pipeline.decide(session, {
          principal,
          connection: view,
          target,
          operation,
        });
        if (view.credential === null) {
          throw loginFailed(
            'CC_ERR_PG_LOGIN_FAILED',
            `coatcheck: connection ${view.name} has no credential; log in with a ticket instead of an agent key`,
          );
        }
        const released = await this.#services.pipeline.releaseCredential(session, view, view.credential, {
          authorized: decision,
          principal,
          target,
          operation,
        });
        // The login decision's record shares the release's group commit; it too must be durable.
        cleared = await this.#services.pipeline.clear(session, decision);
        authorized = decision;
        secret = released.value.reveal();
      } else if (isTicket(password)) {
        principal = {
          kind: 'agent',
          ref: agentRef(agent.id),
          name: agent.name,
          groups: agent.groups,
          attributes: {},
          expiresAt: agent.expiresAt,
        };
        session.principal = principal;
        const decision = await this.#services.pipeline.decide(session, {
          principal,
          connection: view,
          target,
          operation,
        });
        const released = await this.#services.pipeline
          .exchange(session, [password], { authorized: decision, principal, target, operation })
          .catch((error: unknown) => {
            const code = error instanceof CoatcheckError ? error.code : 'CC_ERR_INTERNAL';
            const why = error instanceof CoatcheckError ? error.message : 'exchange failed';
            throw loginFailed(code, `coatcheck: login refused: ${why} (${code})`);
          });
        cleared = await this.#services.pipeline.clear(session, decision);
        authorized = decision;
        const exchanged = released.get(password)!;
        secret = exchanged.value.reveal();
        const ticketExpiry = await this.#ticketExpiry(exchanged.ticketId);
        if (ticketExpiry !== null && (expiresAt === null || ticketExpiry < expiresAt)) {
          expiresAt = ticketExpiry;
          expiryCode = 'CC_ERR_TICKET_EXPIRED';
        }
      } else {
        throw loginFailed(
          'CC_ERR_TICKET_MALFORMED',
          'coatcheck: login refused: the password must be a ticket (cct_...) or an agent key (cca_...)',
        );
      }
      session.event('authenticated', { principal: principal.ref, connection: view.name, tls: client.tls });
      return {
        principal,
        view,
        rules: rulesFrom(view.rules),
        upstream,
        target,
        password: secret,
        authorized,
        cleared,
        ...(principal.expiresAt !== null && (expiresAt === null || principal.expiresAt < expiresAt)
          ? { expiresAt: principal.expiresAt, expiryCode: 'CC_ERR_AGENT_EXPIRED' as const }
          : { expiresAt, expiryCode }),
      };
    } catch (error) {
      const e = error instanceof CoatcheckError ? error : null;
      await this.#services.audit.append({
        type: 'postgres.login.refused',
        actor: session.principal?.ref ?? 'unauthenticated',
        data: {
          session: session.id,
          user: shown,
          connection: database.slice(0, 64),
          code: e?.code ?? 'CC_ERR_INTERNAL',
          reason: (e?.details?.reason as string | undefined) ?? e?.code ?? 'CC_ERR_INTERNAL',
          remote: client.remote,
        },
      });
      throw error;
    }
  }

  /** The earliest expiry along a ticket's parent chain (a child dies with its parent), or null. */
  async #ticketExpiry(ticketId: string): Promise<number | null> {
    let earliest: number | null = null;
    let id: string | null = ticketId;
    for (let depth = 0; id !== null && depth < 64; depth++) {
      const record = await this.#services.store.getTicketById(id);
      if (record === null) break;
      if (record.expiresAt !== null)
        earliest = earliest === null ? record.expiresAt : Math.min(earliest, record.expiresAt);
      id = record.parentId;
    }
    return earliest;
  }

  /** End the session (FATAL, as a revocation does) when its login ticket or the agent's key expires. */
  #endAtExpiry(session: GatewaySession, expiresAt: number | null, code: ErrorCode): void {
    if (expiresAt === null) return;
    const left = expiresAt - this.#services.now();
    if (left <= 0) {
      session.terminate(code);
      return;
    }
    if (left > 2_147_000_000) return; // beyond a timer's range; revocation events still apply
    const timer = setTimeout(() => session.terminate(code), left);
    timer.unref();
    session.cleanups.push(() => clearTimeout(timer));
  }

  /**
   * What the upstream reads differently from the parser: its version (the parser is
   * PostgreSQL 17's grammar), allowlisted function names it defines outside pg_catalog or
   * lacks in pg_catalog, and operators it defines outside pg_catalog.
   */
  async #upstreamFacts(upstream: Upstream): Promise<UpstreamFacts> {
    const reported = new Map(upstream.parameters);
    const major = serverMajor(reported.get('server_version'));
    if (major === null || major < OLDEST_SERVER_MAJOR || major > PARSER_MAJOR) {
      throw new CoatcheckError(
        'CC_ERR_PG_UPSTREAM_VERSION',
        `coatcheck: the upstream reports server version ${major ?? 'unknown'}; the gateway reads PostgreSQL ${OLDEST_SERVER_MAJOR} to ${PARSER_MAJOR}`,
        { details: { major } },
      );
    }
    for (const [name, value] of REPORTED_PINS) {
      if (reported.get(name) !== value) {
        throw new CoatcheckError(
          'CC_ERR_PG_UPSTREAM_VERSION',
          `coatcheck: the upstream session did not take the pinned setting ${name}`,
          { details: { setting: name } },
        );
      }
    }
    const names = allowlistedNames();
    const list = `'{${names.join(',')}}'::pg_catalog.text[]`;
    const rows = await queryUpstream(
      upstream,
      // Objects of installed extensions (citext's lower, hstore's =) are the operator's vetted code, not the agent's.
      `SELECT 'user', p.proname::pg_catalog.text FROM pg_catalog.pg_proc p WHERE p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace AND p.proname::pg_catalog.text = ANY (${list}) AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e') GROUP BY 2
       UNION ALL SELECT 'catalog', p.proname::pg_catalog.text FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace AND p.proname::pg_catalog.text = ANY (${list}) GROUP BY 2
       UNION ALL SELECT 'operator', o.oprname::pg_catalog.text FROM pg_catalog.pg_operator o WHERE o.oprnamespace <> 'pg_catalog'::pg_catalog.regnamespace AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND d.objid = o.oid AND d.deptype = 'e') GROUP BY 2`,
      this.#options.upstreamTimeoutMs,
    );
    const inCatalog = new Set<string>();
    const shadowed = new Set<string>();
    const operators = new Set<string>();
    for (const [kind, name] of rows) {
      if (name === null || name === undefined) continue;
      if (kind === 'user') shadowed.add(name);
      else if (kind === 'catalog') inCatalog.add(name);
      else operators.add(name);
    }
    for (const name of names) if (!inCatalog.has(name)) shadowed.add(name);
    return { major, shadowed, operators };
  }

  async #relay(
    client: Client,
    session: GatewaySession,
    login: Login,
    parameters: Map<string, string>,
  ): Promise<void> {
    const forwarded: Array<readonly [string, string]> = [];
    for (const [k, v] of parameters) if (FORWARDED_PARAMETERS.has(k.toLowerCase())) forwarded.push([k, v]);
    forwarded.push(...PINNED);
    if (login.rules.searchPath !== null) forwarded.push(['search_path', login.rules.searchPath]);
    // A read-only connection's sessions are read-only on the server too; no statement may lift it.
    if (login.rules.readOnly) forwarded.push(['default_transaction_read_only', 'on']);
    this.#services.pipeline.forwarding(session, login.cleared);
    const upstream = await connectUpstream(login.upstream, login.password, {
      timeoutMs: this.#options.upstreamTimeoutMs,
      parameters: forwarded,
      ...(this.#options.dial === undefined ? {} : { dial: this.#options.dial }),
    });
    let facts: UpstreamFacts;
    try {
      facts = await this.#upstreamFacts(upstream);
    } catch (error) {
      upstream.socket.destroy();
      throw error;
    }
    // The server reports a pinned setting it changed (a function calling set_config, say): end the session.
    upstream.framer.watch = (frame) => {
      if (frame.code !== 0x53) return;
      const m = decodeBackend(frame);
      if (m.type !== 'ParameterStatus') return;
      const pinned = REPORTED_PINS.get(m.name);
      const liftsReadOnly =
        login.rules.readOnly && m.name === 'default_transaction_read_only' && m.value !== 'on';
      if ((pinned !== undefined && m.value !== pinned) || liftsReadOnly) {
        throw new CoatcheckError(
          'CC_ERR_PG_SETTING_PINNED',
          `coatcheck: the session was ended: the upstream reports ${m.name} changed, a setting the gateway pins`,
          { details: { setting: m.name } },
        );
      }
    };
    // Statement text the parser and the server could read differently is refused: it must be UTF-8.
    client.reader.framer.watch = (frame) => {
      const text = statementText(frame);
      if (text !== null && !isUtf8(text)) {
        throw new CoatcheckError(
          'CC_ERR_PG_TEXT_INVALID',
          'coatcheck: the session was ended: statement text is not valid UTF-8',
        );
      }
    };
    client.reader.framer.maxMessageBytes = this.#options.maxMessageBytes;
    this.#endAtExpiry(session, login.expiresAt, login.expiryCode);
    let processId = randomInt(1, 2 ** 31 - 1);
    while (this.#cancels.has(processId)) processId = randomInt(1, 2 ** 31 - 1);
    const secret = randomInt(-(2 ** 31), 2 ** 31 - 1);
    this.#cancels.set(processId, {
      secret,
      target: login.upstream,
      processId: upstream.processId,
      secretKey: upstream.secretKey,
    });
    const hello: Buffer[] = [encodeBackend({ type: 'Authentication', code: AUTH.Ok, data: Buffer.alloc(0) })];
    for (const [name, value] of upstream.parameters)
      hello.push(encodeBackend({ type: 'ParameterStatus', name, value }));
    hello.push(encodeBackend({ type: 'BackendKeyData', processId, secretKey: secret }));
    hello.push(encodeBackend({ type: 'ReadyForQuery', status: 'I' }));
    client.reader.detach();
    client.socket.setNoDelay?.(true);
    const statements = new StatementAudit(
      this.#services.audit,
      login.principal.ref,
      {
        session: session.id,
        connection: login.view.name,
      },
      this.#statementTick,
    );
    const relay = new RelaySession(client.socket, client.reader.framer, upstream, {
      services: {
        pipeline: this.#services.pipeline,
        classifier: this.#services.classifier.forUpstream(facts),
        now: this.#services.now,
        patterns: this.#services.patterns,
        outputIndex: this.#services.outputIndex,
        statementPolicy: this.#services.statementPolicy ?? null,
        onStatement: (event: StatementEvent) => {
          this.#services.metrics?.statements.inc(
            { frontend: 'postgres', class: event.class, outcome: event.outcome },
            event.count ?? 1,
          );
          session.event('statement', { ...event });
          if (!this.#options.auditStatements && event.decision === 'allow') return Promise.resolve();
          return statements.add(event);
        },
      },
      session,
      principal: login.principal,
      authorized: login.authorized,
      target: login.target,
      rules: login.rules,
      // Lineage reads the upstream catalog over its own connection, with the login's credentials.
      upstream: { target: login.upstream, password: login.password },
    });
    statements.onFailure = (error) => relay.fail(error);
    this.live.add(relay);
    client.socket.write(Buffer.concat(hello));
    session.event('upstream', { tls: upstream.tls });
    try {
      await relay.run();
    } finally {
      // Statements are forwarded before their batched record is durable (the session ends
      // when a timed flush fails); the last batch, written as the session ends, can fail
      // too: the session's outcome then says its statements were not all audited.
      let auditLost = false;
      await statements.flush().catch((error: unknown) => {
        auditLost = true;
        this.#services.log.error(
          { session: session.id, errName: (error as Error)?.name },
          'postgres: statement audit failed',
        );
      });
      this.live.delete(relay);
      this.#cancels.delete(processId);
      this.#services.pipeline.closeSession(
        session,
        session.terminatedBy ?? (auditLost ? 'CC_ERR_AUDIT_UNAVAILABLE' : 'ok'),
        {
          statements: relay.statements,
          rows: relay.rows,
          ...(auditLost ? { statementAudit: 'lost' } : {}),
        },
      );
    }
  }
}

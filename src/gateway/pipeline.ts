import type { Logger } from 'pino';
import type { AuditLog } from '../audit/audit-log.js';
import type { Connections, ConnectionView } from '../connections/connections.js';
import { connectionTarget, secretRefs } from '../connections/connections.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError, type ErrorCode } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import type { SessionRecordings } from '../recording/recordings.js';
import type { Store } from '../store/types.js';
import { formatDestination, isLoopbackHost, parseDestination, type Target } from '../vault/destinations.js';
import type { Placement } from '../vault/placements.js';
import { type Exchange, type Vault, workflowTags } from '../vault/vault.js';
import {
  type Authorized,
  type Cleared,
  checkAuthorized,
  checkCleared,
  clearAuthorized,
  makeAuthorized,
} from './authorized.js';
import { type ExchangeStep, recordingHook, type SessionHooks } from './hooks.js';
import type { InspectionContext, ResponseInspector, ResponseScan } from './inspector.js';
import type { GatewayMetrics } from './metrics.js';
import { type GatewaySession, LiveSessions, type Recorder } from './session.js';

/** What the client asked to do, classified (HTTP method + host + path; later SQL kind, tool name). */
export interface Operation {
  /** Policy action: `http:GET`, `sql:select`, `mcp:call`. */
  readonly action: string;
  /** Human-readable, non-secret description for audit (`GET api.github.com/user`). */
  readonly description: string;
  readonly attributes: Readonly<Record<string, string>>;
  /**
   * The exact operation for an approver (raw: the approvals module cleans it), built only
   * when a human must decide. Display only; the attributes bind the approval.
   */
  readonly preview?: () => string;
}

export interface DecisionInput {
  readonly principal: Principal;
  readonly connection: ConnectionView;
  readonly target: Target;
  readonly operation: Operation;
  /** The session id (for audit correlation) and its signal (aborted on revocation or client exit: stop waiting for approvals). */
  readonly session: string;
  readonly signal: AbortSignal;
}

export interface Decision {
  readonly verdict: 'allow' | 'deny';
  /** Policy ids or reasons; recorded and audited. */
  readonly reasons: readonly string[];
  /** The decision's audit record; front-ends await it before forwarding anything. */
  readonly recorded?: Promise<unknown>;
  /** Obligations from policy: field or column patterns to mask. */
  readonly mask?: readonly string[];
}

/** Who is asking: agent keys and OIDC JWTs (src/identity/identity.ts) both fit. */
export interface Authenticator {
  authenticate(credential: string): Promise<Principal>;
}

/** The workflow and subtask ids in an error's details, when it names them. */
function workflowIds(details: Readonly<Record<string, unknown>> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof details?.workflow === 'string') out.workflow = details.workflow;
  if (typeof details?.subtask === 'string') out.subtask = details.subtask;
  return out;
}

/**
 * Where a ticket handed back in a response may go: the connection it came from, and only
 * that connection (a host destination would also reach every other connection to the same
 * host). With no connection (the forward proxy to an unregistered host): that host and port.
 */
function responseDestinations(target: Target): string[] {
  if (target.connection !== undefined) return [`conn:${target.connection}`];
  if (target.host === undefined || target.port === undefined) return [];
  // Plain http to a non-loopback host: nowhere (a found secret's destinations may not say
  // http:// there without the operator's --allow-plaintext).
  if (target.scheme === 'http' && !isLoopbackHost(target.host)) return [];
  try {
    // Scheme and port too: a found secret must not make every port of the host releasable.
    const scheme = target.scheme === 'http' ? 'http://' : 'https://';
    return [formatDestination(parseDestination(`host:${scheme}${target.host}:${target.port}`))];
  } catch {
    return []; // not a host pattern (an IPv6 literal): the ticket goes nowhere
  }
}

/** The policy step: `createPolicyDecide` (Cedar + approvals) in production; tests may pass their own. */
export type Decide = (input: DecisionInput) => Promise<Decision>;

/** Everything a front-end needs. Required at construction, checked there: a wiring fault fails at start. */
export interface GatewayServices {
  readonly vault: Vault;
  readonly agents: Authenticator;
  readonly connections: Connections;
  readonly audit: AuditLog;
  readonly store: Store;
  readonly clock: Clock;
  readonly log: Logger;
  readonly metrics: GatewayMetrics;
  readonly recorder: Recorder;
  readonly inspector: ResponseInspector;
  readonly decide: Decide;
  /**
   * Called at session open, at each exchange step and at close (the gateway driver passes
   * its metrics and recording hooks). Without it, closed sessions go to `recorder`.
   */
  readonly hooks?: SessionHooks;
  /** Session recordings (ADR 0018): the mode per connection and the full recordings' writer. Without it, metadata only. */
  readonly recordings?: SessionRecordings;
}

const REQUIRED: readonly (keyof GatewayServices)[] = [
  'vault',
  'agents',
  'connections',
  'audit',
  'store',
  'clock',
  'log',
  'metrics',
  'recorder',
  'inspector',
  'decide',
];

export function checkServices(services: Partial<GatewayServices>): GatewayServices {
  const missing = REQUIRED.filter((key) => services[key] === undefined || services[key] === null);
  if (missing.length > 0) {
    throw new CoatcheckError(
      'CC_ERR_GATEWAY_MISCONFIGURED',
      `the gateway was started without: ${missing.join(', ')}`,
      { details: { missing } },
    );
  }
  return services as GatewayServices;
}

/** Codes that mean the gateway failed (not the agent): each one is logged when a session ends with it. */
const GATEWAY_FAULTS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'CC_ERR_AUDIT_UNAVAILABLE',
  'CC_ERR_STORE_CORRUPT',
  'CC_ERR_STORE_UNAVAILABLE',
  'CC_ERR_GATEWAY_INSPECTION_FAILED',
]);

export interface ResolvedConnection {
  readonly view: ConnectionView;
  readonly url: URL;
  readonly target: Target;
}

/**
 * The shared exchange pipeline. Front-ends call its steps in this order:
 *
 *   openSession → authenticate → resolveConnection → (front-end classifies) → decide
 *   → exchange (tickets; each release audited durably before it returns: fail closed)
 *   → credentials (connection's injected headers, audited the same way)
 *   → (front-end forwards) → inspect (response secrets become tickets) → closeSession (record)
 *
 * Refusals are audited here (authentication, policy) or by the vault (tickets).
 */
export class ExchangePipeline {
  readonly services: GatewayServices;
  readonly live: LiveSessions;
  readonly #frontend: string;
  readonly #hooks: SessionHooks;

  constructor(frontend: string, services: Partial<GatewayServices>) {
    this.services = checkServices(services);
    this.#frontend = frontend;
    this.#hooks = this.services.hooks ?? recordingHook(this.services.recorder);
    this.live = new LiveSessions(this.services.store, this.services.vault, this.services.log);
  }

  #step(session: GatewaySession, step: ExchangeStep): void {
    this.#hooks.exchange(session, step);
  }

  close(): void {
    this.live.close();
  }

  openSession(session: GatewaySession): GatewaySession {
    this.live.add(session);
    this.#hooks.open(session);
    return session;
  }

  /** Authenticate an agent key. Refusals are audited with the code, never the key. */
  async authenticate(session: GatewaySession, key: string | null): Promise<Principal> {
    if (key === null) {
      throw new CoatcheckError(
        'CC_ERR_HTTP_PROXY_AUTH_REQUIRED',
        'an agent key is required (Proxy-Authorization: Bearer <agent key>)',
      );
    }
    try {
      const principal = await this.services.agents.authenticate(key);
      session.principal = principal;
      this.#endAtExpiry(session, principal);
      session.event('authenticated', { principal: principal.ref });
      return principal;
    } catch (error) {
      const code = error instanceof CoatcheckError ? error.code : 'CC_ERR_INTERNAL';
      await this.services.audit.append({
        type: 'gateway.auth.refused',
        actor: 'unauthenticated',
        data: {
          frontend: this.#frontend,
          session: session.id,
          code,
          presented: this.services.vault.fingerprint(key.slice(0, 256)),
          // A subtask key that no longer works names its node, so `workflow show` lists the attempt.
          ...(error instanceof CoatcheckError && code.startsWith('CC_ERR_WORKFLOW_')
            ? workflowIds(error.details)
            : {}),
        },
      });
      throw error;
    }
  }

  /**
   * A short-lived identity (an OIDC token, an expiring agent key) must not outlive itself
   * inside a long session: the session ends when the identity does.
   */
  #endAtExpiry(session: GatewaySession, principal: Principal): void {
    if (principal.expiresAt === null) return;
    const left = principal.expiresAt - this.services.clock.now();
    const code =
      principal.kind === 'oidc'
        ? 'CC_ERR_OIDC_EXPIRED'
        : principal.kind === 'subtask'
          ? 'CC_ERR_WORKFLOW_EXPIRED'
          : 'CC_ERR_AGENT_EXPIRED';
    if (left <= 0) {
      session.terminate(code);
      return;
    }
    // Timers cap at about 24.8 days; an identity living longer is re-checked by revocation events.
    if (left > 2_147_000_000) return;
    const timer = setTimeout(() => session.terminate(code), left);
    timer.unref();
    session.cleanups.push(() => clearTimeout(timer));
  }

  async resolveConnection(
    session: GatewaySession,
    name: string,
    types: readonly string[],
  ): Promise<ResolvedConnection> {
    const view = await this.services.connections.get(name);
    if (view === null)
      throw new CoatcheckError('CC_ERR_NOT_FOUND', `no connection named ${name}`, { details: { name } });
    if (!types.includes(view.type)) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_CONNECTION_TYPE',
        `connection ${name} is of type ${view.type}; the ${this.#frontend} front-end serves ${types.join(', ')}`,
        { details: { name, type: view.type } },
      );
    }
    session.connection = name;
    await this.beginRecording(session, view);
    return { view, url: new URL(view.url), target: connectionTarget(view) };
  }

  /**
   * Set how the session is recorded, from its connection (a front-end that resolves its
   * connection itself calls this once it knows it). May refuse with CC_ERR_RECORDING_BACKLOG.
   */
  async beginRecording(
    session: GatewaySession,
    connection: { readonly rules: Readonly<Record<string, unknown>> },
  ): Promise<void> {
    await this.services.recordings?.begin(session, connection);
  }

  /**
   * The policy step. A denial is audited and refused before anything is released. An allow
   * is an `Authorized` (src/gateway/authorized.ts): the one value ticket exchange and
   * credential release accept; `clear` turns it into the `Cleared` forwarding needs once
   * the decision's audit record is durable.
   */
  async decide(
    session: GatewaySession,
    request: Omit<DecisionInput, 'session' | 'signal'>,
  ): Promise<Authorized> {
    const input: DecisionInput = {
      ...request,
      session: session.id,
      // Read only by an approval wait: the session makes its AbortSignal on first use.
      get signal() {
        return session.signal;
      },
    };
    let decision: Decision;
    try {
      decision = await this.services.decide(input);
    } catch (error) {
      this.#step(session, { step: 'decision', outcome: codeOf(error), action: input.operation.action });
      throw error;
    }
    this.#step(session, { step: 'decision', outcome: decision.verdict, action: input.operation.action });
    session.event('decision', {
      verdict: decision.verdict,
      reasons: decision.reasons,
      action: input.operation.action,
    });
    if (decision.verdict !== 'allow') {
      await this.services.audit.append({
        type: 'gateway.denied',
        actor: input.principal.ref,
        data: {
          frontend: this.#frontend,
          session: session.id,
          connection: input.connection.name,
          operation: input.operation.description,
          reasons: [...decision.reasons],
          ...workflowTags(input.principal),
        },
      });
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_DENIED',
        `policy denied ${input.operation.action} on connection ${input.connection.name}`,
        {
          details: { reasons: decision.reasons },
        },
      );
    }
    return makeAuthorized(
      {
        session: session.id,
        action: input.operation.action,
        connection: input.connection.name,
        mask: decision.mask ?? [],
        reasons: decision.reasons,
      },
      decision.recorded ?? Promise.resolve(),
    );
  }

  /**
   * Starting an upstream on behalf of an authenticated session (the MCP gateway starts the
   * tool server with the connection's credentials before any call is decided, to learn
   * its capabilities). Not a policy decision: every call through it is decided on its own,
   * and each credential release is audited. Only for the session's own principal and
   * connection.
   */
  authorizeConnect(session: GatewaySession, principal: Principal, connection: ConnectionView): Authorized {
    if (session.principal?.ref !== principal.ref || session.connection !== connection.name) {
      throw new CoatcheckError(
        'CC_ERR_INTERNAL',
        'connect refused: the session is not authenticated on this connection',
      );
    }
    return makeAuthorized(
      { session: session.id, action: 'connect', connection: connection.name, mask: [], reasons: ['connect'] },
      Promise.resolve(),
    );
  }

  /**
   * Wait until the decision's audit record is durable (it usually shares a group commit
   * with the releases after it, so this rarely waits) and give the `Cleared` value that
   * forwarding requires. A failed audit write refuses the operation.
   */
  clear(session: GatewaySession, authorized: Authorized): Promise<Cleared> {
    return clearAuthorized(authorized, session.id);
  }

  /** The check a front-end makes where it forwards: only a `Cleared` of this session passes. */
  forwarding(session: GatewaySession, cleared: Cleared): void {
    checkCleared(cleared, session.id);
  }

  /**
   * Exchange every ticket (concurrently, so N tickets share one audit flush). All or
   * nothing: if any is refused the request is refused with the first refusal (in the
   * order the tickets were found), and nothing is forwarded.
   *
   * `placement` says where the tickets stood (one placement for all, or per ticket the
   * placements it was found in); each must be one the ticket's secret allows. Default
   * `credential`.
   */
  async exchange(
    session: GatewaySession,
    tickets: readonly string[],
    request: {
      authorized: Authorized;
      principal: Principal;
      target: Target;
      operation: Operation;
      placement?: Placement | ReadonlyMap<string, readonly Placement[]>;
    },
  ): Promise<Map<string, Exchange>> {
    checkAuthorized(request.authorized, session.id, 'ticket exchange');
    const placementOf = (ticket: string): Placement | readonly Placement[] =>
      request.placement === undefined
        ? 'credential'
        : typeof request.placement === 'string'
          ? request.placement
          : (request.placement.get(ticket) ?? 'credential');
    const results = await Promise.allSettled(
      tickets.map((ticket) =>
        this.services.vault.exchange(ticket, {
          principal: request.principal,
          target: request.target,
          placement: placementOf(ticket),
          operation: request.operation.description,
          context: { frontend: this.#frontend, session: session.id },
        }),
      ),
    );
    const released = new Map<string, Exchange>();
    let refusal: unknown = null;
    results.forEach((result, index) => {
      if (result.status === 'fulfilled') {
        released.set(tickets[index]!, result.value);
        session.ticketIds.add(result.value.ticketId);
        session.secretIds.add(result.value.secretId);
        this.services.metrics.exchanges.inc({ frontend: this.#frontend, outcome: 'released' });
      } else {
        const code = result.reason instanceof CoatcheckError ? result.reason.code : 'CC_ERR_INTERNAL';
        this.services.metrics.exchanges.inc({ frontend: this.#frontend, outcome: code });
        refusal ??= result.reason;
      }
    });
    this.#step(session, {
      step: 'tickets',
      outcome: refusal === null ? 'released' : codeOf(refusal),
      action: request.operation.action,
    });
    session.event('exchange', {
      released: [...released.values()].map((e) => e.ticketId),
      refused: results.length - released.size,
    });
    if (refusal !== null) throw refusal;
    return released;
  }

  /**
   * Exchange a ticket the principal holds, by id, where the principal proved its identity
   * another way (an SSH key registered to the agent: ADR 0023). The vault makes every check
   * of `exchange`; the ticket joins the session (its revocation ends it).
   */
  async exchangeHeld(
    session: GatewaySession,
    ticketId: string,
    request: { authorized: Authorized; principal: Principal; target: Target; operation: Operation },
  ): Promise<Exchange> {
    checkAuthorized(request.authorized, session.id, 'ticket exchange');
    try {
      const released = await this.services.vault.exchangeHeld(ticketId, {
        principal: request.principal,
        target: request.target,
        placement: 'credential',
        operation: request.operation.description,
        context: { frontend: this.#frontend, session: session.id },
      });
      session.ticketIds.add(released.ticketId);
      session.secretIds.add(released.secretId);
      this.services.metrics.exchanges.inc({ frontend: this.#frontend, outcome: 'released' });
      this.#step(session, { step: 'tickets', outcome: 'released', action: request.operation.action });
      session.event('exchange', { released: [released.ticketId], refused: 0, held: true });
      return released;
    } catch (error) {
      this.services.metrics.exchanges.inc({ frontend: this.#frontend, outcome: codeOf(error) });
      this.#step(session, { step: 'tickets', outcome: codeOf(error), action: request.operation.action });
      session.event('exchange', { released: [], refused: 1, held: true });
      throw error;
    }
  }

  /** The connection's injected headers, each `{{secret:NAME}}` released (and audited) for this request. */
  async credentials(
    session: GatewaySession,
    connection: ConnectionView,
    request: { authorized: Authorized; principal: Principal; target: Target; operation: Operation },
  ): Promise<Map<string, string>> {
    checkAuthorized(request.authorized, session.id, 'credential release');
    const templates: Record<string, string> = { ...connection.injectHeaders };
    if (
      connection.credential !== null &&
      !Object.keys(templates).some((h) => h.toLowerCase() === 'authorization')
    ) {
      templates.Authorization = `Bearer {{secret:${connection.credential}}}`;
    }
    const names = [...new Set(Object.values(templates).flatMap((t) => secretRefs(t)))];
    const values = new Map<string, Exchange>();
    if (names.length > 0) {
      try {
        await this.#releaseAll(session, connection, request, names, values);
      } catch (error) {
        this.#step(session, {
          step: 'credentials',
          outcome: codeOf(error),
          action: request.operation.action,
        });
        throw error;
      }
      this.#step(session, { step: 'credentials', outcome: 'released', action: request.operation.action });
    }
    return this.#fill(session, templates, values);
  }

  /**
   * Release one secret of a connection by name (a PostgreSQL login with an agent key: the
   * connection's credential becomes the upstream password), audited like every release.
   */
  async releaseCredential(
    session: GatewaySession,
    connection: ConnectionView,
    name: string,
    request: { authorized: Authorized; principal: Principal; target: Target; operation: Operation },
  ): Promise<Exchange> {
    checkAuthorized(request.authorized, session.id, 'credential release');
    const released = await this.services.vault.releaseCredential(name, {
      principal: request.principal,
      target: request.target,
      operation: request.operation.description,
      context: { frontend: this.#frontend, session: session.id, connection: connection.name },
    });
    session.secretIds.add(released.secretId);
    return released;
  }

  async #releaseAll(
    session: GatewaySession,
    connection: ConnectionView,
    request: { principal: Principal; target: Target; operation: Operation },
    names: readonly string[],
    values: Map<string, Exchange>,
  ): Promise<void> {
    await Promise.all(
      names.map(async (name) => {
        values.set(
          name,
          await this.services.vault.releaseCredential(name, {
            principal: request.principal,
            target: request.target,
            operation: request.operation.description,
            context: { frontend: this.#frontend, session: session.id, connection: connection.name },
          }),
        );
      }),
    );
  }

  #fill(
    session: GatewaySession,
    templates: Record<string, string>,
    values: Map<string, Exchange>,
  ): Map<string, string> {
    const headers = new Map<string, string>();
    for (const [header, template] of Object.entries(templates)) {
      headers.set(
        header,
        template.replace(/\{\{\s*secret:([A-Za-z0-9][A-Za-z0-9_.-]{0,127})\s*\}\}/g, (_, name: string) =>
          values.get(name)!.value.revealText(),
        ),
      );
    }
    for (const exchange of values.values()) session.secretIds.add(exchange.secretId);
    if (headers.size > 0)
      session.event('credentials', {
        headers: [...headers.keys()],
        secrets: [...values.values()].map((e) => e.secretId),
      });
    return headers;
  }

  /**
   * Start inspecting a response: secrets found become tickets bound to the same principal
   * and connection. `parents` are the ids of the tickets exchanged for the request this
   * response answers: each ticket minted here is a child of the narrowest of them (never
   * wider, revoked with it). With none, it is scoped to the caller and this connection,
   * with a bounded lifetime.
   */
  async inspect(
    session: GatewaySession,
    principal: Principal,
    target: Target,
    parents: Iterable<string> = [],
  ): Promise<ResponseScan> {
    const scope = {
      principal: principal.ref,
      destinations: responseDestinations(target),
      target,
      parents,
    };
    const limited = (error: unknown): never => {
      if (error instanceof CoatcheckError && error.code === 'CC_ERR_FOUND_SECRETS_LIMIT')
        this.services.metrics.foundSecretsRefused.inc({ frontend: this.#frontend });
      throw error;
    };
    const context: InspectionContext = {
      reissue: async (secretId) => {
        const issued = await this.services.vault.reissueForResponse(
          secretId,
          { ...scope, context: { frontend: this.#frontend, session: session.id } },
          `gateway:${this.#frontend}`,
        );
        session.ticketIds.add(issued.view.id);
        session.event('response.secret', { secret: secretId, ticket: issued.view.id });
        this.services.metrics.responseSecrets.inc({ frontend: this.#frontend });
        return issued.ticket;
      },
      tokenize: async (value, kind) => {
        const issued = await this.services.vault
          .tokenizeFound(
            value,
            {
              ...scope,
              kind,
              source: `${this.#frontend}-response`,
              context: { frontend: this.#frontend, session: session.id },
            },
            `gateway:${this.#frontend}`,
          )
          .catch(limited);
        session.ticketIds.add(issued.view.id);
        session.event('response.secret', {
          secret: issued.view.secretId,
          ticket: issued.view.id,
          rule: kind,
        });
        this.services.metrics.responseSecrets.inc({ frontend: this.#frontend });
        return issued.ticket;
      },
    };
    return this.services.inspector.begin(context);
  }

  /** Record the session (scrubbed metadata) and stop watching it. */
  closeSession(session: GatewaySession, outcome: ErrorCode | 'ok', summary: Record<string, unknown>): void {
    // Failures of the gateway itself (audit, store, inspection) must reach the operator's
    // log, not only the client; refusals of the agent are audited, not logged as errors.
    if (outcome !== 'ok' && GATEWAY_FAULTS.has(outcome)) {
      this.services.log.error(
        { code: outcome, session: session.id, frontend: session.frontend },
        'the gateway failed a session (fail closed)',
      );
    }
    for (const cleanup of session.cleanups.splice(0)) cleanup();
    this.live.delete(session);
    this.#hooks.close(session, session.toRecord(outcome, summary, this.services.clock.now()));
  }
}

function codeOf(error: unknown): string {
  return error instanceof CoatcheckError ? error.code : 'CC_ERR_INTERNAL';
}

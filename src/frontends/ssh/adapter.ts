import type { Readable, Writable } from 'node:stream';
import type { Logger } from 'pino';
import ssh2 from 'ssh2';
import type { ApprovalView } from '../../approvals/approvals.js';
import type { PreviewScrubber } from '../../approvals/preview.js';
import type { AuditLog } from '../../audit/audit-log.js';
import type { ConnectionView } from '../../connections/connections.js';
import type { Clock } from '../../core/clock.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import { agentRef, type Principal } from '../../core/principal.js';
import { AGENT_KEY_PREFIX, isTicket, TICKET_PATTERN } from '../../core/ticket-format.js';
import { drained } from '../../gateway/http-io.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import type { ExchangePipeline } from '../../gateway/pipeline.js';
import { GatewaySession } from '../../gateway/session.js';
import type { UpstreamDialer } from '../../gateway/upstream-dial.js';
import { liveAgentSshKey, SSH_KEY_TYPES, sshKeyFingerprint } from '../../identity/ssh-public-key.js';
import { clip, clipText } from '../../recording/model.js';
import type { AgentRecord, AgentSshKeyRecord, Store } from '../../store/types.js';
import type { Target } from '../../vault/destinations.js';
import { type ParsedCommand, parseCommandLine } from './command-line.js';
import { sshOperation } from './policy.js';
import {
  connectUpstream,
  firstUseMetaKey,
  TRUST_ON_FIRST_USE,
  type UpstreamTarget,
  upstreamTarget,
} from './upstream.js';

export interface SshAdapterServices {
  readonly pipeline: ExchangePipeline;
  /** Opens the upstream stream of a connection that goes through a relay (docs/relay.md). */
  readonly dial?: UpstreamDialer;
  readonly store: Store;
  readonly audit: AuditLog;
  readonly clock: Clock;
  readonly log: Logger;
  /** Cleans a command line for audit, recordings and approvers (tickets, secrets, findings). */
  readonly clean: PreviewScrubber;
  /** Whether policy is configured (an agent key logs in, ssh:exec-raw may be permitted). */
  readonly policyConfigured: () => boolean;
  /** The driver's error mapping (Mount.fail). */
  readonly fail: (error: unknown) => CoatcheckError;
}

export interface SshAdapterOptions {
  readonly loginTimeoutMs: number;
  readonly upstreamTimeoutMs: number;
  /** Failed logins on one connection before it is closed. */
  readonly maxLoginAttempts: number;
  /** How much of each command's output (stdout and stderr each, after inspection) a recording keeps. */
  readonly recordOutputBytes: number;
  /**
   * Output quiet for this long releases what the inspection holds back as a possible
   * partial match (interactive peers wait for it). A secret split by a pause longer than
   * this is not recognised (docs/frontends/ssh.md).
   */
  readonly flushIdleMs: number;
  /** Channels (commands, shells, sftp, forwards) open at once on one client connection. */
  readonly maxChannels: number;
}

/** Exit status of a command the gateway refused (like a shell's "cannot execute"). */
export const REFUSED_EXIT_STATUS = 126;

const MAX_NAME = 64;

interface Login {
  readonly principal: Principal;
  readonly view: ConnectionView;
  readonly target: Target;
  readonly upstream: UpstreamTarget;
  /** The ticket that logged in (parent of tickets minted from output), if any. */
  readonly parents: readonly string[];
  readonly credential: Buffer;
}

/** A signed public-key login request (ssh2 gives the signed data, the signature and its hash). */
interface SignedKey {
  readonly data: Buffer;
  readonly blob: Buffer;
  readonly signature: Buffer;
  readonly hashAlgo: string | undefined;
}

function agentPrincipal(agent: AgentRecord): Principal {
  return {
    kind: 'agent',
    ref: agentRef(agent.id),
    name: agent.name,
    groups: agent.groups,
    attributes: {},
    expiresAt: agent.expiresAt,
  };
}

function loginFailed(reason: string, message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_SSH_LOGIN_FAILED', message, { details: { reason } });
}

/** Agent-typed text kept in audit or recordings: tickets and coatcheck keys in it are masked. */
function masked(text: string): string {
  return text.replace(TICKET_PATTERN, '[ticket]').replace(/cc[as]_[0-9A-Za-z]{20,}/g, '[coatcheck key]');
}

function codeOf(error: unknown): ErrorCode {
  return error instanceof CoatcheckError ? error.code : 'CC_ERR_INTERNAL';
}

/**
 * Copy `source` to `sink` through an output inspection (secrets become tickets), keeping
 * the first `keep` bytes of what was sent for the recording. Backpressure both ways: the
 * source is read only as fast as the sink (the client's window) takes it.
 */
function inspectedCopy(
  source: Readable,
  first: ResponseScan,
  fresh: () => Promise<ResponseScan>,
  sink: Writable,
  keep: number,
  idleMs: number,
  onSent?: (out: Buffer) => void,
): Promise<{ bytes: number; head: Buffer }> {
  let bytes = 0;
  const head: Buffer[] = [];
  let kept = 0;
  const send = async (out: Buffer) => {
    if (out.length === 0) return;
    bytes += out.length;
    onSent?.(out);
    if (kept < keep) {
      const part = out.subarray(0, keep - kept);
      head.push(part);
      kept += part.length;
    }
    if (sink.destroyed || sink.writableEnded) return;
    if (!sink.write(out)) await drained(sink);
  };
  // Not `for await`: ending its loop destroys the source, and an ssh2 channel's destroy closes it early.
  return new Promise((resolve, reject) => {
    let scan: ResponseScan | null = first;
    let idle: NodeJS.Timeout | null = null;
    let chain = Promise.resolve();
    let failed = false;
    const fail = (error: unknown) => {
      if (failed) return;
      failed = true;
      source.destroy();
      reject(error);
    };
    const step = (work: () => Promise<void>) => {
      chain = chain.then(work);
      chain.catch(fail);
    };
    // An interactive peer (a prompt, git's ref advertisement) waits for bytes the scan holds
    // back as a possible partial match: when the source goes quiet, the scan ends (what it
    // held is scanned and sent) and the next output starts a new one.
    const quiet = () =>
      step(async () => {
        const ending = scan;
        scan = null;
        if (ending !== null) await send(await ending.end());
      });
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      if (idle !== null) clearTimeout(idle);
      step(async () => {
        if (scan !== null) await send(await scan.end());
        resolve({ bytes, head: Buffer.concat(head) });
      });
    };
    source.on('data', (chunk: Buffer) => {
      if (idle !== null) clearTimeout(idle);
      source.pause();
      step(async () => {
        scan ??= await fresh();
        await send(await scan.push(chunk));
        source.resume();
        if (!finished) {
          idle = setTimeout(quiet, idleMs);
          idle.unref();
        }
      });
    });
    source.once('end', finish);
    source.once('close', finish);
  });
}

/**
 * Copy `source` to `sink` as is (a channel that is not inspected: sftp, port forwards),
 * counting what was sent. Backpressure as in `inspectedCopy` (the source pauses while the
 * sink is full), without its per-chunk promise and idle timer: bulk transfers pay one
 * write per chunk. A sink that is gone is not written to; the source is still read to its
 * end, so the upstream channel can close.
 */
function plainCopy(
  source: Readable,
  sink: Writable,
  onSent?: (out: Buffer) => void,
): Promise<{ bytes: number; head: Buffer }> {
  return new Promise((resolve) => {
    let bytes = 0;
    let waiting = false;
    const resume = () => {
      if (!waiting) return;
      waiting = false;
      sink.off('drain', resume);
      sink.off('close', resume);
      sink.off('finish', resume);
      source.resume();
    };
    source.on('data', (chunk: Buffer) => {
      if (chunk.length === 0) return;
      bytes += chunk.length;
      onSent?.(chunk);
      if (sink.destroyed || sink.writableEnded) return;
      if (!sink.write(chunk) && !waiting) {
        waiting = true;
        source.pause();
        sink.on('drain', resume);
        sink.on('close', resume);
        sink.on('finish', resume);
      }
    });
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      resume();
      resolve({ bytes, head: Buffer.alloc(0) });
    };
    source.once('end', finish);
    source.once('close', finish);
  });
}

/**
 * One client connection of the SSH front-end: login (`AGENT%CONNECTION`, a ticket or an
 * agent key as the password), the upstream session with the connection's real credential,
 * then each channel decided by policy and relayed.
 */
export class SshConnection {
  readonly #services: SshAdapterServices;
  readonly #options: SshAdapterOptions;
  readonly #client: ssh2.Connection;
  readonly #remote: string;
  readonly session: GatewaySession;
  #login: Login | null = null;
  #upstream: Promise<ssh2.Client> | null = null;
  #upstreamClient: ssh2.Client | null = null;
  #attempts = 0;
  #checking = false;
  #commands = 0;
  /** Numbers the session channels in recordings (a shell's asciicast follows its channel). */
  #channelSeq = 0;
  #channels = new Set<ssh2.ServerChannel>();
  /** Refused request kinds already audited on this connection (a client may repeat them). */
  #audited = new Set<string>();
  #done!: () => void;
  readonly finished: Promise<void>;

  constructor(
    services: SshAdapterServices,
    options: SshAdapterOptions,
    client: ssh2.Connection,
    remote: string,
  ) {
    this.#services = services;
    this.#options = options;
    this.#client = client;
    this.#remote = remote;
    this.finished = new Promise((resolve) => {
      this.#done = resolve;
    });
    this.session = services.pipeline.openSession(new GatewaySession('ssh', services.clock));
    this.session.event('connected', { remote });
  }

  /** Serve the connection to its end (resolves when the client is gone). */
  run(): Promise<void> {
    const client = this.#client;
    const timer = setTimeout(() => {
      if (this.#login === null) client.end();
    }, this.#options.loginTimeoutMs);
    timer.unref();
    this.session.signal.addEventListener('abort', () => this.#terminate(), { once: true });
    client.on('authentication', (ctx) => this.#authenticate(ctx));
    client.on('ready', () => {
      clearTimeout(timer);
      const login = this.#login!;
      this.#upstream = this.#pinnedUpstream(login)
        .then((target) =>
          connectUpstream(target, login.credential, {
            timeoutMs: this.#options.upstreamTimeoutMs,
            connection: login.view.name,
            trust: (key) => this.#trustOnFirstUse(login, key),
            ...(this.#services.dial === undefined ? {} : { dial: this.#services.dial }),
          }),
        )
        .then(
          (upstream) => {
            login.credential.fill(0);
            this.#upstreamClient = upstream;
            upstream.on('close', () => {
              if (this.session.terminatedBy === null) client.end();
            });
            if (this.session.terminatedBy !== null) upstream.end();
            this.session.event('upstream', { host: login.upstream.host, port: login.upstream.port });
            return upstream;
          },
          async (error: unknown) => {
            login.credential.fill(0);
            await this.#auditRefusal('upstream', { outcome: codeOf(error) });
            throw error;
          },
        );
      this.#upstream.catch(() => undefined);
    });
    client.on('session', (accept) => this.#sessionChannel(accept()));
    client.on('tcpip', (accept, reject, info) => {
      void this.#forward(accept, reject, info);
    });
    client.on('openssh.streamlocal', (_accept, reject) => {
      reject();
      void this.#refused('streamlocal');
    });
    client.on('request', (_accept, reject, name) => {
      reject?.();
      void this.#refused(name === 'tcpip-forward' ? 'remote-forward' : 'global-request');
    });
    client.on('error', () => undefined);
    client.on('close', () => {
      clearTimeout(timer);
      this.#upstreamClient?.end();
      this.#upstream?.then((u) => u.end()).catch(() => undefined);
      this.#login?.credential.fill(0);
      this.#services.pipeline.closeSession(this.session, this.session.terminatedBy ?? 'ok', {
        commands: this.#commands,
      });
      this.#done();
    });
    return this.finished;
  }

  /**
   * The upstream as pinned: with `--host-key tofu`, the key recorded at the first
   * connection if there is one (then any other key is refused), else `tofu` (the first key
   * is recorded before anything is sent: #trustOnFirstUse).
   */
  async #pinnedUpstream(login: Login): Promise<UpstreamTarget> {
    if (login.upstream.hostKey !== TRUST_ON_FIRST_USE) return login.upstream;
    const pin = await this.#services.store.getMeta(firstUseMetaKey(login.view.name, login.upstream));
    return pin === null ? login.upstream : { ...login.upstream, hostKey: pin, firstUse: true };
  }

  /**
   * Record the key an upstream presents at the first connection as the connection's pin,
   * with its audit record (`ssh.hostkey.trusted`), in one transaction: if another
   * connection recorded a key first, this one must be the same.
   */
  async #trustOnFirstUse(login: Login, key: string): Promise<boolean> {
    const metaKey = firstUseMetaKey(login.view.name, login.upstream);
    const blob = Buffer.from(key.split(' ')[1] ?? '', 'base64');
    let pinned: string | null = null;
    try {
      await this.#services.audit.append(
        {
          type: 'ssh.hostkey.trusted',
          actor: login.principal.ref,
          data: {
            connection: login.view.name,
            host: login.upstream.host,
            port: login.upstream.port,
            keyType: key.split(' ')[0]!,
            fingerprint: sshKeyFingerprint(blob),
            session: this.session.id,
          },
        },
        async (tx) => {
          pinned = await tx.getMeta(metaKey);
          // Recorded first by another connection: nothing is written here (rolled back).
          if (pinned !== null)
            throw new CoatcheckError('CC_ERR_SSH_UPSTREAM_HOST_KEY', 'a key was recorded first');
          await tx.setMeta(metaKey, key);
        },
      );
      return true;
    } catch (error) {
      if (pinned !== null) return pinned === key;
      throw error;
    }
  }

  /** Revocation (ticket, agent, secret) or expiry: tell each open channel, then drop both sides. */
  #terminate(): void {
    const code = this.session.terminatedBy ?? 'CC_ERR_TICKET_REVOKED';
    for (const channel of this.#channels) {
      try {
        channel.stderr.write(`\r\ncoatcheck: ${code}: the session was ended by the gateway\r\n`);
        channel.exit(REFUSED_EXIT_STATUS);
        channel.close();
      } catch {
        // the channel is already gone
      }
    }
    // A moment for the notices to leave before the transport goes (both sides, without waiting for either).
    const timer = setTimeout(() => {
      this.#upstreamClient?.end();
      this.#client.end();
    }, 100);
    timer.unref();
  }

  // ---- login -----------------------------------------------------------------------

  #authenticate(ctx: ssh2.AuthContext): void {
    // One login attempt at a time: a second request while one is being checked is refused.
    if (this.#login !== null || this.#checking) {
      ctx.reject();
      return;
    }
    const methods: ssh2.AuthenticationType[] = ['publickey', 'password', 'keyboard-interactive'];
    const attempt = (username: string, password: string | SignedKey) => {
      this.#checking = true;
      void this.#tryLogin(username, password)
        .then(
          () => ctx.accept(),
          () => this.#rejectLogin(ctx, methods),
        )
        .finally(() => {
          this.#checking = false;
        });
    };
    if (ctx.method === 'password') {
      attempt(ctx.username, ctx.password);
      return;
    }
    if (ctx.method === 'publickey') {
      // A query (no signature) is answered yes for any well-formed key of a supported type,
      // registered or not: the answer tells no one which keys an agent has. The signed
      // request is checked against the agent's registered keys (ADR 0023).
      if (!SSH_KEY_TYPES.has(ctx.key.algo.replace(/^rsa-sha2-(256|512)$/, 'ssh-rsa'))) {
        this.#rejectLogin(ctx, methods);
        return;
      }
      if (ctx.signature === undefined || ctx.blob === undefined) {
        ctx.accept();
        return;
      }
      attempt(ctx.username, {
        data: Buffer.from(ctx.key.data),
        blob: Buffer.from(ctx.blob),
        signature: Buffer.from(ctx.signature),
        hashAlgo: ctx.hashAlgo,
      });
      return;
    }
    if (ctx.method === 'keyboard-interactive') {
      this.#checking = true;
      ctx.once('abort', () => {
        this.#checking = false;
      });
      ctx.prompt([{ prompt: 'coatcheck ticket: ', echo: false }], 'coatcheck', '', (answers) => {
        attempt(ctx.username, answers[0] ?? '');
      });
      return;
    }
    ctx.reject(methods);
  }

  #rejectLogin(ctx: ssh2.AuthContext, methods: ssh2.AuthenticationType[]): void {
    this.#attempts++;
    if (this.#attempts >= this.#options.maxLoginAttempts) {
      ctx.reject([]);
      this.#client.end();
      return;
    }
    ctx.reject(methods);
  }

  async #tryLogin(username: string, password: string | SignedKey): Promise<void> {
    const split = username.indexOf('%');
    const agentName = (split === -1 ? username : username.slice(0, split)).slice(0, MAX_NAME);
    const connectionName = (split === -1 ? '' : username.slice(split + 1)).slice(0, MAX_NAME);
    const session = this.session;
    const pipeline = this.#services.pipeline;
    try {
      if (split === -1 || connectionName === '') {
        throw loginFailed(
          'CC_ERR_INVALID_ARGUMENT',
          'coatcheck: log in as AGENT%CONNECTION (ssh -p PORT agent%connection@gateway)',
        );
      }
      if (typeof password === 'string' && password.length > 4096)
        throw loginFailed('CC_ERR_TICKET_MALFORMED', 'coatcheck: the password is too long');
      const view = await pipeline.services.connections.get(connectionName);
      if (view === null || view.type !== 'ssh') {
        throw loginFailed(
          'CC_ERR_NOT_FOUND',
          `coatcheck: there is no ssh connection named ${connectionName}`,
        );
      }
      session.connection = view.name;
      const upstream = upstreamTarget(view);
      const target: Target = { connection: view.name, host: upstream.host, port: upstream.port };
      const agent = await this.#services.store.getAgentByName(agentName);
      const now = this.#services.clock.now();
      if (agent === null) throw loginFailed('CC_ERR_AGENT_UNKNOWN', `coatcheck: no agent named ${agentName}`);
      if (agent.revokedAt !== null)
        throw loginFailed('CC_ERR_AGENT_REVOKED', `coatcheck: agent ${agent.id} was revoked`);
      if (agent.expiresAt !== null && agent.expiresAt <= now)
        throw loginFailed('CC_ERR_AGENT_EXPIRED', `coatcheck: the key of agent ${agent.id} has expired`);
      const operation = sshOperation('ssh:login', `ssh login to ${view.name}`, {});
      let principal: Principal;
      let credential: Buffer;
      const parents: string[] = [];
      if (typeof password !== 'string') {
        principal = agentPrincipal(agent);
        session.principal = principal;
        const key = await this.#verifiedKey(agent.id, password);
        // Held from here: a removal committed after the re-read below ends the session.
        session.sshKeyIds.add(key.id);
        const exchanged = await this.#exchangeHeld(view, principal, target, operation);
        // Read again after the exchange: a removal that raced the login is seen here or notified later.
        if ((await liveAgentSshKey(this.#services.store, agent.id, password.data)) === null)
          throw loginFailed('CC_ERR_SSH_KEY_UNKNOWN', 'coatcheck: the key was removed');
        parents.push(exchanged.ticketId);
        credential = Buffer.from(exchanged.value.reveal());
        await this.#endAtTicketExpiry(exchanged.ticketId);
      } else if (password.startsWith(AGENT_KEY_PREFIX)) {
        if (!this.#services.policyConfigured()) {
          throw loginFailed(
            'CC_ERR_PG_KEY_LOGIN_NOT_PERMITTED',
            `coatcheck: an agent key does not open connection ${view.name} under the built-in policy; log in with a ticket`,
          );
        }
        principal = await pipeline.services.agents.authenticate(password).catch((error: unknown) => {
          throw loginFailed(codeOf(error), `coatcheck: the agent key was not accepted (${codeOf(error)})`);
        });
        if (principal.ref !== agentRef(agent.id))
          throw loginFailed(
            'CC_ERR_AGENT_UNKNOWN',
            `coatcheck: the agent key is not the key of ${agentName}`,
          );
        if (view.credential === null)
          throw loginFailed(
            'CC_ERR_SSH_LOGIN_FAILED',
            `coatcheck: connection ${view.name} has no credential; log in with a ticket`,
          );
        session.principal = principal;
        // Opening the upstream is not a policy decision: each command, shell, sftp and
        // forward is decided on its own before it runs (ADR 0019).
        const released = await pipeline.releaseCredential(session, view, view.credential, {
          authorized: pipeline.authorizeConnect(session, principal, view),
          principal,
          target,
          operation,
        });
        // A copy: the vault's buffer may be shared (a cache); this one is zeroed once used.
        credential = Buffer.from(released.value.reveal());
      } else if (isTicket(password)) {
        principal = agentPrincipal(agent);
        session.principal = principal;
        const released = await pipeline
          .exchange(session, [password], {
            authorized: pipeline.authorizeConnect(session, principal, view),
            principal,
            target,
            operation,
          })
          .catch((error: unknown) => {
            throw loginFailed(codeOf(error), `coatcheck: the ticket was refused (${codeOf(error)})`);
          });
        const exchanged = released.get(password)!;
        parents.push(exchanged.ticketId);
        credential = Buffer.from(exchanged.value.reveal());
        await this.#endAtTicketExpiry(exchanged.ticketId);
      } else {
        throw loginFailed(
          'CC_ERR_TICKET_MALFORMED',
          'coatcheck: the password must be a ticket (cct_…) or an agent key',
        );
      }
      if (principal.expiresAt !== null) this.#endAt(principal.expiresAt, 'CC_ERR_AGENT_EXPIRED');
      session.event('authenticated', { principal: principal.ref, connection: view.name });
      // How the session is recorded comes from its connection (off, metadata or full).
      await pipeline.beginRecording(session, view);
      this.#login = { principal, view, target, upstream, parents, credential };
    } catch (error) {
      const e = error instanceof CoatcheckError ? error : null;
      const code = e?.code ?? 'CC_ERR_INTERNAL';
      const reason = (e?.details?.reason as string | undefined) ?? code;
      // The client is told only that the login failed: the reason is in the log and the audit.
      this.#services.log.info({ session: session.id, code, reason }, 'ssh: login refused');
      await this.#services.audit
        .append({
          type: 'ssh.login.refused',
          actor: session.principal?.ref ?? 'unauthenticated',
          data: {
            session: session.id,
            user: masked(agentName),
            connection: masked(connectionName),
            code,
            reason,
            remote: this.#remote,
          },
        })
        .catch((failure: unknown) =>
          // The login is refused either way; a refusal the audit log could not take is logged.
          this.#services.log.error(
            { session: session.id, code, auditCode: (failure as { code?: unknown })?.code },
            'ssh: login refusal not audited',
          ),
        );
      session.event('login.refused', { code: e?.code ?? 'CC_ERR_INTERNAL' });
      session.principal = null;
      // A refused key attempt leaves nothing behind for a later login on this connection.
      session.sshKeyIds.clear();
      throw error;
    }
  }

  /** The agent's registered key that signed this login, or a refusal (CC_ERR_SSH_KEY_UNKNOWN). */
  async #verifiedKey(agentId: string, signed: SignedKey): Promise<AgentSshKeyRecord> {
    const unknown = () =>
      loginFailed('CC_ERR_SSH_KEY_UNKNOWN', 'coatcheck: this key is not registered to the agent');
    const record = await liveAgentSshKey(this.#services.store, agentId, signed.data);
    if (record === null) throw unknown();
    // The signature is checked with the registered key (not the key the client sent).
    const parsed = ssh2.utils.parseKey(`${record.keyType} ${record.publicKey}`);
    if (parsed instanceof Error || Array.isArray(parsed)) throw unknown();
    let valid: boolean | Error;
    try {
      valid = parsed.verify(signed.blob, signed.signature, signed.hashAlgo);
    } catch {
      valid = false;
    }
    if (valid !== true) throw unknown();
    return record;
  }

  /**
   * A key login's credential: the connection's `--credential`, released only through a live
   * ticket the agent holds for it, bound to this connection (ADR 0023). The key says who the
   * agent is; the ticket is still what grants the connection (its lifetime, uses and
   * revocation apply, and revoking it ends the session).
   */
  async #exchangeHeld(
    view: ConnectionView,
    principal: Principal,
    target: Target,
    operation: ReturnType<typeof sshOperation>,
  ) {
    const pipeline = this.#services.pipeline;
    if (view.credential === null)
      throw loginFailed(
        'CC_ERR_SSH_KEY_NO_TICKET',
        `coatcheck: connection ${view.name} names no --credential; a key login needs one (or log in with a ticket)`,
      );
    const held = await pipeline.services.vault.heldTickets(principal.ref, view.credential, target);
    if (held.length === 0)
      throw loginFailed(
        'CC_ERR_SSH_KEY_NO_TICKET',
        `coatcheck: ${principal.name} holds no live ticket for connection ${view.name}`,
      );
    return pipeline
      .exchangeHeld(this.session, held[0]!, {
        authorized: pipeline.authorizeConnect(this.session, principal, view),
        principal,
        target,
        operation,
      })
      .catch((error: unknown) => {
        throw loginFailed(codeOf(error), `coatcheck: the held ticket was refused (${codeOf(error)})`);
      });
  }

  async #endAtTicketExpiry(ticketId: string): Promise<void> {
    let id: string | null = ticketId;
    for (let depth = 0; id !== null && depth < 64; depth++) {
      const record = await this.#services.store.getTicketById(id);
      if (record === null) break;
      if (record.expiresAt !== null) this.#endAt(record.expiresAt, 'CC_ERR_TICKET_EXPIRED');
      id = record.parentId;
    }
  }

  #endAt(at: number, code: ErrorCode): void {
    const left = at - this.#services.clock.now();
    if (left <= 0) {
      this.session.terminate(code);
      return;
    }
    if (left > 2_147_000_000) return;
    const timer = setTimeout(() => this.session.terminate(code), left);
    timer.unref();
    this.session.cleanups.push(() => clearTimeout(timer));
  }

  // ---- channels --------------------------------------------------------------------

  async #auditChannel(
    kind: string,
    fields: { outcome: string; command?: string; target?: string; exitCode?: number | null },
  ): Promise<void> {
    await this.#services.audit.append({
      type: 'ssh.channel',
      actor: this.#login?.principal.ref ?? 'unauthenticated',
      data: { session: this.session.id, connection: this.#login?.view.name ?? '', kind, ...fields },
    });
  }

  /**
   * The record of a refusal (or a failed upstream): the refusal stands whether or not it is
   * recorded, so a failed write is logged rather than thrown.
   */
  async #auditRefusal(
    kind: string,
    fields: { outcome: string; command?: string; target?: string },
  ): Promise<void> {
    await this.#auditChannel(kind, fields).catch((failure: unknown) =>
      this.#services.log.error(
        {
          session: this.session.id,
          kind,
          code: fields.outcome,
          auditCode: (failure as { code?: unknown })?.code,
        },
        'ssh: refusal not audited',
      ),
    );
  }

  /** A request the gateway never carries: refused, audited once per kind and connection. */
  async #refused(kind: string): Promise<void> {
    this.session.event('request.refused', { kind });
    if (this.#audited.has(kind)) return;
    this.#audited.add(kind);
    await this.#auditRefusal(kind, { outcome: 'CC_ERR_SSH_REQUEST_REFUSED' });
  }

  #sessionChannel(s: ssh2.Session): void {
    const number = ++this.#channelSeq;
    let pty: ssh2.PseudoTtyInfo | null = null;
    let upstreamChannel: ssh2.ClientChannel | null = null;
    let started = false;
    s.on('pty', (accept, reject, info) => {
      if (started) return reject?.();
      pty = info;
      accept?.();
    });
    s.on('window-change', (accept, _reject, info) => {
      upstreamChannel?.setWindow(info.rows, info.cols, info.height, info.width);
      this.session.record('ssh.resize', 'in', { channel: number, cols: info.cols, rows: info.rows });
      accept?.();
    });
    s.on('signal', (accept, _reject, info) => {
      upstreamChannel?.signal(info.name);
      accept?.();
    });
    s.on('env', (_accept, reject) => {
      reject?.();
      void this.#refused('env');
    });
    s.on('auth-agent', (_accept, reject) => {
      reject?.();
      void this.#refused('auth-agent');
    });
    s.on('x11', (_accept, reject) => {
      reject?.();
      void this.#refused('x11');
    });
    const attach = (channel: ssh2.ClientChannel) => {
      upstreamChannel = channel;
    };
    s.on('exec', (accept, _reject, info) => {
      if (started) return;
      started = true;
      void this.#exec(accept(), info.command, pty, attach, number);
    });
    s.on('shell', (accept) => {
      if (started) return;
      started = true;
      void this.#shell(accept(), pty, attach, number);
    });
    s.on('subsystem', (accept, reject, info) => {
      if (started) return reject?.();
      if (info.name !== 'sftp') {
        reject?.();
        void this.#refused(`subsystem:${info.name.slice(0, 32)}`);
        return;
      }
      started = true;
      void this.#sftp(accept(), number);
    });
  }

  /** A refusal inside an accepted channel: the code and message on stderr, exit status 126. */
  #refuseChannel(channel: ssh2.ServerChannel, error: CoatcheckError): void {
    try {
      channel.stderr.write(`coatcheck: ${error.code}: ${error.message.replace(/^coatcheck: /, '')}\n`);
      channel.exit(REFUSED_EXIT_STATUS);
      channel.end();
    } catch {
      // the client is gone
    }
  }

  /** Hold an open channel (revocation tells it); beyond `maxChannels` on one connection, refused. */
  #track(channel: ssh2.ServerChannel): void {
    channel.on('error', () => undefined);
    if (this.#channels.size >= this.#options.maxChannels) {
      throw new CoatcheckError(
        'CC_ERR_SSH_REQUEST_REFUSED',
        `coatcheck: at most ${this.#options.maxChannels} channels are open at once on one connection`,
        { details: { reason: 'channels' } },
      );
    }
    this.#channels.add(channel);
    channel.on('close', () => this.#channels.delete(channel));
  }

  async #cleanCommand(line: string): Promise<string> {
    return this.#services.clean(line);
  }

  /** Decide one operation: a refusal throws (audited by the gate and the pipeline). */
  async #decide(
    action: string,
    description: string,
    facts: Parameters<typeof sshOperation>[2],
    preview?: () => string,
  ) {
    const login = this.#login!;
    const decision = await this.#services.pipeline.decide(this.session, {
      principal: login.principal,
      connection: login.view,
      target: login.target,
      operation: sshOperation(action, description, facts, preview),
    });
    // The decision's audit record is durable before the channel request goes upstream.
    const cleared = await this.#services.pipeline.clear(this.session, decision);
    this.#services.pipeline.forwarding(this.session, cleared);
  }

  #holdNotice(channel: ssh2.ServerChannel): (approval: ApprovalView) => void {
    return (approval) => {
      try {
        channel.stderr.write(
          `coatcheck: waiting for approval ${approval.id} (an approver runs: coatcheck approvals approve ${approval.id})\n`,
        );
      } catch {
        // the client is gone
      }
    };
  }

  async #exec(
    channel: ssh2.ServerChannel,
    command: string,
    pty: ssh2.PseudoTtyInfo | null,
    attach: (c: ssh2.ClientChannel) => void,
    number: number,
  ): Promise<void> {
    this.#commands++;
    let shown = '';
    try {
      this.#track(channel);
      const upstream = await this.#upstream!;
      let parsed: ParsedCommand | null = null;
      let line: string;
      let action = 'ssh:exec';
      try {
        parsed = parseCommandLine(command);
        line = parsed.line;
      } catch (error) {
        // Anything the parser cannot classify runs only where a configured policy permits ssh:exec-raw.
        if (!(error instanceof CoatcheckError) || !this.#services.policyConfigured()) throw error;
        action = 'ssh:exec-raw';
        line = command;
        shown = await this.#cleanCommand(command);
        try {
          await this.#decide(
            action,
            `ssh ${this.#login!.view.name}: ${shown}`,
            {
              command: line,
              shown,
              onHold: this.#holdNotice(channel),
            },
            () => line,
          );
        } catch (denied) {
          if (denied instanceof CoatcheckError && denied.code === 'CC_ERR_POLICY_DENIED') throw error;
          throw denied;
        }
      }
      if (parsed !== null) {
        shown = await this.#cleanCommand(line);
        await this.#decide(
          action,
          `ssh ${this.#login!.view.name}: ${shown}`,
          {
            command: line,
            shown,
            program: parsed.argv[0]!,
            args: parsed.argv.slice(1),
            onHold: this.#holdNotice(channel),
          },
          () => line,
        );
      }
      if (this.session.terminatedBy !== null)
        throw new CoatcheckError(this.session.terminatedBy, 'coatcheck: the session was ended');
      this.session.record('ssh.exec', 'in', { channel: number, command: clipText(command, 16 * 1024) });
      const result = await this.#relay(channel, true, number, () =>
        new Promise<ssh2.ClientChannel>((resolve, reject) => {
          upstream.exec(line, pty === null ? {} : { pty }, (error, stream) => {
            if (error)
              reject(
                new CoatcheckError(
                  'CC_ERR_SSH_UPSTREAM_FAILED',
                  'coatcheck: the upstream refused the command channel',
                ),
              );
            else resolve(stream);
          });
        }).then((remote) => {
          attach(remote);
          return remote;
        }),
      );
      this.session.event('exec', {
        command: shown,
        exit: result.exit,
        // What the agent received, its tickets masked (a recording reader is not the agent).
        stdout: masked(result.out.head.toString('utf8')),
        stderr: masked(result.err.head.toString('utf8')),
        stdoutBytes: result.out.bytes,
        stderrBytes: result.err.bytes,
      });
      await this.#auditChannel('exec', {
        command: shown,
        outcome: 'ok',
        exitCode: typeof result.exit === 'number' ? result.exit : null,
      });
    } catch (error) {
      const e = error instanceof CoatcheckError ? error : this.#services.fail(error);
      this.session.event('exec', { command: shown, refused: e.code });
      this.#refuseChannel(channel, e);
      await this.#auditRefusal('exec', { command: shown || '(not classified)', outcome: e.code });
    }
  }

  async #shell(
    channel: ssh2.ServerChannel,
    pty: ssh2.PseudoTtyInfo | null,
    attach: (c: ssh2.ClientChannel) => void,
    number: number,
  ): Promise<void> {
    try {
      this.#track(channel);
      const upstream = await this.#upstream!;
      await this.#decide('ssh:shell', `ssh ${this.#login!.view.name}: interactive shell`, {
        onHold: this.#holdNotice(channel),
      });
      // A full recording renders this channel as an asciicast (src/recording/asciicast.ts).
      this.session.record('ssh.shell', 'in', {
        channel: number,
        pty: pty === null ? null : { term: clipText(pty.term ?? '', 64), cols: pty.cols, rows: pty.rows },
      });
      const result = await this.#relay(channel, true, number, () =>
        new Promise<ssh2.ClientChannel>((resolve, reject) => {
          upstream.shell(pty === null ? false : pty, (error, stream) => {
            if (error)
              reject(
                new CoatcheckError('CC_ERR_SSH_UPSTREAM_FAILED', 'coatcheck: the upstream refused the shell'),
              );
            else resolve(stream);
          });
        }).then((remote) => {
          attach(remote);
          return remote;
        }),
      );
      this.session.event('shell', { exit: result.exit, outputBytes: result.out.bytes + result.err.bytes });
      await this.#auditChannel('shell', {
        outcome: 'ok',
        exitCode: typeof result.exit === 'number' ? result.exit : null,
      });
    } catch (error) {
      const e = error instanceof CoatcheckError ? error : this.#services.fail(error);
      this.#refuseChannel(channel, e);
      await this.#auditRefusal('shell', { outcome: e.code });
    }
  }

  async #sftp(channel: ssh2.ServerChannel, number: number): Promise<void> {
    try {
      this.#track(channel);
      const upstream = await this.#upstream!;
      await this.#decide('ssh:sftp', `ssh ${this.#login!.view.name}: sftp`, {});
      // The sftp protocol is binary and length-framed: carried as is (policy decides the subsystem as a whole).
      const result = await this.#relay(
        channel,
        false,
        number,
        () =>
          new Promise<ssh2.ClientChannel>((resolve, reject) => {
            upstream.subsys('sftp', (error, stream) => {
              if (error)
                reject(
                  new CoatcheckError('CC_ERR_SSH_UPSTREAM_FAILED', 'coatcheck: the upstream refused sftp'),
                );
              else resolve(stream);
            });
          }),
      );
      this.session.event('sftp', { bytes: result.out.bytes });
      await this.#auditChannel('sftp', { outcome: 'ok' });
    } catch (error) {
      const e = error instanceof CoatcheckError ? error : this.#services.fail(error);
      this.#refuseChannel(channel, e);
      await this.#auditRefusal('sftp', { outcome: e.code });
    }
  }

  async #forward(
    accept: () => ssh2.ServerChannel,
    reject: () => void,
    info: ssh2.TcpipRequestInfo,
  ): Promise<void> {
    const host = info.destIP.slice(0, 255);
    const port = info.destPort;
    const target = `${host}:${port}`;
    let accepted: ssh2.ServerChannel | null = null;
    try {
      if (this.#channels.size >= this.#options.maxChannels) {
        throw new CoatcheckError(
          'CC_ERR_SSH_REQUEST_REFUSED',
          `coatcheck: at most ${this.#options.maxChannels} channels are open at once on one connection`,
          { details: { reason: 'channels' } },
        );
      }
      const upstream = await this.#upstream!;
      await this.#decide('ssh:forward', `ssh ${this.#login!.view.name}: forward to ${target}`, {
        targetHost: host,
        targetPort: port,
      });
      const remote = await new Promise<ssh2.ClientChannel>((resolve, fail) => {
        upstream.forwardOut(info.srcIP, info.srcPort, host, port, (error, stream) => {
          if (error)
            fail(
              new CoatcheckError('CC_ERR_SSH_UPSTREAM_FAILED', 'coatcheck: the upstream refused the forward'),
            );
          else resolve(stream);
        });
      });
      const channel = accept();
      accepted = channel;
      channel.on('error', () => undefined);
      this.#channels.add(channel);
      channel.on('close', () => this.#channels.delete(channel));
      const result = await this.#relay(channel, false, 0, async () => remote);
      this.session.event('forward', { target, bytes: result.out.bytes });
      await this.#auditChannel('forward', { target, outcome: 'ok' });
    } catch (error) {
      const e = error instanceof CoatcheckError ? error : this.#services.fail(error);
      if (accepted === null) reject();
      else accepted.close();
      this.session.event('forward', { target, refused: e.code });
      await this.#auditRefusal('forward', { target, outcome: e.code });
    }
  }

  /**
   * Relay one channel both ways until the upstream closes it: input from the client as is,
   * output through the inspector when `inspect` (exec and shell), then the exit status.
   */
  async #relay(
    channel: ssh2.ServerChannel,
    inspect: boolean,
    number: number,
    open: () => Promise<ssh2.ClientChannel>,
  ): Promise<{
    exit: number | string | null;
    out: { bytes: number; head: Buffer };
    err: { bytes: number; head: Buffer };
  }> {
    const login = this.#login!;
    const keep = this.#options.recordOutputBytes;
    const fresh = () =>
      this.#services.pipeline.inspect(this.session, login.principal, login.target, login.parents);
    // The scans are ready before the upstream channel opens: from then on its output is read at once.
    const scans = inspect ? { out: await fresh(), err: await fresh() } : null;
    const idleMs = this.#options.flushIdleMs;
    const remote = await open();
    let exit: number | string | null = null;
    let signal: { name: string; dump: boolean; message: string } | null = null;
    remote.on('exit', (code: number | null, name?: string, dump?: boolean, message?: string) => {
      if (typeof code === 'number') exit = code;
      else if (typeof name === 'string') {
        exit = name;
        signal = { name, dump: dump === true, message: message ?? '' };
      }
    });
    const closed = new Promise<void>((resolve) => remote.once('close', () => resolve()));
    remote.on('error', () => undefined);
    // A full recording (ADR 0018): what the client sent, as sent, and what it received,
    // after inspection (tickets, never a secret).
    const recording = this.session.recording;
    const recorded =
      recording === null
        ? undefined
        : (stream: 'stdin' | 'stdout' | 'stderr') => (data: Buffer) =>
            this.session.record('ssh.data', stream === 'stdin' ? 'in' : 'out', {
              channel: number,
              stream,
              data: clip(data, recording.limits.maxBodyBytes),
            });
    if (recorded !== undefined) channel.on('data', recorded('stdin'));
    channel.pipe(remote);
    channel.on('close', () => remote.close());
    let out: { bytes: number; head: Buffer };
    let err: { bytes: number; head: Buffer };
    try {
      [out, err] = await Promise.all(
        scans !== null
          ? [
              inspectedCopy(remote, scans.out, fresh, channel, keep, idleMs, recorded?.('stdout')),
              inspectedCopy(
                remote.stderr,
                scans.err,
                fresh,
                channel.stderr,
                keep,
                idleMs,
                recorded?.('stderr'),
              ),
            ]
          : [
              plainCopy(remote, channel, recorded?.('stdout')),
              plainCopy(remote.stderr, channel.stderr, recorded?.('stderr')),
            ],
      );
    } catch (error) {
      // Inspection failed (fail closed): nothing more reaches the client from this channel.
      remote.close();
      throw error;
    }
    await closed;
    // The upstream channel closed first, so pipe() stopped reading the client's channel: read
    // it to its end, or ssh2 never emits its 'close' and the channel stays counted as open.
    channel.unpipe(remote);
    channel.resume();
    this.session.record('ssh.exit', 'out', { channel: number, exit });
    try {
      const s = signal as { name: string; dump: boolean; message: string } | null;
      if (s !== null) channel.exit(s.name, s.dump, s.message);
      else if (typeof exit === 'number') channel.exit(exit);
      channel.end();
    } catch {
      // the client is gone
    }
    return { exit, out, err };
  }
}

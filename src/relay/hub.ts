import { randomBytes } from 'node:crypto';
import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  constants as h2,
  connect as http2Connect,
} from 'node:http2';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/audit-log.js';
import { CoatcheckError } from '../core/errors.js';
import type { RelayRecord, Store } from '../store/types.js';
import {
  authority,
  RELAY_ERROR_HEADER,
  RELAY_REASON_HEADER,
  relaySettings,
  SESSION_WINDOW,
} from './protocol.js';
import { RELAY_HEARTBEAT_MS, type Relays } from './relays.js';

export interface RelayHubOptions {
  readonly maxStreamsPerSession: number;
  readonly openTimeoutMs: number;
  /** How long `open` waits for a session of the relay to appear (a relay reconnecting). */
  readonly waitForSessionMs?: number;
  readonly heartbeatMs?: number;
}

interface RelaySession {
  readonly id: string;
  readonly relay: RelayRecord;
  readonly source: string;
  readonly h2: ClientHttp2Session;
  readonly streams: Set<ClientHttp2Stream>;
  /** Streams carried over the session's life (for the disconnect record). */
  carried: number;
  closing: boolean;
  /** Why it ended (the disconnect record says it). */
  reason: string;
}

/**
 * The gateway's side of the relays (ADR 0025): the live sessions, by relay name, and
 * `open(via, host, port)`, which opens a CONNECT stream through one of them. Sessions of
 * the same relay share the load (the one with the fewest open streams is chosen) and stand
 * in for each other: a stream that cannot be opened on one session (it is closing, or
 * died) is tried on the next. A revocation (this replica's or another's, by the change
 * feed) drops every session of the relay at once; each heartbeat checks the relay is still
 * live and notes when it was last seen.
 */
export class RelayHub {
  readonly #relays: Relays;
  readonly #audit: AuditLog;
  readonly #log: Logger;
  readonly #options: Required<RelayHubOptions>;
  readonly #byName = new Map<string, Set<RelaySession>>();
  readonly #waiters = new Map<string, Set<() => void>>();
  readonly #unsubscribe: () => void;
  #closed = false;
  /** Rotates the order sessions with equally many streams are tried in (load sharing). */
  #turn = 0;
  /** Disconnect records being written. */
  readonly #disconnects = new Set<Promise<unknown>>();

  constructor(store: Store, relays: Relays, audit: AuditLog, log: Logger, options: RelayHubOptions) {
    this.#relays = relays;
    this.#audit = audit;
    this.#log = log;
    this.#options = {
      waitForSessionMs: Math.min(options.openTimeoutMs, 5_000),
      heartbeatMs: RELAY_HEARTBEAT_MS,
      ...options,
    };
    relays.sessionsOf = (id) => {
      let count = 0;
      for (const set of this.#byName.values())
        for (const s of set) if (s.relay.id === id && !s.closing) count++;
      return count;
    };
    this.#unsubscribe = store.subscribe((change) => {
      if (change.type === 'relay.revoked') this.#drop((s) => s.relay.id === change.id, 'revoked');
      else if (change.type === 'resync') void this.#recheckAll();
    });
  }

  /** Sessions open now, by relay name (for tests and `relay list`). */
  sessions(name: string): number {
    let count = 0;
    for (const s of this.#byName.get(name) ?? []) if (!s.closing) count++;
    return count;
  }

  /**
   * Take a relay's authenticated, upgraded TLS connection: speak HTTP/2 on it as the
   * client. Resolves once the session is registered (and its connect record written).
   */
  async attach(relay: RelayRecord, socket: Duplex, source: string): Promise<void> {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    // Registered before HTTP/2 registers its own: when the relay's connection goes, the
    // streams it carried fail with CC_ERR_RELAY_STREAM_LOST before HTTP/2 tears them down
    // (a consumer then tells its client why, instead of seeing a bare close).
    let lost: ((reason: string) => void) | null = null;
    socket.once('error', () => lost?.('the relay connection failed'));
    socket.once('close', () => lost?.('the relay connection closed'));
    const h2session = http2Connect('http://relay.invalid', {
      createConnection: () => socket,
      settings: relaySettings(this.#options.maxStreamsPerSession),
      maxSessionMemory: 64,
    });
    const session: RelaySession = {
      id: `rls_${randomBytes(12).toString('base64url')}`,
      relay,
      source,
      h2: h2session,
      streams: new Set(),
      carried: 0,
      closing: false,
      reason: 'closed by the relay',
    };
    lost = (reason) => {
      if (!session.closing) session.reason = reason;
      session.closing = true;
      this.#failStreams(session, session.reason);
    };
    h2session.on('error', (error) =>
      this.#log.warn(
        { relay: relay.id, session: session.id, err: (error as Error).message },
        'relay session error',
      ),
    );
    h2session.once('connect', () => h2session.setLocalWindowSize(SESSION_WINDOW));
    const heartbeat = setInterval(() => void this.#heartbeat(session), this.#options.heartbeatMs);
    heartbeat.unref();
    h2session.once('goaway', () => {
      session.closing = true;
    });
    h2session.once('close', () => {
      clearInterval(heartbeat);
      session.closing = true;
      const set = this.#byName.get(relay.name);
      set?.delete(session);
      if (set?.size === 0) this.#byName.delete(relay.name);
      this.#failStreams(session, session.reason);
      this.#log.info({ relay: relay.id, session: session.id, reason: session.reason }, 'relay session ended');
      const written = this.#audit
        .append({
          type: 'relay.disconnect',
          actor: `relay:${relay.id}`,
          data: {
            relay: relay.id,
            name: relay.name,
            session: session.id,
            source,
            reason: session.reason,
            streams: session.carried,
          },
        })
        .catch((error: unknown) =>
          this.#log.error({ code: (error as { code?: string }).code }, 'relay disconnect not audited'),
        );
      this.#disconnects.add(written);
      void written.finally(() => this.#disconnects.delete(written));
    });
    try {
      await this.#audit.append({
        type: 'relay.connect',
        actor: `relay:${relay.id}`,
        data: { relay: relay.id, name: relay.name, session: session.id, source },
      });
    } catch (error) {
      // Fail closed: a session the audit log does not know of carries nothing.
      this.#end(session, 'audit unavailable');
      throw error;
    }
    await this.#relays.touch(relay.id, source).catch(() => undefined);
    // Revoked between the key check and now: the revocation's notice may have gone by.
    if (!(await this.#relays.isLive(relay.id, relay.keyHash))) {
      this.#end(session, 'revoked');
      return;
    }
    let set = this.#byName.get(relay.name);
    if (set === undefined) {
      set = new Set();
      this.#byName.set(relay.name, set);
    }
    set.add(session);
    this.#log.info({ relay: relay.id, session: session.id, source }, 'relay session started');
    const waiters = this.#waiters.get(relay.name);
    if (waiters !== undefined) for (const wake of [...waiters]) wake();
  }

  #end(session: RelaySession, reason: string): void {
    if (!session.closing) session.reason = reason;
    session.closing = true;
    this.#failStreams(session, reason);
    session.h2.destroy();
  }

  /** Fail the streams still open on a session that ended, with an error that says so. */
  #failStreams(session: RelaySession, reason: string): void {
    for (const stream of session.streams) {
      stream.destroy(
        new CoatcheckError(
          'CC_ERR_RELAY_STREAM_LOST',
          `the session of relay ${session.relay.name} carrying this upstream connection ended (${reason})`,
          { details: { relay: session.relay.name } },
        ),
      );
    }
    session.streams.clear();
  }

  #drop(match: (s: RelaySession) => boolean, reason: string): void {
    for (const set of this.#byName.values())
      for (const session of [...set]) if (match(session)) this.#end(session, reason);
  }

  /** After a resync (change notices may have been missed): a relay not shown live is dropped. */
  async #recheckAll(): Promise<void> {
    for (const set of [...this.#byName.values()])
      for (const session of [...set]) await this.#heartbeat(session, false, true);
  }

  async #heartbeat(session: RelaySession, ping = true, afterResync = false): Promise<void> {
    if (session.closing) return;
    try {
      if (!(await this.#relays.isLive(session.relay.id, session.relay.keyHash))) {
        this.#end(session, 'revoked');
        return;
      }
      await this.#relays.touch(session.relay.id, session.source);
    } catch (error) {
      this.#log.warn(
        { relay: session.relay.id, code: (error as { code?: string }).code },
        'relay heartbeat: store unreachable',
      );
      // After a resync a revocation may have been missed and cannot be ruled out: fail
      // closed (the relay reconnects and is checked again). On a routine heartbeat, no
      // notice was missed: keep carrying (nothing is released here).
      if (afterResync) {
        this.#end(session, 'unverified');
        return;
      }
    }
    if (!ping || session.closing) return;
    const answered = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), this.#options.heartbeatMs);
      timer.unref();
      try {
        session.h2.ping((error) => {
          clearTimeout(timer);
          resolve(error === null);
        });
      } catch {
        clearTimeout(timer);
        resolve(false);
      }
    });
    if (!answered && !session.closing) this.#end(session, 'heartbeat unanswered');
  }

  /** The live sessions of a relay, fewest open streams first. */
  #candidates(name: string): RelaySession[] {
    const set = this.#byName.get(name);
    if (set === undefined) return [];
    const live = [...set].filter((s) => !s.closing && !s.h2.destroyed);
    const shift = live.length === 0 ? 0 : this.#turn++ % live.length;
    // Rotated, then a stable sort: fewest streams first, ties taken in turn.
    return [...live.slice(shift), ...live.slice(0, shift)].sort((a, b) => a.streams.size - b.streams.size);
  }

  async #waitForSession(name: string, deadline: number): Promise<void> {
    const left = deadline - Date.now();
    if (left <= 0) return;
    await new Promise<void>((resolve) => {
      let set = this.#waiters.get(name);
      if (set === undefined) {
        set = new Set();
        this.#waiters.set(name, set);
      }
      const waiters = set;
      const done = () => {
        clearTimeout(timer);
        waiters.delete(done);
        if (waiters.size === 0) this.#waiters.delete(name);
        resolve();
      };
      const timer = setTimeout(done, left);
      waiters.add(done);
    });
  }

  /**
   * A byte stream to `host:port` opened by relay `via`. Tries each live session of the
   * relay (fewest streams first) until one opens the stream; waits briefly for a session
   * when none is connected (a relay reconnecting).
   */
  async open(
    via: string,
    host: string,
    port: number,
    timeoutMs = this.#options.openTimeoutMs,
  ): Promise<Duplex> {
    const deadline = Date.now() + Math.min(timeoutMs, this.#options.openTimeoutMs);
    let last: CoatcheckError | null = null;
    if (this.#candidates(via).length === 0)
      await this.#waitForSession(via, Math.min(deadline, Date.now() + this.#options.waitForSessionMs));
    for (const session of this.#candidates(via)) {
      if (Date.now() >= deadline) break;
      try {
        return await this.#openOn(session, host, port, deadline);
      } catch (error) {
        if (error instanceof CoatcheckError && error.code === 'CC_ERR_RELAY_TARGET_REFUSED') throw error;
        last =
          error instanceof CoatcheckError
            ? error
            : new CoatcheckError(
                'CC_ERR_RELAY_UNAVAILABLE',
                `relay ${via}: the session failed to open a stream`,
                {
                  cause: error,
                  details: { relay: via },
                },
              );
      }
    }
    throw (
      last ??
      new CoatcheckError(
        'CC_ERR_RELAY_UNAVAILABLE',
        `no session of relay ${via} is connected to this gateway`,
        {
          details: { relay: via },
        },
      )
    );
  }

  #openOn(session: RelaySession, host: string, port: number, deadline: number): Promise<Duplex> {
    return new Promise<Duplex>((resolve, reject) => {
      let stream: ClientHttp2Stream;
      try {
        stream = session.h2.request(
          { [h2.HTTP2_HEADER_METHOD]: 'CONNECT', [h2.HTTP2_HEADER_AUTHORITY]: authority(host, port) },
          { endStream: false },
        );
      } catch (error) {
        reject(error);
        return;
      }
      const relay = session.relay.name;
      const fail = (error: Error) => {
        clearTimeout(timer);
        stream.off('response', onResponse);
        stream.off('error', fail);
        stream.off('close', onClose);
        if (!stream.destroyed) stream.close(h2.NGHTTP2_CANCEL);
        session.streams.delete(stream);
        reject(error);
      };
      const onClose = () =>
        fail(
          new CoatcheckError(
            'CC_ERR_RELAY_UNAVAILABLE',
            `relay ${relay}: the stream closed before it opened`,
            {
              details: { relay },
            },
          ),
        );
      const timer = setTimeout(
        () =>
          fail(
            new CoatcheckError(
              'CC_ERR_RELAY_TARGET_REFUSED',
              `relay ${relay} did not open ${authority(host, port)} in time`,
              { details: { relay, reason: 'timeout' } },
            ),
          ),
        Math.max(1, deadline - Date.now()),
      );
      const onResponse = (headers: Record<string, unknown>) => {
        const status = Number(headers[h2.HTTP2_HEADER_STATUS]);
        if (status === 200) {
          clearTimeout(timer);
          stream.off('response', onResponse);
          stream.off('error', fail);
          stream.off('close', onClose);
          session.carried++;
          stream.once('close', () => session.streams.delete(stream));
          // The consumer listens for errors too; this one keeps a lost stream with no
          // consumer listening yet from throwing in the gateway process.
          stream.on('error', () => undefined);
          resolve(stream);
          return;
        }
        const reason = String(headers[RELAY_REASON_HEADER] ?? 'refused').slice(0, 64);
        const code = String(headers[RELAY_ERROR_HEADER] ?? '');
        fail(
          new CoatcheckError(
            code === 'CC_ERR_RELAY_TARGET_REFUSED'
              ? 'CC_ERR_RELAY_TARGET_REFUSED'
              : 'CC_ERR_RELAY_UNAVAILABLE',
            `relay ${relay} could not open ${authority(host, port)} (${reason.replace(/[^A-Za-z0-9 _.-]/g, '?')})`,
            { details: { relay, reason } },
          ),
        );
      };
      session.streams.add(stream);
      stream.on('response', onResponse);
      stream.on('error', fail);
      stream.on('close', onClose);
    });
  }

  /** Drop every session (their disconnect records are written before it resolves). */
  async close(): Promise<void> {
    this.#closed = true;
    this.#unsubscribe();
    const ending = [...this.#byName.values()].flatMap((set) =>
      [...set].map(
        (s) =>
          new Promise<void>((resolve) => (s.h2.closed ? resolve() : s.h2.once('close', () => resolve()))),
      ),
    );
    this.#drop(() => true, 'the gateway stopped');
    for (const set of this.#waiters.values()) for (const wake of [...set]) wake();
    await Promise.all(ending);
    await Promise.all([...this.#disconnects]);
  }
}

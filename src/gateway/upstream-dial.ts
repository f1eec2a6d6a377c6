import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { Agent, type buildConnector, type Dispatcher } from 'undici';
import { CoatcheckError } from '../core/errors.js';

/** Where a front-end wants a byte stream to: the upstream's address, and the relay to go through. */
export interface UpstreamDial {
  readonly host: string;
  readonly port: number;
  /** The connection's relay (`connection add --via`), or null to dial directly. */
  readonly via: string | null;
  readonly timeoutMs: number;
}

/** Opens streams through relays (the gateway's RelayHub, src/relay/hub.ts). */
export interface RelayTunnels {
  open(via: string, host: string, port: number, timeoutMs: number): Promise<Duplex>;
}

/**
 * The one place front-ends open upstream byte streams (docs/relay.md): a TCP connection
 * from the gateway, or a stream through the relay the connection names. A connection with
 * `via` is never dialled directly: with no relays served here it is refused (fail closed).
 */
export type UpstreamDialer = (dial: UpstreamDial) => Promise<Duplex>;

export function createUpstreamDialer(relays: RelayTunnels | null): UpstreamDialer {
  return (dial) => {
    if (dial.via !== null) {
      if (relays === null)
        return Promise.reject(
          new CoatcheckError(
            'CC_ERR_RELAY_UNAVAILABLE',
            `the connection goes through relay ${dial.via}, and this gateway serves no relays (serve --listen-relay)`,
            { details: { relay: dial.via } },
          ),
        );
      return relays.open(dial.via, dial.host, dial.port, dial.timeoutMs);
    }
    return new Promise((resolve, reject) => {
      const socket = netConnect({ host: dial.host, port: dial.port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(Object.assign(new Error(`connect timeout after ${dial.timeoutMs} ms`), { code: 'ETIMEDOUT' }));
      }, dial.timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.setNoDelay(true);
        resolve(socket);
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  };
}

/** Direct dialling only (front-ends built without a relay hub: tests, tools). */
export const directDialer: UpstreamDialer = createUpstreamDialer(null);

/**
 * An undici `connect` function that opens each upstream connection of one relay through
 * the dialer, with TLS to the upstream on top for https (the relay carries the TLS bytes
 * and sees no plaintext).
 */
export function relayConnector(
  dialer: UpstreamDialer,
  via: string,
  options: { timeoutMs: number; tls?: ConnectionOptions },
): buildConnector.connector {
  return (opts, callback) => {
    const https = opts.protocol === 'https:';
    const host = opts.hostname.replace(/^\[|\]$/g, '');
    const port = opts.port !== '' && opts.port !== undefined ? Number(opts.port) : https ? 443 : 80;
    dialer({ host, port, via, timeoutMs: options.timeoutMs }).then(
      (stream) => {
        if (!https) {
          callback(null, stream as never);
          return;
        }
        const servername = opts.servername ?? (/^[0-9.]+$|:/.test(host) ? undefined : host);
        const socket = tlsConnect({
          ...options.tls,
          socket: stream,
          ...(servername === undefined ? {} : { servername }),
          ALPNProtocols: ['http/1.1'],
        });
        const onError = (error: Error) => {
          socket.destroy();
          callback(error, null);
        };
        socket.once('error', onError);
        socket.once('secureConnect', () => {
          socket.off('error', onError);
          callback(null, socket);
        });
      },
      (error: Error) => callback(error, null),
    );
  };
}

/** undici dispatchers for connections that go through relays: one Agent per relay, made on first use. */
export interface RelayDispatchers {
  /** The dispatcher for a connection's `via`. */
  get(via: string): Dispatcher;
  close(): Promise<void>;
}

export function createRelayDispatchers(
  dialer: UpstreamDialer,
  options: { timeoutMs: number; ca?: string[]; agent?: Omit<Agent.Options, 'connect'> },
): RelayDispatchers {
  const agents = new Map<string, Agent>();
  return {
    get(via) {
      let agent = agents.get(via);
      if (agent === undefined) {
        agent = new Agent({
          ...options.agent,
          connect: relayConnector(dialer, via, {
            timeoutMs: options.timeoutMs,
            tls: { rejectUnauthorized: true, ...(options.ca === undefined ? {} : { ca: options.ca }) },
          }),
        });
        agents.set(via, agent);
      }
      return agent;
    },
    async close() {
      await Promise.all([...agents.values()].map((a) => a.close().catch(() => undefined)));
      agents.clear();
    },
  };
}

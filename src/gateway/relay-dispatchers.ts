import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { Agent, type buildConnector, type Dispatcher } from 'undici';
import type { UpstreamDialer } from './upstream-dial.js';

// The HTTP clients' side of relays (undici), apart from the dialer so that opening a
// Context (every CLI command) does not load undici.

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

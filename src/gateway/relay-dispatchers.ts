import type { ConnectionOptions } from 'node:tls';
import { Agent, type buildConnector, type Dispatcher } from 'undici';
import { dialTls, type UpstreamDialer } from './upstream-dial.js';

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
    const dial = { host, port, via, timeoutMs: options.timeoutMs };
    const opened = https
      ? dialTls(dialer, dial, {
          ...options.tls,
          ...(opts.servername === undefined || opts.servername === null
            ? {}
            : { servername: opts.servername }),
        })
      : dialer(dial);
    opened.then(
      (stream) => callback(null, stream as never),
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

import { isIP, connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
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
 * Dial through `dialer` (directly or through the connection's relay), then TLS to the
 * upstream over that stream, verified (the relay carries only ciphertext). HTTP/1.1 is the
 * only protocol offered; the handshake is bounded by the dial's timeout.
 */
export async function dialTls(
  dialer: UpstreamDialer,
  dial: UpstreamDial,
  tls: Omit<ConnectionOptions, 'socket' | 'rejectUnauthorized' | 'ALPNProtocols'> = {},
): Promise<Duplex> {
  const raw = await dialer(dial);
  return new Promise((resolve, reject) => {
    const servername = tls.servername ?? (isIP(dial.host) === 0 ? dial.host : undefined);
    const socket = tlsConnect({
      ...tls,
      // Over a given socket, Node checks the certificate against servername, else host, else
      // 'localhost': an upstream named by its IP address is checked against that address.
      host: dial.host,
      socket: raw,
      ...(servername === undefined ? {} : { servername }),
      ALPNProtocols: ['http/1.1'],
      rejectUnauthorized: true,
    });
    const timer = setTimeout(
      () => socket.destroy(Object.assign(new Error('timeout'), { code: 'UND_ERR_CONNECT_TIMEOUT' })),
      dial.timeoutMs,
    );
    const onError = (error: Error) => {
      clearTimeout(timer);
      raw.destroy();
      reject(error);
    };
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

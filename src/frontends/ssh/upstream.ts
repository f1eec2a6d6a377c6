import { createHash } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { ConnectionView } from '../../connections/connections.js';
import { CoatcheckError } from '../../core/errors.js';
import type { UpstreamDialer } from '../../gateway/upstream-dial.js';
import { tuneSshSocket } from './socket.js';

/** Where an ssh connection points: `ssh://USER@HOST:PORT` and its pinned host key. */
export interface UpstreamTarget {
  readonly host: string;
  readonly port: number;
  readonly username: string;
  /** `ssh-ed25519 AAAA…`, `SHA256:…`, or `tofu` (trust on first use: ADR 0023). */
  readonly hostKey: string;
  /** The pin was recorded on first use (the refusal says so). */
  readonly firstUse?: boolean;
  /** The relay the upstream is reached through (`connection add --via`); null or absent: directly. */
  readonly via?: string | null;
}

/** `--host-key tofu`: the connection trusts the key its upstream presents first. */
export const TRUST_ON_FIRST_USE = 'tofu';

/** Where a first-use pin is kept (meta table): per connection and upstream address. */
export function firstUseMetaKey(connection: string, target: { host: string; port: number }): string {
  return `ssh_host_key_tofu:${connection}@${target.host}:${target.port}`;
}

/**
 * Records the key an upstream presents on first use (`--host-key tofu`), atomically: true
 * when this key is now the pin (or already was), false when another key was pinned first.
 */
export type FirstUseTrust = (key: string) => Promise<boolean>;

/** The key type named inside a host key blob (its first SSH string), bounded. */
export function blobKeyType(blob: Buffer): string {
  if (blob.length < 4) return '';
  const length = blob.readUInt32BE(0);
  if (length > 64 || blob.length < 4 + length) return '';
  return blob.subarray(4, 4 + length).toString('latin1');
}

export function upstreamTarget(view: ConnectionView): UpstreamTarget {
  const url = new URL(view.url);
  const hostKey = view.rules.hostKey;
  if (typeof hostKey !== 'string' || hostKey === '') {
    throw new CoatcheckError(
      'CC_ERR_SSH_UPSTREAM_HOST_KEY',
      `coatcheck: connection ${view.name} pins no host key; re-add it with --host-key`,
      { details: { connection: view.name } },
    );
  }
  return {
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port === '' ? 22 : Number(url.port),
    username: decodeURIComponent(url.username),
    hostKey,
    via: view.via,
  };
}

/** Host key algorithms to ask for, so that the server presents the pinned key's type. */
function hostKeyAlgorithms(pin: string): string[] | undefined {
  const type = pin.split(' ')[0]!;
  if (type.startsWith('SHA256:') || type === TRUST_ON_FIRST_USE) return undefined;
  if (type === 'ssh-rsa') return ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'];
  return [type];
}

/** Whether a raw host key blob is the pinned one (the whole key, or its SHA-256 fingerprint). */
export function hostKeyMatches(pin: string, blob: Buffer): boolean {
  if (pin.startsWith('SHA256:')) {
    const fingerprint = createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
    return `SHA256:${fingerprint}` === pin;
  }
  const pinned = Buffer.from(pin.split(' ')[1] ?? '', 'base64');
  return pinned.length > 0 && pinned.equals(blob);
}

/**
 * Log in to the upstream with the real credential: a private key (PEM or OpenSSH format)
 * or a password. The server must present the pinned host key, or nothing is sent.
 * The credential buffer is the caller's; it is not kept.
 */
export async function connectUpstream(
  target: UpstreamTarget,
  credential: Buffer,
  options: { timeoutMs: number; connection: string; trust?: FirstUseTrust; dial?: UpstreamDialer },
): Promise<ssh2.Client> {
  // Through the connection's relay: the stream is opened first (the relay's errors, like
  // CC_ERR_RELAY_UNAVAILABLE, reach the client as they are), and ssh2 runs over it. The
  // relay carries SSH's encrypted transport only.
  const via = target.via ?? null;
  let sock: Duplex | undefined;
  if (via !== null) {
    if (options.dial === undefined) {
      throw new CoatcheckError(
        'CC_ERR_RELAY_UNAVAILABLE',
        `coatcheck: connection ${options.connection} goes through relay ${via}, which this front-end cannot use`,
        { details: { relay: via } },
      );
    }
    sock = await options.dial({ host: target.host, port: target.port, via, timeoutMs: options.timeoutMs });
  }
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client();
    let wrongKey = false;
    let trustFailure: unknown = null;
    const text = credential.toString('utf8');
    const isKey = /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text);
    const algorithms = hostKeyAlgorithms(target.hostKey);
    client.once('ready', () => {
      client.removeAllListeners('error');
      client.on('error', () => undefined);
      resolve(client);
    });
    client.once('error', (error: Error & { level?: string }) => {
      client.on('error', () => undefined);
      client.end();
      if (trustFailure !== null) {
        reject(
          trustFailure instanceof CoatcheckError
            ? trustFailure
            : new CoatcheckError('CC_ERR_INTERNAL', 'the first-use host key could not be recorded', {
                cause: trustFailure,
              }),
        );
        return;
      }
      if (wrongKey) {
        reject(
          new CoatcheckError(
            'CC_ERR_SSH_UPSTREAM_HOST_KEY',
            `coatcheck: the upstream of connection ${options.connection} presented a host key other than the ${target.firstUse === true || target.hostKey === TRUST_ON_FIRST_USE ? 'one trusted on first use' : 'pinned one'}; nothing was sent`,
            {
              details: {
                connection: options.connection,
                ...(target.firstUse === true || target.hostKey === TRUST_ON_FIRST_USE
                  ? { firstUse: true }
                  : {}),
              },
            },
          ),
        );
        return;
      }
      reject(
        new CoatcheckError(
          'CC_ERR_SSH_UPSTREAM_FAILED',
          `coatcheck: the upstream of connection ${options.connection} could not be reached or refused the login (${error.level === 'client-authentication' ? 'authentication' : 'connection'})`,
          { details: { connection: options.connection, stage: error.level ?? 'connection' } },
        ),
      );
    });
    // Directly: our socket, so that it is tuned (socket.ts) before ssh2 writes its first
    // byte. Through a relay: the relay's stream opened above.
    let upstreamSock = sock;
    if (upstreamSock === undefined) {
      const direct = netConnect({ host: target.host, port: target.port });
      tuneSshSocket(direct);
      upstreamSock = direct;
    }
    client.connect({
      sock: upstreamSock as never,
      host: target.host,
      port: target.port,
      username: target.username,
      ...(isKey ? { privateKey: text } : { password: text }),
      hostVerifier: (key: Buffer, verify: (valid: boolean) => void) => {
        if (target.hostKey !== TRUST_ON_FIRST_USE) {
          const ok = hostKeyMatches(target.hostKey, key);
          if (!ok) wrongKey = true;
          verify(ok);
          return;
        }
        // First use: nothing is sent before the key is recorded (audited) as the pin.
        const type = blobKeyType(key);
        if (options.trust === undefined || type === '') {
          wrongKey = true;
          verify(false);
          return;
        }
        options.trust(`${type} ${key.toString('base64')}`).then(
          (ok) => {
            if (!ok) wrongKey = true;
            verify(ok);
          },
          (error: unknown) => {
            trustFailure = error;
            verify(false);
          },
        );
      },
      readyTimeout: options.timeoutMs,
      keepaliveInterval: 15_000,
      tryKeyboard: false,
      ...(algorithms === undefined ? {} : { algorithms: { serverHostKey: algorithms as never } }),
    });
  });
}

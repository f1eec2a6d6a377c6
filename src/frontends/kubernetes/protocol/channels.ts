import { CoatcheckError } from '../../../core/errors.js';

/**
 * The Kubernetes stream protocols over WebSocket (exec, attach): each binary message's
 * first byte names a channel. `v4.channel.k8s.io` and `v5.channel.k8s.io` (v5 adds the
 * 255 close signal) and their predecessors; the base64 variants and the SPDY-in-WebSocket
 * tunnel used by port-forward are not carried (their payloads could not be inspected per
 * channel). See kubernetes/staging/src/k8s.io/apimachinery/pkg/util/remotecommand/constants.go.
 */
export const CHANNEL_PROTOCOLS = [
  'v5.channel.k8s.io',
  'v4.channel.k8s.io',
  'v3.channel.k8s.io',
  'v2.channel.k8s.io',
  'channel.k8s.io',
] as const;

export const CHANNEL = { stdin: 0, stdout: 1, stderr: 2, error: 3, resize: 4, close: 255 } as const;

export const CHANNEL_NAMES: Readonly<Record<number, string>> = {
  0: 'stdin',
  1: 'stdout',
  2: 'stderr',
  3: 'error',
  4: 'resize',
  255: 'close',
};

/** The subprotocols offered that the gateway carries, in the client's order; refuses when none is. */
export function offeredProtocols(header: string | string[] | undefined): string[] {
  const offered = (Array.isArray(header) ? header.join(',') : (header ?? ''))
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  const kept = offered.filter((p) => (CHANNEL_PROTOCOLS as readonly string[]).includes(p));
  if (kept.length === 0) {
    throw new CoatcheckError(
      'CC_ERR_K8S_STREAM_UNSUPPORTED',
      `coatcheck: no WebSocket subprotocol the gateway can inspect was offered (carried: ${CHANNEL_PROTOCOLS.join(', ')})`,
    );
  }
  return kept;
}

/** A channel message: the channel byte, then the data. */
export function channelMessage(channel: number, data: Buffer): Buffer {
  return Buffer.concat([Buffer.from([channel]), data]);
}

import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocket } from 'ws';
import type { ErrorCode } from '../../core/errors.js';
import { CoatcheckError } from '../../core/errors.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import type { GatewaySession } from '../../gateway/session.js';
import {
  acceptClientWebSocket,
  closeLike,
  OrderedRelay,
  openUpstreamWebSocket,
  sendMessage,
  UpstreamHandshakeError,
  type UpstreamTls,
} from '../../gateway/websocket.js';
import { clip } from '../../recording/model.js';
import { CHANNEL, CHANNEL_NAMES, channelMessage } from './protocol/channels.js';

/** Output held back by the scanner (an unfinished line) goes out after this much quiet. */
export const IDLE_FLUSH_MS = 100;
/** Text of one output message kept in the session recording. */
const RECORDED_TEXT = 2048;

export type UpgradeResult =
  | { readonly kind: 'upgraded'; readonly socket: WebSocket; readonly protocol: string }
  | { readonly kind: 'refused'; readonly status: number; readonly body: Buffer };

function invalid(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_K8S_RESPONSE_INVALID', `coatcheck: ${message}`);
}

/** Open the WebSocket to the API server with the offered subprotocols (the WebSocket layer verifies its answer). */
export async function upgradeUpstream(input: {
  url: URL;
  headers: readonly string[];
  protocols: readonly string[];
  tls: UpstreamTls;
  /** Opens the connection another way than directly (through the connection's relay). */
  connect?: (() => Promise<Duplex>) | undefined;
  timeoutMs: number;
  signal: AbortSignal;
  log?: Pick<Logger, 'warn'>;
}): Promise<UpgradeResult> {
  try {
    const { connect, ...rest } = input;
    const answer = await openUpstreamWebSocket(connect === undefined ? rest : { ...rest, connect });
    if (answer.kind === 'refused') return { kind: 'refused', status: answer.status, body: answer.body };
    return { kind: 'upgraded', socket: answer.socket, protocol: answer.protocol };
  } catch (error) {
    if (error instanceof UpstreamHandshakeError) {
      throw invalid(
        'the API server accepted the WebSocket with a key, subprotocol or extension the gateway did not offer',
      );
    }
    throw error;
  }
}

export interface RelayInput {
  readonly req: IncomingMessage;
  readonly client: Duplex;
  readonly head: Buffer;
  readonly upstream: Extract<UpgradeResult, { kind: 'upgraded' }>;
  readonly session: GatewaySession;
  readonly summary: Record<string, unknown>;
  /** A new response scan (secrets found become tickets bound to the caller and connection). */
  readonly scan: () => Promise<ResponseScan>;
  /** Called once when both sides are closed: null, or the code the session ended with. */
  readonly onEnd: (code: ErrorCode | null) => void;
}

/**
 * Join the client and the API server. Client messages (stdin, resize, close) go upstream as
 * sent, counted, never kept. Server messages arrive whole; stdout and stderr run through one
 * streaming scan per channel (a secret split across messages is still seen), the error
 * channel's Status is scanned whole, ping/pong payloads and close reasons are scanned too.
 * Revoking what the session used sends a Status on the error channel and ends both sides.
 */
export async function relayChannels(input: RelayInput): Promise<void> {
  const { upstream, session, summary } = input;
  const server = upstream.socket;
  let client: WebSocket;
  try {
    client = await acceptClientWebSocket(input.req, input.client, input.head, {
      protocol: upstream.protocol,
      headers: [],
      refusal: 'CC_ERR_K8S_REQUEST_INVALID',
    });
  } catch (error) {
    server.terminate();
    throw error;
  }
  const counts: Record<string, number> = {};
  const count = (direction: 'in' | 'out', channel: number, bytes: number) => {
    const key = `${direction}.${CHANNEL_NAMES[channel] ?? `ch${channel}`}`;
    counts[key] = (counts[key] ?? 0) + bytes;
  };
  let ended = false;
  let endCode: ErrorCode | null = null;
  let open = 2;
  const closed = () => {
    open -= 1;
    if (open > 0 || ended) return;
    ended = true;
    if (idle !== null) clearTimeout(idle);
    summary.bytes = counts;
    session.signal.removeEventListener('abort', onRevoked);
    input.onEnd(endCode);
  };
  const fail = (code: ErrorCode) => {
    endCode ??= code;
    client.terminate();
    server.terminate();
  };
  const toClient = new OrderedRelay(server, () => fail('CC_ERR_GATEWAY_INSPECTION_FAILED'));
  const toServer = new OrderedRelay(client, () => fail('CC_ERR_K8S_REQUEST_INVALID'));

  // Client → API server.
  client.on('message', (data: Buffer, binary: boolean) => {
    const channel = data[0] ?? -1;
    const bytes = Math.max(0, data.length - 1);
    count('in', channel, bytes);
    session.event('k8s.stream', {
      direction: 'in',
      channel: CHANNEL_NAMES[channel] ?? String(channel),
      bytes,
    });
    // A full recording keeps what the client sent, as sent (tickets, never a secret).
    if (session.recording !== null)
      session.record('k8s.stream', 'in', {
        channel: CHANNEL_NAMES[channel] ?? String(channel),
        data: clip(data.subarray(1), session.recording.limits.maxBodyBytes),
      });
    // stdin waits while the API server has not taken what was sent.
    toServer.run(() => sendMessage(server, data, binary));
  });
  client.on('ping', (data: Buffer) =>
    toServer.run(() => {
      if (server.readyState === WebSocket.OPEN) server.ping(data);
    }),
  );
  client.on('pong', (data: Buffer) =>
    toServer.run(() => {
      if (server.readyState === WebSocket.OPEN) server.pong(data);
    }),
  );

  // API server → client.
  const scans = new Map<number, ResponseScan>();
  let idle: NodeJS.Timeout | null = null;
  const send = async (channel: number, data: Buffer) => {
    count('out', channel, data.length);
    if (data.length > 0)
      session.event('k8s.stream', {
        direction: 'out',
        channel: CHANNEL_NAMES[channel] ?? String(channel),
        bytes: data.length,
        text: data.subarray(0, RECORDED_TEXT).toString('utf8'),
      });
    // A full recording keeps what the client received: the output after inspection.
    if (data.length > 0 && session.recording !== null)
      session.record('k8s.stream', 'out', {
        channel: CHANNEL_NAMES[channel] ?? String(channel),
        data: clip(data, session.recording.limits.maxBodyBytes),
      });
    // Backpressure: the API server waits while kubectl has not taken what was sent.
    await sendMessage(client, channelMessage(channel, data), true);
  };
  const flush = async () => {
    for (const [channel, scan] of [...scans]) {
      scans.delete(channel);
      const tail = await scan.end();
      if (tail.length > 0) await send(channel, tail);
    }
  };
  const whole = async (payload: Buffer): Promise<Buffer> => {
    const scan = await input.scan();
    return Buffer.concat([await scan.push(payload), await scan.end()]);
  };
  server.on('message', (payload: Buffer) =>
    toClient.run(async () => {
      const channel = payload[0];
      if (channel === undefined) return;
      const data = payload.subarray(1);
      if (channel === CHANNEL.stdout || channel === CHANNEL.stderr) {
        if (data.length === 0) {
          await send(channel, data);
          return;
        }
        let scan = scans.get(channel);
        if (scan === undefined) {
          scan = await input.scan();
          scans.set(channel, scan);
        }
        const clean = await scan.push(data);
        if (clean.length > 0) await send(channel, clean);
        if (idle !== null) clearTimeout(idle);
        idle = setTimeout(() => {
          idle = null;
          toClient.run(flush);
        }, IDLE_FLUSH_MS);
        return;
      }
      // The error channel (a Status), and anything else: scanned whole, after what is held back.
      await flush();
      await send(channel, await whole(data));
    }),
  );
  // A control frame's payload is at most 125 bytes: a ticket longer than what it replaced is cut.
  server.on('ping', (data: Buffer) =>
    toClient.run(async () => {
      const clean = (await whole(data)).subarray(0, 125);
      if (client.readyState === WebSocket.OPEN) client.ping(clean);
    }),
  );
  server.on('pong', (data: Buffer) =>
    toClient.run(async () => {
      const clean = (await whole(data)).subarray(0, 125);
      if (client.readyState === WebSocket.OPEN) client.pong(clean);
    }),
  );

  // Revocation: tell kubectl why on the error channel, then end both sides.
  let revoked = false;
  const onRevoked = () => {
    revoked = true;
    endCode = session.terminatedBy ?? 'CC_ERR_TICKET_REVOKED';
    const status = JSON.stringify({
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: `coatcheck: the session was ended (${endCode}): a ticket, agent or secret it used was revoked or expired`,
      reason: 'Forbidden',
      code: 403,
    });
    server.terminate();
    if (client.readyState === WebSocket.OPEN) {
      client.send(channelMessage(CHANNEL.error, Buffer.from(status)), { binary: true });
      client.close(1000);
    }
    // A client that does not finish the close handshake is cut by the WebSocket layer's timeout.
  };
  session.signal.addEventListener('abort', onRevoked, { once: true });
  server.on('close', (code: number, reason: Buffer) => {
    // What the API server sent last is still queued: it goes first, then what is held back, then the close.
    toClient.run(async () => {
      if (idle !== null) clearTimeout(idle);
      await flush();
      // After a revocation the client was already told why, and is closing.
      if (!revoked) closeLike(client, code, await whole(reason));
    });
    void toClient.idle().then(closed);
  });
  client.on('close', (code: number, reason: Buffer) => {
    toServer.run(() => closeLike(server, code, reason));
    void toServer.idle().then(closed);
  });
  server.on('error', () => fail('CC_ERR_K8S_RESPONSE_INVALID'));
  client.on('error', () => fail('CC_ERR_K8S_REQUEST_INVALID'));
  if (session.signal.aborted) onRevoked();
  server.resume();
  client.resume();
}

import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { ErrorCode } from '../../core/errors.js';
import { CoatcheckError } from '../../core/errors.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import type { GatewaySession } from '../../gateway/session.js';
import { clip } from '../../recording/model.js';
import {
  createFrameParser,
  createMessageAssembler,
  encodeFrame,
  type WsFrame,
} from '../http/protocol/ws-frames.js';
import {
  acceptKey,
  CHANNEL,
  CHANNEL_NAMES,
  channelMessage,
  encodeMaskedFrame,
  validKey,
} from './protocol/channels.js';
import { connectRaw, type RawTls } from './upstream.js';

/** Largest upstream answer head (and refused-upgrade body) read. */
const MAX_HEAD = 64 * 1024;
/** Output held back by the scanner (an unfinished line) goes out after this much quiet. */
export const IDLE_FLUSH_MS = 100;
/** Text of one output message kept in the session recording. */
const RECORDED_TEXT = 2048;

export type UpgradeResult =
  | { readonly kind: 'upgraded'; readonly socket: Socket; readonly protocol: string; readonly rest: Buffer }
  | { readonly kind: 'refused'; readonly status: number; readonly body: Buffer };

function invalid(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_K8S_RESPONSE_INVALID', `coatcheck: ${message}`);
}

/** Read the API server's answer head (bounded), then a refused answer's body (bounded). */
function readAnswer(
  socket: Socket,
  timeoutMs: number,
): Promise<{ status: number; headers: Map<string, string>; rest: Buffer }> {
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const timer = setTimeout(
      () => done(Object.assign(new Error('timeout'), { code: 'UND_ERR_HEADERS_TIMEOUT' })),
      timeoutMs,
    );
    const done = (
      error: Error | null,
      value?: { status: number; headers: Map<string, string>; rest: Buffer },
    ) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('end', onEnd);
      if (error !== null) reject(error);
      else resolve(value!);
    };
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      const end = buffer.indexOf('\r\n\r\n');
      if (end === -1) {
        if (buffer.length > MAX_HEAD) done(invalid('the API server answer head is too large'));
        return;
      }
      socket.pause();
      const lines = buffer.subarray(0, end).toString('latin1').split('\r\n');
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
      if (status === null) {
        done(invalid('the API server answered an upgrade with something that is not HTTP'));
        return;
      }
      const headers = new Map<string, string>();
      for (const line of lines.slice(1)) {
        const colon = line.indexOf(':');
        if (colon > 0) {
          const name = line.slice(0, colon).trim().toLowerCase();
          const value = line.slice(colon + 1).trim();
          headers.set(name, headers.has(name) ? `${headers.get(name)}, ${value}` : value);
        }
      }
      done(null, { status: Number(status[1]), headers, rest: buffer.subarray(end + 4) });
    };
    const onError = (error: Error) => done(error);
    const onEnd = () => done(new Error('the API server closed before answering'));
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('end', onEnd);
  });
}

function readRest(socket: Socket, first: Buffer, length: number | null, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve) => {
    let body = first;
    const limit = Math.min(length ?? MAX_HEAD, MAX_HEAD);
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(body.subarray(0, limit));
    };
    const timer = setTimeout(finish, timeoutMs);
    if (body.length >= limit) {
      finish();
      return;
    }
    socket.on('data', (chunk: Buffer) => {
      body = Buffer.concat([body, chunk]);
      if (body.length >= limit) finish();
    });
    socket.on('end', finish);
    socket.on('error', finish);
    socket.resume();
  });
}

/** Open the WebSocket to the API server with the offered subprotocols; verify its answer. */
export async function upgradeUpstream(input: {
  url: URL;
  headers: readonly string[];
  protocols: readonly string[];
  tls: RawTls;
  timeoutMs: number;
  signal: AbortSignal;
}): Promise<UpgradeResult> {
  const socket = await connectRaw(input.url, input.tls, input.timeoutMs);
  const abort = () => socket.destroy();
  input.signal.addEventListener('abort', abort, { once: true });
  try {
    socket.on('error', () => socket.destroy());
    const key = randomBytes(16).toString('base64');
    const lines = [`GET ${input.url.pathname}${input.url.search} HTTP/1.1`, `Host: ${input.url.host}`];
    for (let i = 0; i + 1 < input.headers.length; i += 2)
      lines.push(`${input.headers[i]}: ${input.headers[i + 1]}`);
    lines.push(
      'Connection: Upgrade',
      'Upgrade: websocket',
      'Sec-WebSocket-Version: 13',
      `Sec-WebSocket-Key: ${key}`,
      `Sec-WebSocket-Protocol: ${input.protocols.join(', ')}`,
    );
    socket.write(`${lines.join('\r\n')}\r\n\r\n`);
    const answer = await readAnswer(socket, input.timeoutMs);
    if (answer.status !== 101) {
      const length = Number(answer.headers.get('content-length'));
      const body = await readRest(socket, answer.rest, Number.isFinite(length) ? length : null, 2_000);
      return { kind: 'refused', status: answer.status, body };
    }
    const protocol = answer.headers.get('sec-websocket-protocol') ?? '';
    if (
      answer.headers.get('sec-websocket-accept') !== acceptKey(key) ||
      !input.protocols.includes(protocol) ||
      answer.headers.has('sec-websocket-extensions')
    ) {
      socket.destroy();
      throw invalid(
        'the API server accepted the WebSocket with a key, subprotocol or extension the gateway did not offer',
      );
    }
    return { kind: 'upgraded', socket, protocol, rest: answer.rest };
  } catch (error) {
    socket.destroy();
    throw error;
  } finally {
    input.signal.removeEventListener('abort', abort);
  }
}

export interface RelayInput {
  readonly client: Socket;
  readonly clientKey: string;
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
 * Join the client and the API server. Client frames (stdin, resize, close) go upstream
 * re-masked, counted, never kept. Server messages are reassembled from fragments; stdout
 * and stderr run through one streaming scan per channel (a secret split across messages
 * is still seen), the error channel's Status is scanned whole, control frames' payloads
 * are scanned too. Revoking what the session used sends a Status on the error channel and
 * ends both sides.
 */
export async function relayChannels(input: RelayInput): Promise<void> {
  const { client, upstream, session, summary } = input;
  const server = upstream.socket;
  if (!validKey(input.clientKey)) throw invalid('the client sent no valid Sec-WebSocket-Key');
  client.write(
    `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(input.clientKey)}\r\nSec-WebSocket-Protocol: ${upstream.protocol}\r\n\r\n`,
  );
  const counts: Record<string, number> = {};
  const count = (direction: 'in' | 'out', channel: number, bytes: number) => {
    const key = `${direction === 'in' ? 'in' : 'out'}.${CHANNEL_NAMES[channel] ?? `ch${channel}`}`;
    counts[key] = (counts[key] ?? 0) + bytes;
  };
  let ended = false;
  let endCode: ErrorCode | null = null;
  const finish = () => {
    if (ended) return;
    ended = true;
    if (idle !== null) clearTimeout(idle);
    summary.bytes = counts;
    session.signal.removeEventListener('abort', onRevoked);
    client.destroy();
    server.destroy();
    input.onEnd(endCode);
  };

  // Client → API server.
  const fromClient = createFrameParser();
  let clientChannel = -1;
  const onClientData = (chunk: Buffer) => {
    let frames: WsFrame[];
    try {
      frames = fromClient.push(chunk);
    } catch {
      endCode = 'CC_ERR_K8S_REQUEST_INVALID';
      finish();
      return;
    }
    for (const frame of frames) {
      if (frame.opcode === 1 || frame.opcode === 2) {
        clientChannel = frame.payload[0] ?? -1;
        count('in', clientChannel, Math.max(0, frame.payload.length - 1));
        session.event('k8s.stream', {
          direction: 'in',
          channel: CHANNEL_NAMES[clientChannel] ?? String(clientChannel),
          bytes: Math.max(0, frame.payload.length - 1),
        });
        // A full recording keeps what the client sent, as sent (tickets, never a secret).
        if (session.recording !== null)
          session.record('k8s.stream', 'in', {
            channel: CHANNEL_NAMES[clientChannel] ?? String(clientChannel),
            data: clip(frame.payload.subarray(1), session.recording.limits.maxBodyBytes),
          });
      } else if (frame.opcode === 0) count('in', clientChannel, frame.payload.length);
      server.write(encodeMaskedFrame(frame));
    }
    // And the other way: stdin waits while the API server has not taken it.
    if (server.writableNeedDrain) {
      client.pause();
      server.once('drain', () => client.resume());
    }
  };

  // API server → client.
  const fromServer = createFrameParser();
  const assembler = createMessageAssembler();
  const scans = new Map<number, ResponseScan>();
  let idle: NodeJS.Timeout | null = null;
  let queue = Promise.resolve();
  const send = (channel: number, data: Buffer) => {
    client.write(encodeFrame({ fin: true, rsv: 0, opcode: 2, payload: channelMessage(channel, data) }));
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
  };
  const flush = async () => {
    for (const [channel, scan] of [...scans]) {
      scans.delete(channel);
      const tail = await scan.end();
      if (tail.length > 0) send(channel, tail);
    }
  };
  const whole = async (payload: Buffer): Promise<Buffer> => {
    const scan = await input.scan();
    return Buffer.concat([await scan.push(payload), await scan.end()]);
  };
  const onMessage = async (opcode: number, payload: Buffer) => {
    const channel = payload[0];
    if (channel === undefined) return;
    const data = payload.subarray(1);
    if (channel === CHANNEL.stdout || channel === CHANNEL.stderr) {
      if (data.length === 0) {
        send(channel, data);
        return;
      }
      let scan = scans.get(channel);
      if (scan === undefined) {
        scan = await input.scan();
        scans.set(channel, scan);
      }
      const clean = await scan.push(data);
      if (clean.length > 0) send(channel, clean);
      if (idle !== null) clearTimeout(idle);
      idle = setTimeout(() => {
        idle = null;
        queue = queue.then(flush).catch(failed);
      }, IDLE_FLUSH_MS);
      return;
    }
    // The error channel (a Status), and anything else: scanned whole, after what is held back.
    await flush();
    if (opcode !== 2 && opcode !== 1) return;
    send(channel, await whole(data));
  };
  const onControl = async (frame: WsFrame) => {
    if (frame.opcode === 8) await flush();
    const keep = frame.opcode === 8 ? Math.min(2, frame.payload.length) : 0;
    let payload = Buffer.concat([frame.payload.subarray(0, keep), await whole(frame.payload.subarray(keep))]);
    if (payload.length > 125) payload = payload.subarray(0, frame.opcode === 8 ? keep : 125);
    client.write(encodeFrame({ ...frame, payload }));
  };
  const failed = () => {
    endCode ??= 'CC_ERR_GATEWAY_INSPECTION_FAILED';
    finish();
  };
  const onServerData = (chunk: Buffer) => {
    server.pause();
    queue = queue
      .then(async () => {
        let frames: WsFrame[];
        try {
          frames = fromServer.push(chunk);
        } catch {
          endCode = 'CC_ERR_K8S_RESPONSE_INVALID';
          finish();
          return;
        }
        for (const frame of frames) {
          const unit = assembler.push(frame);
          if (unit === null) continue;
          if (unit.kind === 'control') await onControl(unit.frame);
          else await onMessage(unit.opcode, unit.payload);
        }
        // Backpressure: the API server waits while kubectl has not taken what was sent.
        if (client.writableNeedDrain && !ended)
          await new Promise<void>((resolve) => {
            const done = () => {
              client.off('drain', done);
              client.off('close', done);
              resolve();
            };
            client.on('drain', done);
            client.on('close', done);
          });
        if (!ended) server.resume();
      })
      .catch(failed);
  };

  // Revocation: tell kubectl why on the error channel, then end both sides.
  const onRevoked = () => {
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
    if (client.writable) {
      client.write(
        encodeFrame({
          fin: true,
          rsv: 0,
          opcode: 2,
          payload: channelMessage(CHANNEL.error, Buffer.from(status)),
        }),
      );
      client.write(encodeFrame({ fin: true, rsv: 0, opcode: 8, payload: Buffer.from([0x03, 0xe8]) }));
    }
    setImmediate(finish);
  };
  session.signal.addEventListener('abort', onRevoked, { once: true });
  if (session.signal.aborted) {
    onRevoked();
    return;
  }
  client.on('data', onClientData);
  client.on('error', () => finish());
  client.on('close', () => finish());
  server.on('data', onServerData);
  server.on('error', () => finish());
  server.on('close', () => {
    // What the API server sent last is still in the queue: send it, then end.
    queue = queue
      .then(async () => {
        if (idle !== null) clearTimeout(idle);
        await flush();
      })
      .catch(() => undefined)
      .finally(() => {
        // kubectl reads what is written before the socket closes; the client's close ends the relay.
        if (client.writable) client.end();
        setTimeout(finish, 2_000).unref();
      });
  });
  if (input.head.length > 0) onClientData(input.head);
  if (upstream.rest.length > 0) onServerData(upstream.rest);
  server.resume();
}

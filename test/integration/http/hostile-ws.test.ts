/**
 * A hostile upstream WebSocket server behind the forward proxy: it sends the secret it
 * received split across continuation frames, in close reasons and in ping/pong payloads.
 * The client is raw (every frame is visible, control frames included): nothing the
 * client receives may hold the canary.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFrameParser, encodeFrame, type WsFrame } from '../../helpers/ws-frames.js';
import { basic, type Proxied, startProxy } from './forward-harness.js';
import { type Gateway, startGateway } from './harness.js';

const SECRET = 'ws-canary-Secret-5f4e3d2c1b0a99';

/** What the server sends after the upgrade, given the secret it received. */
const scripts: Record<string, (secret: string) => WsFrame[]> = {
  // Two fragments, cut in the middle of the secret.
  split2: (s) => [text(`token ${s.slice(0, 10)}`, false), cont(`${s.slice(10)} end`, true)],
  // Three fragments.
  split3: (s) => [text(s.slice(0, 5), false), cont(s.slice(5, 17), false), cont(s.slice(17), true)],
  // One byte per fragment.
  'split-bytes': (s) => [
    text(s.slice(0, 1), false),
    ...[...s.slice(1)].map((c, i, all) => cont(c, i === all.length - 1)),
  ],
  // A ping between two fragments, itself carrying the secret.
  'split-ping': (s) => [text(s.slice(0, 12), false), ctl(9, s), cont(s.slice(12), true)],
  // Binary message, fragmented.
  'split-binary': (s) => [
    { fin: false, rsv: 0, opcode: 2, payload: Buffer.from(s.slice(0, 3)) },
    cont(s.slice(3), true),
  ],
  ping: (s) => [ctl(9, `p ${s}`), text('after', true)],
  pong: (s) => [ctl(10, s), text('after', true)],
  close: (s) => [ctl(8, Buffer.concat([Buffer.from([0x03, 0xe8]), Buffer.from(`bye ${s}`)]))],
  // The close reason with the secret, and the TCP connection never ended by the server.
  'half-open': (s) => [ctl(8, Buffer.concat([Buffer.from([0x0f, 0xa0]), Buffer.from(`gone ${s}`)]))],
  // A secret in a text message, then one in a binary message, then a pong: order kept.
  ordered: (s) => [
    text(`one ${s}`, true),
    { fin: true, rsv: 0, opcode: 2, payload: Buffer.from(`two ${s}`) },
    ctl(10, s),
  ],
  // A text message that is not UTF-8: the gateway does not pass it on.
  'bad-utf8': () => [{ fin: true, rsv: 0, opcode: 1, payload: Buffer.from([0x61, 0xff, 0xfe]) }],
  // A message longer than the gateway reads (16 MiB), announced in the frame head only.
  oversized: () => [{ fin: true, rsv: 0, opcode: 2, payload: Buffer.alloc(17 * 1024 * 1024, 0x61) }],
  'close-long': (s) => [
    ctl(8, Buffer.concat([Buffer.from([0x03, 0xe8]), Buffer.from(`${s}${'.'.repeat(90)}`)])),
  ],
};

function text(payload: string, fin: boolean): WsFrame {
  return { fin, rsv: 0, opcode: 1, payload: Buffer.from(payload) };
}
function cont(payload: string, fin: boolean): WsFrame {
  return { fin, rsv: 0, opcode: 0, payload: Buffer.from(payload) };
}
function ctl(opcode: number, payload: string | Buffer): WsFrame {
  return { fin: true, rsv: 0, opcode, payload: Buffer.isBuffer(payload) ? payload : Buffer.from(payload) };
}

let server: Server;
let host: string;
let gw: Gateway;
let px: Proxied;
let agent: { key: string; ref: string };
let ticket: string;
const received: string[] = [];
const sockets = new Set<Socket>();

beforeAll(async () => {
  server = createServer((_req, res) => {
    res.writeHead(426, { 'content-length': 0 });
    res.end();
  });
  server.on('upgrade', (req, socket: Socket) => {
    const secret = String(req.headers.authorization ?? '').replace(/^Bearer /, '');
    const accept = createHash('sha1')
      .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest('base64');
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n${protocolAnswer(req.headers['sec-websocket-protocol'])}\r\n`,
    );
    const script = scripts[(req.url ?? '').split('/').pop() ?? ''] ?? (() => []);
    // Each frame in its own write, with a pause: no chance of arriving as one chunk.
    sockets.add(socket);
    const frames = script(secret);
    if (frames.at(-1)?.opcode !== 8) frames.push(ctl(8, Buffer.from([0x03, 0xe8])));
    let i = 0;
    // A server ends its connection once it has sent its close frame; `half-open` keeps it open.
    const holdOpen = (req.url ?? '').endsWith('/half-open');
    const next = () => {
      if (i >= frames.length || socket.destroyed) return;
      const frame = frames[i++]!;
      if (frame.opcode === 8 && !holdOpen) {
        socket.end(encodeFrame(frame));
        return;
      }
      socket.write(encodeFrame(frame));
      setTimeout(next, 3);
    };
    next();
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  gw = await startGateway();
  // A plain ws:// upstream on loopback: the destination says http:// (secrets go over TLS elsewhere).
  await gw.addSecret('ws', SECRET, [`http://${host}`]);
  px = await startProxy(gw);
  agent = await gw.createAgent('ws-agent');
  ticket = await gw.issue('ws', agent.ref);
}, 60_000);

afterAll(async () => {
  for (const socket of sockets) socket.destroy();
  await px?.close();
  await gw?.close();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  for (const text of [...received, gw.logs(), px.logs()]) expect(text).not.toContain(SECRET);
});

/** A raw client: a plain-http upgrade through the proxy, every frame the proxy sends back, until it closes. */
/** The server picks the last subprotocol offered (so it is not simply the first), echoing it as received. */
const offeredUpstream: string[] = [];
function protocolAnswer(offered: string | undefined): string {
  if (offered !== undefined) offeredUpstream.push(offered);
  const last = (offered ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '')
    .at(-1);
  return last === undefined ? '' : `Sec-WebSocket-Protocol: ${last}\r\n`;
}

let lastHead = '';

async function session(script: string, extra: string[] = [], upgraded = true): Promise<WsFrame[]> {
  const socket = connect(Number(px.address.split(':')[1]), '127.0.0.1');
  await new Promise<void>((resolve) => socket.once('connect', resolve));
  socket.write(
    [
      `GET http://${host}/${script} HTTP/1.1`,
      `Host: ${host}`,
      `Proxy-Authorization: ${basic('agent', agent.key)}`,
      `Authorization: Bearer ${ticket}`,
      'Connection: Upgrade',
      'Upgrade: websocket',
      'Sec-WebSocket-Version: 13',
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
      ...extra,
      '',
      '',
    ].join('\r\n'),
  );
  const parser = createFrameParser();
  const frames: WsFrame[] = [];
  let head: Buffer | null = Buffer.alloc(0);
  return new Promise((resolve) => {
    const done = () => {
      socket.destroy();
      resolve(frames);
    };
    const timer = setTimeout(done, 4000);
    socket.on('data', (chunk: Buffer) => {
      received.push(chunk.toString('latin1'));
      if (head !== null) {
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n');
        if (end === -1) return;
        lastHead = head.subarray(0, end).toString('latin1');
        if (!upgraded) {
          clearTimeout(timer);
          done();
          return;
        }
        expect(head.subarray(0, 12).toString()).toBe('HTTP/1.1 101');
        chunk = head.subarray(end + 4);
        head = null;
      }
      for (const frame of parser.push(chunk)) {
        frames.push(frame);
        if (frame.opcode === 8) {
          clearTimeout(timer);
          done();
        }
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(frames);
    });
  });
}

const TICKET = /cct_[0-9A-Za-z]{28}/;
const all = (frames: WsFrame[]) => Buffer.concat(frames.map((f) => f.payload)).toString('latin1');

describe('forward proxy WebSocket: a secret split across continuation frames', () => {
  for (const name of ['split2', 'split3', 'split-bytes', 'split-binary']) {
    it(`${name}: reassembled, inspected, sent as one message`, async () => {
      const frames = await session(name);
      expect(all(frames)).not.toContain(SECRET);
      const data = frames.filter((f) => f.opcode < 8);
      expect(data.length).toBe(1);
      expect(data[0]!.fin).toBe(true);
      expect(data[0]!.payload.toString()).toMatch(TICKET);
    });
  }

  it('split-ping: a ping between fragments is inspected too', async () => {
    const frames = await session('split-ping');
    expect(all(frames)).not.toContain(SECRET);
    expect(frames.map((f) => f.opcode)).toEqual([9, 1, 8]);
    expect(frames[0]!.payload.toString()).toMatch(TICKET);
  });
});

describe('forward proxy WebSocket: control frames', () => {
  for (const name of ['ping', 'pong']) {
    it(`${name} payloads are inspected`, async () => {
      const frames = await session(name);
      expect(all(frames)).not.toContain(SECRET);
      expect(frames[0]!.payload.toString()).toMatch(TICKET);
      expect(frames[1]!.payload.toString()).toBe('after');
    });
  }

  it('a close reason is inspected, the status code kept', async () => {
    const frames = await session('close');
    const close = frames.at(-1)!;
    expect(close.opcode).toBe(8);
    expect(close.payload.readUInt16BE(0)).toBe(1000);
    expect(close.payload.subarray(2).toString()).toMatch(new RegExp(`^bye ${TICKET.source}$`));
  });

  it('a close reason that would outgrow the frame limit with its ticket is dropped, not cut', async () => {
    const frames = await session('close-long');
    const close = frames.at(-1)!;
    expect(close.opcode).toBe(8);
    expect(close.payload.length).toBeLessThanOrEqual(125);
    expect(close.payload.toString('latin1')).not.toContain(SECRET.slice(0, 8));
  });
});

describe('forward proxy WebSocket: hostile upstream variants', () => {
  it('an upstream that keeps its connection open after closing: the close reaches the agent, inspected', async () => {
    const frames = await session('half-open');
    expect(all(frames)).not.toContain(SECRET);
    const close = frames.at(-1)!;
    expect(close.opcode).toBe(8);
    expect(close.payload.readUInt16BE(0)).toBe(4000);
    expect(close.payload.subarray(2).toString()).toMatch(new RegExp(`^gone ${TICKET.source}$`));
  });

  it('text, binary and pong keep their order and their kinds, each inspected', async () => {
    const frames = await session('ordered');
    expect(all(frames)).not.toContain(SECRET);
    expect(frames.map((f) => f.opcode)).toEqual([1, 2, 10, 8]);
    expect(frames[0]!.payload.toString()).toMatch(new RegExp(`^one ${TICKET.source}$`));
    expect(frames[1]!.payload.toString()).toMatch(new RegExp(`^two ${TICKET.source}$`));
    expect(frames[2]!.payload.toString()).toMatch(TICKET);
  });

  it('a text message that is not UTF-8 is not passed on', async () => {
    const frames = await session('bad-utf8');
    expect(frames.filter((f) => f.opcode === 1)).toEqual([]);
  });

  it('a message longer than the gateway reads is not passed on, and the session ends', async () => {
    const frames = await session('oversized');
    expect(frames.filter((f) => f.opcode === 2)).toEqual([]);
  });
});

describe('forward proxy WebSocket: a ticket in a subprotocol', () => {
  it('is refused under the default placements (credential only), before anything goes upstream', async () => {
    const frames = await session('ping', [`Sec-WebSocket-Protocol: chat, bearer.${ticket}`], false);
    expect(frames).toEqual([]);
    expect(lastHead).toMatch(/^HTTP\/1\.1 403 /);
    expect(lastHead).not.toContain(SECRET);
  });

  it('where headers are allowed, is exchanged upstream, and the agent is told the subprotocol in its own words', async () => {
    const headerSecret = `${SECRET}-hdr`;
    await gw.addSecret('ws-hdr', headerSecret, [`http://${host}`], { placements: ['credential', 'header'] });
    const headerTicket = await gw.issue('ws-hdr', agent.ref);
    const frames = await session('ping', [`Sec-WebSocket-Protocol: chat, bearer.${headerTicket}`]);
    expect(offeredUpstream.at(-1)).toBe(`chat,bearer.${headerSecret}`);
    expect(lastHead).toContain(`Sec-WebSocket-Protocol: bearer.${headerTicket}`);
    expect(lastHead).not.toContain(SECRET);
    expect(all(frames)).not.toContain(SECRET);
  });

  it('an invalid subprotocol list is refused before anything goes upstream', async () => {
    const frames = await session('ping', ['Sec-WebSocket-Protocol: chat, chat'], false);
    expect(frames).toEqual([]);
    expect(lastHead).toMatch(/^HTTP\/1\.1 400 /);
  });
});

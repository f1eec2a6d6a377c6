import { randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { tuneSshSocket } from './socket.js';

let server: Server | null = null;

afterEach(async () => {
  await new Promise((r) => (server === null ? r(null) : server.close(r)));
  server = null;
});

/** A loopback pair: the tuned client socket and everything the server side receives. */
async function pair(): Promise<{ socket: Socket; received: Promise<Buffer> }> {
  let receivedResolve!: (b: Buffer) => void;
  const received = new Promise<Buffer>((r) => {
    receivedResolve = r;
  });
  server = createServer((peer) => {
    const parts: Buffer[] = [];
    peer.on('data', (d: Buffer) => parts.push(d));
    peer.on('end', () => {
      receivedResolve(Buffer.concat(parts));
      peer.end();
    });
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const socket = connect({ host: '127.0.0.1', port: (server!.address() as { port: number }).port });
  tuneSshSocket(socket);
  await new Promise<void>((r) => socket.once('connect', () => r()));
  return { socket, received };
}

describe('tuneSshSocket', () => {
  it('holds what is written in one tick and sends it when the tick ends, in order', async () => {
    const { socket, received } = await pair();
    const pieces = [randomBytes(4), randomBytes(32_768), randomBytes(16)];
    for (const p of pieces) socket.write(p);
    // Corked for the rest of this tick: the three pieces leave together.
    expect(socket.writableCorked).toBe(1);
    expect(socket.writableLength).toBe(32_788);
    await new Promise((r) => process.nextTick(r));
    expect(socket.writableCorked).toBe(0);
    // The next tick's writes are held again, then sent.
    socket.write(Buffer.from('next'));
    expect(socket.writableCorked).toBe(1);
    await new Promise((r) => setImmediate(r));
    expect(socket.writableCorked).toBe(0);
    socket.end();
    expect(await received).toEqual(Buffer.concat([...pieces, Buffer.from('next')]));
  });

  it('end() in the same tick as the writes sends them before the FIN', async () => {
    const { socket, received } = await pair();
    const data = randomBytes(100_000);
    socket.write(data.subarray(0, 50_000));
    socket.write(data.subarray(50_000));
    socket.end();
    expect(await received).toEqual(data);
  });
});

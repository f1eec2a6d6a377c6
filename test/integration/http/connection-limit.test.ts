import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Gateway, startGateway } from './harness.js';

/** What one raw connection reads before the server closes it, or within `ms`. */
function readFor(socket: Socket, ms: number): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    const done = () => resolve(text);
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
    });
    socket.once('close', done);
    setTimeout(done, ms);
  });
}

const open = (port: number) =>
  new Promise<Socket>((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port }, () => resolve(socket));
    socket.once('error', reject);
  });

/**
 * http.maxConnections: an HTTP listener holds at most that many client connections; the next
 * one is answered 503 CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS (JSON, like every refusal) and
 * closed, and a connection is accepted again once one closes.
 */
describe('HTTP front-end connection limit', () => {
  let gw: Gateway;
  let port: number;
  const held: Socket[] = [];

  beforeAll(async () => {
    gw = await startGateway({ extraConfig: 'http:\n  maxConnections: 2\n' });
    port = Number(new URL(gw.url).port);
  });
  afterAll(async () => {
    for (const s of held) s.destroy();
    await gw?.close();
  });

  it('refuses the connection beyond the limit with a 503 and accepts again when one closes', async () => {
    held.push(await open(port), await open(port));
    const third = await open(port);
    const refusal = await readFor(third, 5_000);
    expect(refusal).toMatch(/^HTTP\/1\.1 503 /);
    expect(refusal).toContain('x-coatcheck-error: CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS');
    expect(refusal).toContain('"code":"CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS"');

    held.shift()!.destroy();
    // The freed slot is taken again: the request is served (refused by the router, not the limit).
    let answer = '';
    for (let i = 0; i < 50; i++) {
      const next = await open(port);
      next.write('GET /c/nowhere/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
      answer = await readFor(next, 5_000);
      if (!answer.includes('TOO_MANY_CONNECTIONS')) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(answer).toMatch(/^HTTP\/1\.1 \d{3} /);
    expect(answer).not.toContain('CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS');
  });
});

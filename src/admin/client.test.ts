import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createRemoteClient } from './client.js';

/** A real HTTP server standing in for the admin API, answering what each test sets. */
async function serve(answer: (path: string, body: string) => [number, string]): Promise<[Server, string]> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => {
      body += chunk.toString();
    });
    req.on('end', () => {
      const [status, text] = answer(`${req.method} ${req.url}`, body);
      res.writeHead(status, { 'content-type': 'application/json' }).end(text);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return [server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`];
}

describe('remote admin client', () => {
  let server: Server | undefined;
  afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

  it('sends the operation to its route with the admin key and returns the JSON answer', async () => {
    const seen: string[] = [];
    let url: string;
    [server, url] = await serve((path, body) => {
      seen.push(`${path} ${body}`);
      return [200, JSON.stringify({ ticket: 'cct_x' })];
    });
    const client = createRemoteClient(url, 'key');
    await expect(client.call('tokenIssue', { secret: 'db', to: 'a1' })).resolves.toEqual({ ticket: 'cct_x' });
    await expect(client.call('sessionShow', { id: 'a b' })).resolves.toEqual({ ticket: 'cct_x' });
    expect(seen[0]).toBe('POST /v1/tokens {"secret":"db","to":"a1"}');
    expect(seen[1]).toBe('GET /v1/sessions/a%20b ');
  });

  it("turns the server's error into the same coded error", async () => {
    let url: string;
    [server, url] = await serve(() => [
      404,
      JSON.stringify({
        error: { code: 'CC_ERR_NOT_FOUND', message: 'no secret db', details: { name: 'db' } },
      }),
    ]);
    await expect(
      createRemoteClient(url, 'k').call('tokenIssue', { secret: 'db', to: 'a1' }),
    ).rejects.toMatchObject({
      code: 'CC_ERR_NOT_FOUND',
      message: 'no secret db',
    });
  });

  it('refuses an answer that is not JSON, and a server that does not answer, with CC_ERR_SERVER_UNREACHABLE', async () => {
    let url: string;
    [server, url] = await serve(() => [502, '<html>bad gateway</html>']);
    await expect(createRemoteClient(url, 'k').call('status', {})).rejects.toMatchObject({
      code: 'CC_ERR_SERVER_UNREACHABLE',
    });
    await new Promise<void>((resolve) => server!.close(() => resolve()));
    server = undefined;
    await expect(createRemoteClient(url, 'k').call('status', {})).rejects.toMatchObject({
      code: 'CC_ERR_SERVER_UNREACHABLE',
    });
  });
});

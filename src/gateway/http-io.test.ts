import { createServer, type ServerResponse } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { drained, readBody } from './http-io.js';

// A streamed answer waits for the client to take more. A client that is already gone must
// not leave that wait open: nothing would end it, and the upstream answer the loop reads
// from would stay paused, its connection held (a hostile agent drops downloads at will).
async function withDroppedClient(onGone: (res: ServerResponse) => Promise<string>): Promise<string> {
  let outcome: Promise<string> = Promise.resolve('never');
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write(Buffer.alloc(1024, 'x'));
    outcome = new Promise((resolve) => res.on('close', () => resolve(onGone(res))));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    await new Promise<void>((resolve) => {
      const socket = connect((server.address() as AddressInfo).port, '127.0.0.1', () =>
        socket.write('GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n'),
      );
      socket.on('data', () => socket.destroy());
      socket.on('close', () => resolve());
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    return await outcome;
  } finally {
    server.close();
  }
}

const within = (wait: Promise<void>, ms = 1000) =>
  Promise.race([
    wait.then(() => 'resolved'),
    new Promise<string>((resolve) => setTimeout(() => resolve('still waiting'), ms)),
  ]);

describe('drained', () => {
  it('resolves at once for a response whose client already went away', async () => {
    const result = await withDroppedClient(async (res) => {
      expect(res.write(Buffer.alloc(64 * 1024))).toBe(false); // what the streaming loop sees
      return within(drained(res));
    });
    expect(result).toBe('resolved');
  });

  it('resolves for a response ended before the wait', async () => {
    const result = await withDroppedClient(async (res) => {
      res.end();
      return within(drained(res));
    });
    expect(result).toBe('resolved');
  });

  it('resolves when the client goes away during the wait', async () => {
    let waited: Promise<string> = Promise.resolve('never');
    const server = createServer((_req, res) => {
      res.writeHead(200);
      // Fill the socket until a write is refused, then wait; the client then drops.
      while (res.write(Buffer.alloc(64 * 1024, 'y'))) {}
      waited = within(drained(res), 5000);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await new Promise<void>((resolve) => {
        const socket = connect((server.address() as AddressInfo).port, '127.0.0.1', () =>
          socket.write('GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n'),
        );
        socket.once('data', () => setTimeout(() => socket.destroy(), 50));
        socket.on('close', () => resolve());
      });
      expect(await waited).toBe('resolved');
    } finally {
      server.close();
    }
  });
});

describe('readBody', () => {
  it('rejects at once for a request whose client went away before the body was read', async () => {
    let outcome: Promise<string> = Promise.resolve('never');
    const server = createServer((req) => {
      // As the gateway does: the body is read only after the request was checked (awaits).
      req.on('close', () => {
        outcome = Promise.race([
          readBody(req, 1 << 20).then(
            () => 'resolved',
            (error: { code?: string }) => `rejected ${error.code}`,
          ),
          new Promise<string>((resolve) => setTimeout(() => resolve('still waiting'), 1000)),
        ]);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await new Promise<void>((resolve) => {
        const socket = connect((server.address() as AddressInfo).port, '127.0.0.1', () => {
          socket.write('POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 60000\r\n\r\nabc');
          setTimeout(() => socket.destroy(), 20);
        });
        socket.on('close', () => resolve());
      });
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(await outcome).toBe('rejected CC_ERR_HTTP_BAD_REQUEST');
    } finally {
      server.close();
    }
  });

  // Raw requests on one keep-alive connection; each answer names the body readBody saw.
  async function bodiesSeen(wire: string, answers: number): Promise<string[]> {
    const seen: string[] = [];
    const server = createServer((req, res) => {
      // As the gateway does: the body is read after awaits, once the parser has seen more.
      setImmediate(() => {
        readBody(req, 1 << 20).then(
          (body) => {
            seen.push(body === null ? 'null' : `[${body.toString('latin1')}]`);
            res.end('ok');
          },
          (error: { code?: string }) => {
            seen.push(`rejected ${error.code}`);
            res.end('no');
          },
        );
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      await new Promise<void>((resolve) => {
        let text = '';
        const socket = connect((server.address() as AddressInfo).port, '127.0.0.1', () => socket.write(wire));
        socket.on('data', (d: Buffer) => {
          text += d.toString('latin1');
          if ((text.match(/HTTP\/1\.1 200/g) ?? []).length >= answers) socket.destroy();
        });
        socket.on('close', () => resolve());
        setTimeout(() => socket.destroy(), 2000);
      });
      return seen;
    } finally {
      server.close();
    }
  }

  it('gives no body for an HTTP/1 request with neither Content-Length nor Transfer-Encoding', async () => {
    expect(await bodiesSeen('GET /a HTTP/1.1\r\nhost: x\r\n\r\n', 1)).toEqual(['null']);
  });

  it('reads bytes after an unframed request as the next request, never as its body', async () => {
    // A hostile client smuggling a "body" behind a GET: the parser makes it a second request.
    const wire =
      'GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello';
    expect(await bodiesSeen(wire, 2)).toEqual(['null', '[hello]']);
  });

  it('still reads framed bodies whole: a declared length, chunks, and an empty declared body', async () => {
    const wire =
      'POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc' +
      'POST /b HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n' +
      'POST /c HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n';
    expect(await bodiesSeen(wire, 3)).toEqual(['[abc]', '[def]', '[]']);
  });
});

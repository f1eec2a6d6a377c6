// The upstream for bench/http.ts, in its own process so that "direct" measures it alone.
// With BENCH_TLS_KEY and BENCH_TLS_CERT (PEM files) it serves HTTPS (the forward-proxy case).
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';

const small = Buffer.from(JSON.stringify({ ok: true, id: 12345, name: 'octocat', pad: 'x'.repeat(20) }));
const big = Buffer.alloc(1024 * 1024, 'The quick brown fox jumps over the lazy dog. ');
// A typical API answer: about 4 KB of JSON the gateway scans for secrets.
const json4k = Buffer.from(
  JSON.stringify({
    items: Array.from({ length: 40 }, (_, i) => ({
      id: 1000 + i,
      name: `repository-${i}`,
      private: i % 3 === 0,
      stars: i * 7,
    })),
  }),
);

const handler = (req: IncomingMessage, res: ServerResponse) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const body = req.url?.startsWith('/big') ? big : req.url?.startsWith('/json4k') ? json4k : small;
    res.writeHead(200, {
      'content-type': req.url?.startsWith('/big') ? 'text/plain' : 'application/json',
      'content-length': body.length,
    });
    res.end(body);
  });
};
const tls =
  process.env.BENCH_TLS_KEY === undefined || process.env.BENCH_TLS_CERT === undefined
    ? null
    : { key: readFileSync(process.env.BENCH_TLS_KEY), cert: readFileSync(process.env.BENCH_TLS_CERT) };
const server = tls === null ? createServer(handler) : createHttpsServer(tls, handler);
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
});

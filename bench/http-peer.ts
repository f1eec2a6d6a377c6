// The reference peer for bench/http.ts: a plain pass-through reverse proxy built with
// @fastify/http-proxy, in its own process. Prints its port on stdout. With
// BENCH_PEER_WORKERS=N it runs N processes behind one port (node:cluster), the way
// `coatcheck serve --workers N` does, for the every-core comparison.
import cluster from 'node:cluster';
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';

const upstream = process.env.BENCH_PEER_UPSTREAM;
if (upstream === undefined) throw new Error('BENCH_PEER_UPSTREAM is required');
const workers = Number(process.env.BENCH_PEER_WORKERS ?? 1);

if (workers > 1 && cluster.isPrimary) {
  let ready = 0;
  for (let i = 0; i < workers; i++) {
    cluster.fork().on('message', (port: number) => {
      if (++ready === workers) process.stdout.write(`${port}\n`);
    });
  }
  process.on('SIGTERM', () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill();
    process.exit(0);
  });
} else {
  const app = Fastify({ logger: false });
  await app.register(proxy, { upstream });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  if (cluster.isWorker) process.send?.(port);
  else process.stdout.write(`${port}\n`);
}

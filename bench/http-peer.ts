// The reference peer for bench/http.ts: a plain pass-through reverse proxy built with
// @fastify/http-proxy, in its own process. Prints its port on stdout.
import proxy from '@fastify/http-proxy';
import Fastify from 'fastify';

const upstream = process.env.BENCH_PEER_UPSTREAM;
if (upstream === undefined) throw new Error('BENCH_PEER_UPSTREAM is required');
const app = Fastify({ logger: false });
await app.register(proxy, { upstream });
await app.listen({ host: '127.0.0.1', port: 0 });
const address = app.server.address();
process.stdout.write(`${typeof address === 'object' && address !== null ? address.port : 0}\n`);

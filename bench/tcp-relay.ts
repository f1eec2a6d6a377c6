// The floor of any Node front-end: a TCP relay that copies bytes both ways and reads none of
// them (no parsing, no policy, no audit), in its own process as PgBouncer runs in its own.
// bench/postgres.ts runs it beside PgBouncer: what a Node relay reaches is the most a Node
// front-end can reach on that machine, whatever it does per message.
//
// Run: node bench/tcp-relay.ts <upstream-host> <upstream-port>   (prints its own port)
import { type AddressInfo, connect, createServer } from 'node:net';

const [host, port] = [process.argv[2] ?? '127.0.0.1', Number(process.argv[3])];
const server = createServer((client) => {
  client.setNoDelay(true);
  const upstream = connect({ host, port, noDelay: true });
  client.pipe(upstream);
  upstream.pipe(client);
  const close = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', close).on('close', close);
  upstream.on('error', close).on('close', close);
});
server.listen(0, '127.0.0.1', () => console.log((server.address() as AddressInfo).port));

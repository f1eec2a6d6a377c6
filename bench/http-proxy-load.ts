// The load generator for the forward-proxy case of bench/http.ts (autocannon speaks no
// proxy): CONNECTIONS concurrent loops of undici requests for SECONDS, through a
// ProxyAgent (CONNECT, then TLS to the proxy's minted certificate) or straight to the
// upstream with the same client, so the two numbers differ only by the proxy.
// Input: one JSON argument; output: one JSON line { rps, p50, p99, errors }.
import { Agent, type Dispatcher, ProxyAgent, request } from 'undici';

const input = JSON.parse(process.argv[2]!) as {
  url: string;
  ca: string;
  proxy?: { uri: string; token: string; ca: string };
  headers: Record<string, string>;
  connections: number;
  seconds: number;
};
const dispatcher: Dispatcher =
  input.proxy === undefined
    ? new Agent({ connect: { ca: input.ca }, connections: input.connections })
    : new ProxyAgent({
        uri: input.proxy.uri,
        token: input.proxy.token,
        requestTls: { ca: input.proxy.ca },
        connections: input.connections,
      });
const times: number[] = [];
let errors = 0;
const deadline = performance.now() + input.seconds * 1000;
async function loop(): Promise<void> {
  while (performance.now() < deadline) {
    const started = performance.now();
    try {
      const res = await request(input.url, { dispatcher, headers: input.headers });
      await res.body.dump();
      if (res.statusCode !== 200) errors++;
      times.push(performance.now() - started);
    } catch {
      errors++;
    }
  }
}
// Warm up: one request opens the tunnel and mints the leaf certificate.
await request(input.url, { dispatcher, headers: input.headers }).then((r) => r.body.dump());
const begun = performance.now();
await Promise.all(Array.from({ length: input.connections }, loop));
const elapsed = (performance.now() - begun) / 1000;
times.sort((a, b) => a - b);
process.stdout.write(
  `${JSON.stringify({
    rps: times.length / elapsed,
    p50: Math.round(times[Math.floor(times.length * 0.5)] ?? 0),
    p99: Math.round(times[Math.floor(times.length * 0.99)] ?? 0),
    errors,
  })}\n`,
);
await dispatcher.close();

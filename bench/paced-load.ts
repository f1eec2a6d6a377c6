// An open load at a set rate, in its own process: requests start on a fixed schedule
// (t0 + i / rate), whether or not earlier ones have been answered, over a pool of keep-alive
// connections; each latency is taken from the request's scheduled start, so a client that
// falls behind its schedule counts the wait (no coordinated omission). Arrivals are spread
// evenly: clients paced each on their own ticker (hey -q) start together and arrive in bursts,
// which measures the burst, not the load.
//
// Run: node --import tsx bench/paced-load.ts '{"url":"http://…","rate":600,"seconds":4,"connections":16,"headers":{}}'
// Prints one line of JSON: {"rate","sent","ok","errors","p50","p99","max"} (latencies in ms).
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';

interface Options {
  url: string;
  rate: number;
  seconds: number;
  connections: number;
  headers?: Record<string, string>;
}

const options = JSON.parse(process.argv[2] ?? '{}') as Options;
const target = new URL(options.url);
const pool = new Pool(target.origin, { connections: options.connections, pipelining: 1 });
const path = `${target.pathname}${target.search}`;
const total = Math.round(options.rate * options.seconds);
const latencies: number[] = [];
let ok = 0;
let errors = 0;

async function one(scheduled: number): Promise<void> {
  // From the schedule when the client is late; from the send when a timer woke it early.
  const start = Math.min(scheduled, performance.now());
  try {
    const res = await pool.request({ path, method: 'GET', headers: options.headers ?? {} });
    await res.body.dump();
    if (res.statusCode === 200) ok += 1;
    else errors += 1;
  } catch {
    errors += 1;
  }
  latencies.push(performance.now() - start);
}

const started = performance.now();
const pending: Promise<void>[] = [];
for (let i = 0; i < total; i++) {
  const scheduled = started + (i * 1000) / options.rate;
  const wait = scheduled - performance.now();
  // Timers fire a millisecond late at best: wait only when more than that is left, and send
  // every request whose time has come in this turn.
  if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait - 1));
  pending.push(one(scheduled));
}
await Promise.all(pending);
const elapsed = (performance.now() - started) / 1000;
await pool.close();
latencies.sort((a, b) => a - b);
const at = (q: number) =>
  latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))] ?? Number.NaN;
console.log(
  JSON.stringify({
    rate: total / elapsed,
    sent: total,
    ok,
    errors,
    p50: at(0.5),
    p99: at(0.99),
    max: at(1),
  }),
);

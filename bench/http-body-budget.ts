/**
 * In-flight request-body budget: many concurrent large uploads through the HTTP front-end,
 * to an upstream that holds every request until all have been answered or held.
 *
 *   npx tsx bench/http-body-budget.ts                 # 40 uploads of 8 MiB, 1 agent
 *   UPLOADS=40 MIB=8 AGENTS=10 npx tsx bench/http-body-budget.ts
 *
 * Prints: accepted and refused uploads (by code), the budget's peak bytes in flight, and
 * the gateway process's peak RSS growth (sampled every 10 ms) with the configured limits
 * (defaults: 64 MiB in total, 16 MiB per agent).
 */
import { request } from 'undici';
import { bodyBudget } from '../src/frontends/http/start.js';
import { startGateway, startUpstream } from '../test/integration/http/harness.js';

const UPLOADS = Number(process.env.UPLOADS ?? 40);
const MIB = Number(process.env.MIB ?? 8);
const AGENTS = Number(process.env.AGENTS ?? 1);

const up = await startUpstream();
const held: Array<() => void> = [];
up.handle('/hold', (_req, res) => {
  held.push(() => res.end('ok'));
});
const gw = await startGateway({ extraConfig: `http:\n  bodyLimit: ${MIB * 1024 * 1024}\n` });
await gw.addConnection('api', up.url);
const agents = await Promise.all(Array.from({ length: AGENTS }, (_, i) => gw.createAgent(`bench-${i}`)));
const body = Buffer.alloc(MIB * 1024 * 1024, 0x61);
global.gc?.();
const baseline = process.memoryUsage().rss;
let peakRss = baseline;
let peakBudget = 0;
const budget = bodyBudget(gw.ctx);
const sampler = setInterval(() => {
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  peakBudget = Math.max(peakBudget, budget.inFlight());
}, 10);
let answered = 0;
const started = performance.now();
const results = Array.from({ length: UPLOADS }, (_, i) =>
  request(`${gw.url}/c/api/hold`, {
    method: 'POST',
    headers: { 'proxy-authorization': `Bearer ${agents[i % AGENTS]!.key}` },
    body,
  })
    .then(async (res) => {
      await res.body.text();
      return res.statusCode === 200 ? 'accepted' : String(res.headers['x-coatcheck-error']);
    })
    .catch((error: { code?: string }) => `socket:${error.code}`)
    .finally(() => {
      answered++;
    }),
);
while (held.length + answered < UPLOADS) await new Promise((r) => setTimeout(r, 20));
for (const done of held.splice(0)) done();
const outcomes = await Promise.all(results);
clearInterval(sampler);
const counts: Record<string, number> = {};
for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1;
const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;
console.log(
  JSON.stringify(
    {
      uploads: UPLOADS,
      sizeMiB: MIB,
      agents: AGENTS,
      outcomes: counts,
      peakBudget: mib(peakBudget),
      peakRssGrowth: mib(peakRss - baseline),
      seconds: ((performance.now() - started) / 1000).toFixed(1),
    },
    null,
    2,
  ),
);
await gw.close();
await up.close();

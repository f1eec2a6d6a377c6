// Added latency of the Kubernetes front-end, direct vs through coatcheck, side by side in
// one run: a list of 50 pods (streamed through the scanner), a list of 40 Secrets with 5
// values each (every value base64-decoded, scanned, re-encoded; the whole JSON scanned),
// and one `get` of a Secret. The API server is the test API server of
// test/helpers/kube-apiserver.ts (real HTTPS, bearer token), in this process, so absolute
// numbers say more about the machine than the gateway: the ratio is the point.
//
// Run: npm run bench:kubernetes   (BENCH_SEQUENTIAL=200 requests per case by default)
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { Agent, request } from 'undici';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { startKubernetesFrontend } from '../src/frontends/kubernetes/start.js';
import { initHome, openContext } from '../src/server/context.js';
import { startKubeApiServer } from '../test/helpers/kube-apiserver.js';

const COUNT = Number(process.env.BENCH_SEQUENTIAL ?? 200);
const TOKEN = 'bench-cluster-token-5e4d3c2b1a';

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-k8s-'));
  const api = await startKubeApiServer({ dir, token: TOKEN });
  for (let i = 0; i < 50; i++)
    api.put('pods', {
      metadata: { name: `web-${i}`, namespace: 'default', labels: { app: 'web' } },
      spec: { containers: [{ name: 'web', image: 'nginx:1.27', ports: [{ containerPort: 80 }] }] },
    });
  const b64 = (t: string) => Buffer.from(t).toString('base64');
  for (let i = 0; i < 40; i++)
    api.put('secrets', {
      metadata: { name: `s-${i}`, namespace: 'default' },
      data: {
        user: b64('app'),
        password: b64(`pw-${i}-x7Yq2`),
        host: b64('db.internal'),
        port: b64('5432'),
        db: b64('app'),
      },
    });
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, 'log:\n  level: error\n', { mode: 0o600 });
  const ctx = await openContext(home, { env: {} });
  await ctx.vault.addSecret({ name: 'cred', value: Buffer.from(TOKEN), allow: ['conn:prod'] }, 'admin:bench');
  await ctx.connections.add(
    { name: 'prod', type: 'kubernetes', url: api.url, credential: 'cred', rules: { ca: api.caPem } },
    'admin:bench',
  );
  const { agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
  const ticket = (
    await ctx.vault.issueTicket(
      { secret: 'cred', principal: agentRef(agent.id), destinations: ['conn:prod'] },
      'admin:bench',
    )
  ).ticket;
  const k8s = await startKubernetesFrontend(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'silent' }));
  const tls = new Agent({ connect: { rejectUnauthorized: false } });

  const time = async (url: string, auth: string): Promise<number> => {
    const started = performance.now();
    for (let i = 0; i < COUNT; i++) {
      const res = await request(url, {
        headers: { authorization: `Bearer ${auth}`, accept: 'application/json' },
        dispatcher: tls,
      });
      await res.body.text();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode} for ${url}`);
    }
    return (performance.now() - started) / COUNT;
  };
  console.log(`Kubernetes front-end, ${COUNT} sequential requests per case, ${cpus().length} CPUs`);
  console.log('case                         direct ms   gateway ms   ratio');
  for (const [name, path] of [
    ['list 50 pods', '/api/v1/namespaces/default/pods'],
    ['list 40 Secrets (200 values)', '/api/v1/namespaces/default/secrets'],
    ['get 1 Secret (5 values)', '/api/v1/namespaces/default/secrets/s-7'],
  ] as const) {
    await time(`${api.url}${path}`, TOKEN); // warm both sides
    await time(`${k8s.url}/k8s/bench/prod${path}`, ticket);
    const direct = await time(`${api.url}${path}`, TOKEN);
    const gateway = await time(`${k8s.url}/k8s/bench/prod${path}`, ticket);
    console.log(
      `${name.padEnd(28)} ${direct.toFixed(2).padStart(9)}   ${gateway.toFixed(2).padStart(10)}   ${(gateway / direct).toFixed(1).padStart(5)}x`,
    );
  }
  await k8s.close();
  await tls.close();
  await ctx.close();
  await api.close();
  rmSync(dir, { recursive: true, force: true });
}

await main();

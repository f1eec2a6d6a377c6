// What the data path does on every request before anything is forwarded, by kind: the
// caller authenticated (an agent key, a subtask key three levels down a workflow, an OIDC ID
// token, ES256, from a real issuer on loopback: discovery and JWKS over HTTP), and a
// connection's own credential released (audited, durable, as on every request that injects
// it). Each is repeated 5,000 times after a warm-up, as a client presents the same credential
// on every request; prints CPU per operation (the process's, this loop alone running).
//
// Run: node --import tsx bench/authenticate.ts   (BENCH_N=5000)
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { initHome, openContext } from '../src/server/context.js';
import { idToken, startIssuer } from '../test/helpers/oidc-issuer.js';

const N = Number(process.env.BENCH_N ?? 5000);

const idp = await startIssuer();
const signing = await idp.addKey('k1');
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-auth-'));
try {
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  writeFileSync(
    home.configFile,
    `log:\n  level: warn\nidentity:\n  oidc:\n    - issuer: ${idp.issuer}\n      audience: coatcheck\n`,
  );
  const ctx = await openContext(home, { env: {} });
  try {
    const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
    await ctx.vault.addSecret(
      { name: 's0', value: Buffer.from('bench-secret-value-0-0123456789abcdef'), allow: ['up'] },
      'admin:bench',
    );
    let node = await ctx.workflows.start(
      { name: 'run', principal: agentRef(agent.id), groups: [], secrets: ['s0'] },
      'admin:bench',
    );
    for (let depth = 1; depth <= 3; depth++)
      node = await ctx.workflows.spawn({ parent: node.workflow.id, name: `step${depth}` }, 'admin:bench');
    const jwt = await idToken(idp.issuer, signing, { sub: 'user-1', groups: ['ops'] });
    console.log(
      `authentication and a connection's credential release, ${N} times each after a warm-up; load average ${loadavg()
        .map((l) => l.toFixed(1))
        .join(' ')}`,
    );
    for (const [name, credential] of [
      ['agent key', key],
      ['subtask key, depth 3', node.key],
      ['OIDC ID token, ES256', jwt],
    ] as const) {
      for (let i = 0; i < 300; i++) await ctx.identity.authenticate(credential);
      const before = process.cpuUsage();
      for (let i = 0; i < N; i++) await ctx.identity.authenticate(credential);
      const cpu = process.cpuUsage(before);
      console.log(`${name.padEnd(24)} ${((cpu.user + cpu.system) / N).toFixed(1)} µs CPU an authentication`);
    }
    await ctx.connections.add(
      { name: 'up', type: 'http', url: 'https://api.example.com', credential: 's0' },
      'admin:bench',
    );
    const principal = await ctx.identity.authenticate(key);
    const target = { connection: 'up', scheme: 'https' as const, host: 'api.example.com', port: 443 };
    const release = async (n: number) => {
      // 16 at a time, as concurrent requests share the audit's group commits.
      await Promise.all(
        Array.from({ length: 16 }, async () => {
          for (let i = 0; i < n / 16; i++) await ctx.vault.releaseCredential('s0', { principal, target });
        }),
      );
    };
    await release(800);
    const before = process.cpuUsage();
    await release(N);
    const cpu = process.cpuUsage(before);
    console.log(
      `${"connection's credential".padEnd(24)} ${((cpu.user + cpu.system) / N).toFixed(1)} µs CPU a release (audited)`,
    );
  } finally {
    await ctx.close();
  }
} finally {
  await idp.close();
  rmSync(dir, { recursive: true, force: true });
}

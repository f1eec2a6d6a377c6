import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { renderKubeconfig } from '../../../src/cli/kubeconfig-render.js';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { agentRef } from '../../../src/core/principal.js';
import { type KubernetesListener, startKubernetesFrontend } from '../../../src/frontends/kubernetes/start.js';
import type { HttpOverrides } from '../../../src/gateway/http-mount.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { type KubeApiServer, startKubeApiServer } from '../../helpers/kube-apiserver.js';

/** kubectl on this machine, or why the tests that drive it are skipped (printed once). */
export const kubectlMissing: string | null = (() => {
  const probe = spawnSync('kubectl', ['version', '--client', '--output=json'], { encoding: 'utf8' });
  if (probe.error !== undefined || probe.status !== 0) {
    const why =
      'kubectl is not installed (apt-get install kubectl or kubernetes-client): the kubectl cases are skipped';
    process.stderr.write(`${why}\n`);
    return why;
  }
  return null;
})();

/** The cluster's own bearer token: a canary that must never reach kubectl, logs, audit or recordings. */
export const CLUSTER_TOKEN = 'k8s-cluster-canary-token-7f3e9a2b5c1d';

export interface K8sGateway {
  readonly dir: string;
  readonly ctx: Context;
  readonly k8s: KubernetesListener;
  readonly api: KubeApiServer;
  readonly logs: () => string;
  /** Create an agent and a kubeconfig file for it on `connection`; returns its path and ticket. */
  kubeconfig(
    agent: string,
    connection?: string,
    ticketOverride?: string,
  ): Promise<{ file: string; ticket: string; ref: string }>;
  kubectl(
    file: string,
    args: string[],
    input?: string,
  ): Promise<{ code: number; stdout: string; stderr: string }>;
  close(): Promise<void>;
}

export async function startK8sGateway(
  options: { extraConfig?: string; credential?: 'bearer' | 'certificate'; overrides?: HttpOverrides } = {},
): Promise<K8sGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-k8s-'));
  const api = await startKubeApiServer({ dir, token: CLUSTER_TOKEN });
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, `log:\n  level: debug\n${options.extraConfig ?? ''}`, { mode: 0o600 });
  const ctx = await openContext(home, { env: {} });
  let logText = '';
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk: Buffer, _e, cb) {
        logText += chunk.toString('utf8');
        cb();
      },
    }),
  });
  const credential = options.credential === 'certificate' ? api.clientCredential : CLUSTER_TOKEN;
  await ctx.vault.addSecret(
    { name: 'prod-cred', value: Buffer.from(credential), allow: ['conn:prod'] },
    'admin:test',
  );
  await ctx.connections.add(
    { name: 'prod', type: 'kubernetes', url: api.url, credential: 'prod-cred', rules: { ca: api.caPem } },
    'admin:test',
  );
  const k8s = await startKubernetesFrontend(ctx, { host: '127.0.0.1', port: 0 }, log, options.overrides);
  const agents = new Map<string, string>();
  return {
    dir,
    ctx,
    k8s,
    api,
    logs: () => logText,
    async kubeconfig(agent, connection = 'prod', ticketOverride) {
      let ref = agents.get(agent);
      if (ref === undefined) {
        const created = await ctx.agents.create({ name: agent }, 'admin:test');
        ref = agentRef(created.agent.id);
        agents.set(agent, ref);
      }
      const ticket =
        ticketOverride ??
        (
          await ctx.vault.issueTicket(
            { secret: 'prod-cred', principal: ref, destinations: ['conn:prod'] },
            'admin:test',
          )
        ).ticket;
      const file = join(dir, `kubeconfig-${agent}-${connection}-${ticket.slice(-6)}`);
      writeFileSync(file, renderKubeconfig({ agent, connection, gateway: k8s.url, ticket, ca: k8s.ca }), {
        mode: 0o600,
      });
      return { file, ticket, ref };
    },
    kubectl(file, args, input) {
      return new Promise((resolve) => {
        const child = execFile(
          'kubectl',
          ['--kubeconfig', file, '--cache-dir', join(dir, 'kube-cache'), '--request-timeout', '20s', ...args],
          { env: { PATH: process.env.PATH, HOME: dir }, timeout: 30_000 },
          (error, stdout, stderr) => {
            resolve({
              code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
              stdout,
              stderr,
            });
          },
        );
        // A child that exits before reading stdin gives EPIPE; its exit code and output are what the test checks.
        child.stdin?.on('error', () => undefined);
        if (input !== undefined) child.stdin?.end(input);
        else child.stdin?.end();
      });
    },
    async close() {
      await k8s.close();
      await ctx.close();
      await api.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

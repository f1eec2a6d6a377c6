import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTicket } from '../../../src/core/ticket-format.js';
import { CLUSTER_TOKEN, type K8sGateway, kubectlMissing, startK8sGateway } from './harness.js';

const VAULT_SECRET = 'exec-canary-password-8d2f61b0c4';

describe.skipIf(kubectlMissing !== null)(
  'kubectl exec through the Kubernetes front-end (WebSocket, v5.channel.k8s.io)',
  () => {
    let gw: K8sGateway;
    let config: { file: string; ticket: string };

    beforeAll(async () => {
      gw = await startK8sGateway();
      await gw.ctx.vault.addSecret(
        { name: 'app-db', value: Buffer.from(VAULT_SECRET), allow: ['conn:prod'] },
        'admin:test',
      );
      gw.api.put('pods', {
        metadata: { name: 'web-1', namespace: 'default' },
        spec: { containers: [{ name: 'app', image: 'app:1' }], env: { DB_PASSWORD: VAULT_SECRET } },
      });
      config = await gw.kubeconfig('builder');
    });
    afterAll(async () => {
      await gw?.close();
    });

    it('relays stdout; a secret the container prints (split across two messages) comes back as a ticket', async () => {
      const hello = await gw.kubectl(config.file, ['exec', 'web-1', '--', 'echo', 'hello', 'world']);
      expect(hello.stderr).toBe('');
      expect(hello.stdout).toBe('hello world\n');
      expect(gw.api.execs.at(-1)?.protocol).toBe('v5.channel.k8s.io');
      const printed = await gw.kubectl(config.file, ['exec', 'web-1', '--', 'printenv', 'DB_PASSWORD']);
      expect(printed.stderr).toBe('');
      expect(printed.stdout).not.toContain(VAULT_SECRET);
      expect(isTicket(printed.stdout.trim())).toBe(true);
      const stderr = await gw.kubectl(config.file, ['exec', 'web-1', '--', 'stderr', 'oops', VAULT_SECRET]);
      expect(stderr.stderr).toMatch(/^oops cct_[0-9A-Za-z]{28}\n$/);
    });

    it('stdin reaches the container; a non-zero exit is reported as kubectl reports it', async () => {
      const echoed = await gw.kubectl(config.file, ['exec', '-i', 'web-1', '--', 'cat'], 'typed line\n');
      expect(echoed.stdout).toBe('typed line\n');
      const failed = await gw.kubectl(config.file, ['exec', 'web-1', '--', 'nosuch']);
      expect(failed.code).toBe(127);
      expect(failed.stderr).toContain('unknown command nosuch');
    });

    it('revoking the ticket ends a live exec at once, with the reason on the error channel', async () => {
      const { file, ticket } = await gw.kubeconfig('builder');
      const running = gw.kubectl(file, ['exec', 'web-1', '--', 'tick']);
      await expect
        .poll(() => gw.api.execs.filter((e) => e.command[0] === 'tick' && !e.closed).length, {
          timeout: 10_000,
        })
        .toBe(1);
      await new Promise((r) => setTimeout(r, 200));
      await gw.ctx.vault.revokeTicket(ticket, 'admin:test');
      const done = await running;
      expect(done.code).not.toBe(0);
      expect(done.stdout).toContain('tick 0');
      expect(done.stderr).toContain('CC_ERR_TICKET_REVOKED');
      await expect
        .poll(() => gw.api.execs.filter((e) => e.command[0] === 'tick' && !e.closed).length, {
          timeout: 10_000,
        })
        .toBe(0);
    });

    it('a live exec ends when its ticket expires', async () => {
      const { ref } = await gw.kubeconfig('builder');
      const short = (
        await gw.ctx.vault.issueTicket(
          { secret: 'prod-cred', principal: ref, destinations: ['conn:prod'], ttlMs: 3_000 },
          'admin:test',
        )
      ).ticket;
      const { file } = await gw.kubeconfig('builder', 'prod', short);
      const done = await gw.kubectl(file, ['exec', 'web-1', '--', 'tick']);
      expect(done.code).not.toBe(0);
      expect(done.stdout).toContain('tick 0');
      expect(done.stderr).toContain('CC_ERR_TICKET_EXPIRED');
    });

    it('the exec sessions are recorded per channel, scrubbed; no canary anywhere', async () => {
      await gw.k8s.close();
      const sessions = await gw.ctx.store.listSessions({ limit: 1000 });
      const execs = sessions.filter((s) => s.summary.subresource === 'exec');
      expect(execs.length).toBeGreaterThanOrEqual(5);
      const events = execs.flatMap(
        (s) => (s.summary.events as Array<{ type: string; data: Record<string, unknown> }>) ?? [],
      );
      const stream = events.filter((e) => e.type === 'k8s.stream');
      expect(
        stream.some(
          (e) => e.data.direction === 'out' && e.data.channel === 'stdout' && e.data.text === 'hello world\n',
        ),
      ).toBe(true);
      expect(stream.some((e) => e.data.direction === 'in' && e.data.channel === 'stdin')).toBe(true);
      expect(execs.some((s) => s.outcome === 'CC_ERR_TICKET_REVOKED')).toBe(true);
      await gw.ctx.audit.flush();
      const everything = [
        gw.logs(),
        JSON.stringify(sessions),
        JSON.stringify(await gw.ctx.store.readAudit(0, 100_000)),
      ];
      for (const text of everything) {
        expect(text).not.toContain(VAULT_SECRET);
        expect(text).not.toContain(CLUSTER_TOKEN);
        expect(text).not.toContain(config.ticket);
      }
    });
  },
);

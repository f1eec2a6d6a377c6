import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN, type K8sGateway, kubectlMissing, startK8sGateway } from './harness.js';

const POLICY = `@id("reads") permit(principal, action in [Action::"k8s:get", Action::"k8s:list", Action::"k8s:watch"], resource == Connection::"prod");
@id("staging-deletes-held") @approval("required")
permit(principal, action == Action::"k8s:delete", resource == Connection::"prod") when { context has namespace && context.namespace == "staging" };
@id("exec") permit(principal, action == Action::"k8s:exec", resource == Connection::"prod") when { context has namespace && context.namespace == "default" };
@id("view-as-viewer") permit(principal, action == Action::"k8s:impersonate", resource == Connection::"prod") when { context has impersonate_user && context.impersonate_user == "viewer" && !(context has impersonate_groups) };
`;

describe('Kubernetes front-end under Cedar policy: verbs, approvals, impersonation', () => {
  let gw: K8sGateway;
  let ticket: string;
  let file: string;
  const tls = new Agent({ connect: { rejectUnauthorized: false } });

  beforeAll(async () => {
    const dir = (await import('node:fs')).mkdtempSync(
      join((await import('node:os')).tmpdir(), 'k8s-policy-'),
    );
    const policyFile = join(dir, 'k8s.cedar');
    writeFileSync(policyFile, POLICY);
    gw = await startK8sGateway({
      extraConfig: `policy:\n  path: ${policyFile}\napprovals:\n  holdTimeout: 20s\n`,
    });
    for (const ns of ['default', 'prod', 'staging'])
      gw.api.put('pods', { metadata: { name: 'web-1', namespace: ns }, spec: {} });
    ({ ticket, file } = await gw.kubeconfig('builder'));
  });
  afterAll(async () => {
    await gw?.close();
    await tls.close();
  });

  const call = async (method: string, path: string, headers: Record<string, string> = {}) => {
    const res = await request(`${gw.k8s.url}/k8s/builder/prod${path}`, {
      method: method as 'GET',
      headers: { authorization: `Bearer ${ticket}`, ...headers },
      dispatcher: tls,
    });
    const text = await res.body.text();
    return { status: res.statusCode, code: res.headers['x-coatcheck-error'], text };
  };

  it('a read permitted by k8s:list passes; a delete no policy permits is refused before anything is released', async () => {
    expect((await call('GET', '/api/v1/namespaces/prod/pods')).status).toBe(200);
    const before = gw.api.received.length;
    const denied = await call('DELETE', '/api/v1/namespaces/prod/pods/web-1');
    expect(denied.status).toBe(403);
    expect(denied.code).toBe('CC_ERR_POLICY_DENIED');
    const status = JSON.parse(denied.text);
    expect(status).toMatchObject({ kind: 'Status', status: 'Failure', reason: 'Forbidden', code: 403 });
    expect(status.message).toContain('k8s:delete');
    expect(gw.api.received.length).toBe(before);
    expect(gw.api.get('pods', 'prod', 'web-1')).toBeDefined();
  });

  it.skipIf(kubectlMissing !== null)(
    'kubectl delete in a namespace no policy permits: Error from server (Forbidden)',
    async () => {
      const r = await gw.kubectl(file, ['delete', 'pod', 'web-1', '-n', 'prod']);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('Error from server (Forbidden)');
      expect(r.stderr).toContain('CC_ERR_POLICY_DENIED');
      expect(gw.api.get('pods', 'prod', 'web-1')).toBeDefined();
    },
  );

  it.skipIf(kubectlMissing !== null)(
    'kubectl delete in staging is held until a human approves that exact request, once',
    async () => {
      const held = gw.kubectl(file, ['delete', 'pod', 'web-1', '-n', 'staging', '--wait=false']);
      let id = '';
      await expect
        .poll(
          async () => {
            const pending = await gw.ctx.approvals.list('pending');
            id = pending[0]?.id ?? '';
            return pending.length;
          },
          { timeout: 15_000 },
        )
        .toBe(1);
      const pending = await gw.ctx.approvals.get(id);
      expect(JSON.stringify(pending)).toContain('staging');
      expect(gw.api.get('pods', 'staging', 'web-1')).toBeDefined();
      await gw.ctx.approvals.decide(
        id,
        { approver: { ref: 'human:ada', name: 'ada', groups: [] }, decision: 'approve' },
        'admin:test',
      );
      const done = await held;
      expect(done.stderr).toBe('');
      expect(done.stdout).toContain('pod "web-1" deleted');
      expect(gw.api.get('pods', 'staging', 'web-1')).toBeUndefined();
      // The approval served that request once: the same delete again waits for a new one.
      gw.api.put('pods', { metadata: { name: 'web-1', namespace: 'staging' }, spec: {} });
      const again = call('DELETE', '/api/v1/namespaces/staging/pods/web-1');
      await expect
        .poll(async () => (await gw.ctx.approvals.list('pending')).length, { timeout: 15_000 })
        .toBe(1);
      const second = (await gw.ctx.approvals.list('pending'))[0]!;
      expect(second.id).not.toBe(id);
      await gw.ctx.approvals.decide(
        second.id,
        { approver: { ref: 'human:ada', name: 'ada', groups: [] }, decision: 'deny' },
        'admin:test',
      );
      expect((await again).status).toBe(403);
      expect(gw.api.get('pods', 'staging', 'web-1')).toBeDefined();
    },
  );

  it('impersonation headers are refused unless a policy permits k8s:impersonate for exactly them', async () => {
    const before = gw.api.received.length;
    for (const headers of <Array<Record<string, string>>>[
      { 'impersonate-user': 'system:admin' },
      { 'impersonate-user': 'viewer', 'impersonate-group': 'system:masters' },
      { 'Impersonate-Uid': '1' },
      { 'impersonate-extra-scopes': 'all' },
      { 'impersonate-bogus': 'x' },
    ]) {
      const r = await call('GET', '/api/v1/namespaces/prod/pods', headers);
      expect(r.status, JSON.stringify(headers)).toBe(403);
      expect(r.code).toMatch(/CC_ERR_POLICY_DENIED|CC_ERR_K8S_IMPERSONATION_REFUSED/);
    }
    expect(gw.api.received.length).toBe(before);
    const allowed = await call('GET', '/api/v1/namespaces/prod/pods', { 'impersonate-user': 'viewer' });
    expect(allowed.status).toBe(200);
    expect(gw.api.received.at(-1)?.headers['impersonate-user']).toBe('viewer');
    expect(gw.api.received.at(-1)?.headers.authorization).toBe(`Bearer ${CLUSTER_TOKEN}`);
  });
});

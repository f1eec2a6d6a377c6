import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN, type K8sGateway, kubectlMissing, startK8sGateway } from './harness.js';

describe.skipIf(kubectlMissing !== null)('kubectl through the Kubernetes front-end (test API server)', () => {
  let gw: K8sGateway;
  let config: { file: string; ticket: string };

  beforeAll(async () => {
    gw = await startK8sGateway();
    gw.api.put('pods', {
      metadata: { name: 'web-1', namespace: 'default' },
      spec: { containers: [{ name: 'web', image: 'nginx' }] },
    });
    gw.api.put('pods', {
      metadata: { name: 'web-2', namespace: 'default' },
      spec: { containers: [{ name: 'web', image: 'nginx' }] },
    });
    config = await gw.kubeconfig('builder');
  });
  afterAll(async () => {
    await gw?.close();
  });

  it('lists and gets pods with the ticket as its bearer token; the API server sees the real token', async () => {
    const list = await gw.kubectl(config.file, ['get', 'pods', '-o', 'name']);
    expect(list.stderr).toBe('');
    expect(list.stdout).toBe('pod/web-1\npod/web-2\n');
    const one = await gw.kubectl(config.file, ['get', 'pod', 'web-1', '-o', 'jsonpath={.metadata.name}']);
    expect(one.stdout).toBe('web-1');
    const calls = gw.api.received.filter((r) => r.url.startsWith('/api/v1/namespaces/default/pods'));
    expect(calls.length).toBeGreaterThanOrEqual(2);
    for (const call of gw.api.received) expect(call.headers.authorization).toBe(`Bearer ${CLUSTER_TOKEN}`);
    expect(JSON.stringify(gw.api.received)).not.toContain(config.ticket);
  });

  it('logs, version, get --raw, deployments in a named group, and a delete under the built-in policy', async () => {
    const logs = await gw.kubectl(config.file, ['logs', 'web-1']);
    expect(logs.stdout).toBe('log of web-1\n');
    // `kubectl get --raw PATH` drops the server URL's path: the ticket's own binding routes it.
    const raw = await gw.kubectl(config.file, ['get', '--raw', '/api/v1/namespaces/default/pods/web-1']);
    expect(raw.stderr).toBe('');
    expect(JSON.parse(raw.stdout).metadata.name).toBe('web-1');
    const version = await gw.kubectl(config.file, ['version', '-o', 'json']);
    expect(JSON.parse(version.stdout).serverVersion.gitVersion).toBe('v1.32.0-coatcheck-test');
    gw.api.put('deployments', { metadata: { name: 'api', namespace: 'default' }, spec: {} });
    const deployments = await gw.kubectl(config.file, ['get', 'deployments.apps', '-o', 'name']);
    expect(deployments.stdout).toBe('deployment.apps/api\n');
    const deleted = await gw.kubectl(config.file, ['delete', 'pod', 'web-2', '--wait=false']);
    expect(deleted.stdout).toBe('pod "web-2" deleted\n');
    expect(gw.api.get('pods', 'default', 'web-2')).toBeUndefined();
  });
});

describe.skipIf(kubectlMissing !== null)(
  'a kubernetes connection whose credential is a client certificate and key',
  () => {
    let gw: K8sGateway;
    afterAll(async () => {
      await gw?.close();
    });

    it('kubectl lists pods; the API server sees the client certificate and no Authorization header', async () => {
      gw = await startK8sGateway({ credential: 'certificate' });
      gw.api.put('pods', { metadata: { name: 'db-0', namespace: 'default' }, spec: {} });
      const { file, ticket } = await gw.kubeconfig('builder');
      const r = await gw.kubectl(file, ['get', 'pods', '-o', 'name']);
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe('pod/db-0\n');
      const seen = gw.api.received.filter((x) => x.url.includes('/pods'));
      expect(seen.length).toBeGreaterThan(0);
      for (const call of gw.api.received) {
        expect(call.clientCert).toBe(true);
        expect(call.headers.authorization).toBeUndefined();
      }
      expect(gw.logs()).not.toContain('PRIVATE KEY');
      expect(JSON.stringify(gw.api.received)).not.toContain(ticket);
    });
  },
);

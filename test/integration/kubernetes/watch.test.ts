import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type K8sGateway, kubectlMissing, startK8sGateway } from './harness.js';

describe('watches and long lists stream through the Kubernetes front-end', () => {
  let gw: K8sGateway;
  let config: { file: string; ticket: string };
  const tls = new Agent({ connect: { rejectUnauthorized: false } });

  beforeAll(async () => {
    gw = await startK8sGateway();
    gw.api.put('pods', {
      metadata: { name: 'web-1', namespace: 'default' },
      spec: { containers: [{ name: 'a', image: 'a' }] },
    });
    config = await gw.kubeconfig('builder');
  });
  afterAll(async () => {
    await gw?.close();
    await tls.close();
  });

  it.skipIf(kubectlMissing !== null)('kubectl get pods --watch sees events as they happen', async () => {
    const watching = gw.kubectl(config.file, [
      'get',
      'pods',
      '--watch',
      '-o',
      'name',
      '--request-timeout',
      '0',
    ]);
    await expect.poll(() => gw.api.watches(), { timeout: 15_000 }).toBe(1);
    gw.api.put('pods', {
      metadata: { name: 'web-2', namespace: 'default' },
      spec: { containers: [{ name: 'a', image: 'a' }] },
    });
    gw.api.put('pods', {
      metadata: { name: 'web-3', namespace: 'default' },
      spec: { containers: [{ name: 'a', image: 'a' }] },
    });
    // Ending the API server's side ends the watch (kubectl then exits).
    await new Promise((r) => setTimeout(r, 500));
    await gw.api.close();
    const done = await watching;
    expect(done.stdout).toContain('pod/web-1\n');
    expect(done.stdout).toContain('pod/web-2\n');
    expect(done.stdout).toContain('pod/web-3\n');
  });
});

describe('backpressure on a watch', () => {
  let gw: K8sGateway;
  const tls = new Agent({ connect: { rejectUnauthorized: false } });
  afterAll(async () => {
    await gw?.close();
    await tls.close();
  });

  it('a client that does not read holds the API server back; nothing is lost when it reads again', async () => {
    gw = await startK8sGateway();
    const { ticket } = await gw.kubeconfig('builder');
    const res = await request(`${gw.k8s.url}/k8s/builder/prod/api/v1/namespaces/default/pods?watch=true`, {
      headers: { authorization: `Bearer ${ticket}` },
      dispatcher: tls,
      highWaterMark: 1024,
    });
    expect(res.statusCode).toBe(200);
    await expect.poll(() => gw.api.watches(), { timeout: 10_000 }).toBe(1);
    // The client reads nothing. The API server writes 16 KiB events as fast as the gateway takes
    // them; once the client's buffers are full the gateway must stop taking them. A gateway that
    // buffered without bound would take all 8192 (128 MiB).
    const padding = 'abcdefghij '.repeat(1500);
    let sent = 0;
    let pushedBack = false;
    while (sent < 8192) {
      const flowing = gw.api.emit('pods', 'ADDED', {
        metadata: { name: `p-${sent}`, namespace: 'default', annotations: { pad: padding } },
      });
      sent++;
      if (!flowing && !(await gw.api.watchesDrained(3_000))) {
        pushedBack = true;
        break;
      }
    }
    expect(pushedBack).toBe(true);
    expect(sent).toBeLessThan(8192);
    // Reading again: every event arrives, in order, whole.
    let lines = 0;
    let buffer = '';
    const reader = (async () => {
      for await (const chunk of res.body) {
        buffer += (chunk as Buffer).toString('latin1');
        let nl = buffer.indexOf('\n');
        while (nl !== -1) {
          JSON.parse(buffer.slice(0, nl));
          lines++;
          buffer = buffer.slice(nl + 1);
          nl = buffer.indexOf('\n');
        }
      }
    })();
    await expect.poll(() => lines, { timeout: 60_000 }).toBe(sent);
    res.body.destroy();
    await reader.catch(() => undefined);
  }, 90_000);
});

describe('a watch whose ticket is revoked', () => {
  let gw: K8sGateway;
  const tls = new Agent({ connect: { rejectUnauthorized: false } });
  afterAll(async () => {
    await gw?.close();
    await tls.close();
  });

  it('is closed at the API server at once, and the client stream ends', async () => {
    gw = await startK8sGateway();
    const { ticket } = await gw.kubeconfig('builder');
    const res = await request(`${gw.k8s.url}/k8s/builder/prod/api/v1/namespaces/default/pods?watch=true`, {
      headers: { authorization: `Bearer ${ticket}` },
      dispatcher: tls,
    });
    expect(res.statusCode).toBe(200);
    await expect.poll(() => gw.api.watches(), { timeout: 10_000 }).toBe(1);
    // Settled from the start: the stream is cut while the test waits on the API server.
    const reading = (async () => {
      try {
        for await (const _ of res.body) {
          // events until the gateway ends the stream
        }
        return 'ended';
      } catch {
        return 'cut off';
      }
    })();
    await gw.ctx.vault.revokeTicket(ticket, 'admin:test');
    // The gateway's side of the watch goes (the upstream request aborted), not only the client's.
    await expect.poll(() => gw.api.watches(), { timeout: 5_000 }).toBe(0);
    expect(await reading).toBe('cut off');
  });
});

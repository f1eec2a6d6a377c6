import { connect } from 'node:tls';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN, type K8sGateway, startK8sGateway } from './harness.js';

/** Attacks on the Kubernetes front-end with a real HTTP client (no kubectl needed). */
describe('Kubernetes front-end: hostile requests', () => {
  let gw: K8sGateway;
  let ticket: string;
  let otherTicket: string;
  let foreignTicket: string;
  const tls = new Agent({ connect: { rejectUnauthorized: false } });

  beforeAll(async () => {
    gw = await startK8sGateway();
    gw.api.put('pods', { metadata: { name: 'web-1', namespace: 'default' }, spec: {} });
    gw.api.put('pods', { metadata: { name: 'web-1', namespace: 'b' }, spec: {} });
    ({ ticket } = await gw.kubeconfig('builder'));
    // Another cluster: its own credential, bound to its own connection only.
    await gw.ctx.vault.addSecret(
      { name: 'other-cred', value: Buffer.from('other-cluster-canary-0a9b8c7d6e'), allow: ['conn:other'] },
      'admin:test',
    );
    await gw.ctx.connections.add(
      {
        name: 'other',
        type: 'kubernetes',
        url: gw.api.url,
        credential: 'other-cred',
        rules: { ca: gw.api.caPem },
      },
      'admin:test',
    );
    const builder = await gw.kubeconfig('builder');
    otherTicket = (
      await gw.ctx.vault.issueTicket(
        { secret: 'other-cred', principal: builder.ref, destinations: ['conn:other'] },
        'admin:test',
      )
    ).ticket;
    foreignTicket = (await gw.kubeconfig('intruder')).ticket;
  });
  afterAll(async () => {
    await gw?.close();
    await tls.close();
  });

  const call = async (
    path: string,
    init: { method?: string; headers?: Record<string, string>; body?: string; bearer?: string } = {},
  ) => {
    const res = await request(`${gw.k8s.url}${path}`, {
      method: (init.method ?? 'GET') as 'GET',
      headers: { authorization: `Bearer ${init.bearer ?? ticket}`, ...init.headers },
      body: init.body,
      dispatcher: tls,
    });
    const text = await res.body.text();
    return { status: res.statusCode, code: res.headers['x-coatcheck-error'], text };
  };

  it('a ticket for another cluster, another agent, or the wrong connection is refused; nothing reaches the API server', async () => {
    const before = gw.api.received.length;
    const wrongCluster = await call('/k8s/builder/prod/api/v1/namespaces/default/pods', {
      bearer: otherTicket,
    });
    expect(wrongCluster.status).toBe(403);
    expect(wrongCluster.code).toMatch(/^CC_ERR_TICKET_/);
    const wrongAgent = await call('/k8s/builder/prod/api/v1/namespaces/default/pods', {
      bearer: foreignTicket,
    });
    expect(wrongAgent.code).toBe('CC_ERR_TICKET_WRONG_PRINCIPAL');
    const noAgent = await call('/k8s/ghost/prod/api/v1/namespaces/default/pods');
    expect(noAgent.code).toBe('CC_ERR_AGENT_UNKNOWN');
    const wrongConnection = await call('/k8s/builder/other/api/v1/namespaces/default/pods');
    expect(wrongConnection.code).toMatch(/^CC_ERR_TICKET_/);
    const notATicket = await call('/k8s/builder/prod/api/v1/namespaces/default/pods', {
      bearer: CLUSTER_TOKEN,
    });
    expect(notATicket.code).toBe('CC_ERR_TICKET_MALFORMED');
    const noConnection = await call('/k8s/builder/nope/api/v1/pods');
    expect(noConnection.code).toBe('CC_ERR_NOT_FOUND');
    // Outside /k8s/ the ticket's own binding routes the request; an unknown ticket routes nowhere.
    const forged = `cct_${'A'.repeat(22)}${ticket.slice(-6)}`;
    expect((await call('/api/v1/namespaces/default/pods', { bearer: forged })).code).toMatch(
      /CC_ERR_NOT_FOUND|CC_ERR_TICKET_MALFORMED/,
    );
    expect(gw.api.received.length).toBe(before);
    expect((await call('/api/v1/namespaces/default/pods')).status).toBe(200);
    // On its own connection the other ticket is exchanged, and that cluster's credential is sent
    // (this test API server knows only the first cluster's token: its 401 comes back as is).
    expect(
      (await call('/k8s/builder/other/api/v1/namespaces/default/pods', { bearer: otherTicket })).status,
    ).toBe(401);
    expect(gw.api.received.at(-1)?.headers.authorization).toBe('Bearer other-cluster-canary-0a9b8c7d6e');
  });

  it.each([
    '/api/v1/namespaces/a/../b/pods',
    '/api/v1/namespaces/default/pods/../../b/pods/web-1',
    '/api/v1/namespaces/a%2F..%2Fb/pods',
    '/api/v1/namespaces/default/pods/web%2D1',
    '/api/v1/namespaces/%62/pods',
    '/api//v1/namespaces/b/pods',
    '/api/v1/namespaces/b/pods/',
    '/api/v1/namespaces/b/./pods',
  ])(
    'the path trick %s is refused with CC_ERR_K8S_PATH_NONCANONICAL before anything is sent',
    async (path) => {
      const before = gw.api.received.length;
      // Raw bytes on the wire: an HTTP client would normalise some of these before sending.
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = connect(
          { host: '127.0.0.1', port: Number(new URL(gw.k8s.url).port), rejectUnauthorized: false },
          () => {
            socket.write(
              `GET /k8s/builder/prod${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ticket}\r\nConnection: close\r\n\r\n`,
            );
          },
        );
        let text = '';
        socket.on('data', (c: Buffer) => {
          text += c.toString('latin1');
        });
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toContain('x-coatcheck-error: CC_ERR_K8S_PATH_NONCANONICAL');
      expect(gw.api.received.length).toBe(before);
    },
  );

  it('the proxy subresource is refused under the built-in policy; so are SPDY, port-forward and protobuf bodies', async () => {
    const before = gw.api.received.length;
    for (const path of [
      '/api/v1/namespaces/default/services/db:5432/proxy/',
      '/api/v1/namespaces/default/services/db:5432/proxy/admin',
      '/api/v1/namespaces/default/pods/web-1/proxy/metrics',
      '/api/v1/nodes/node-1/proxy/configz',
    ]) {
      const r = await call(`/k8s/builder/prod${path}`);
      expect(r.code, path).toMatch(/CC_ERR_K8S_PROXY_REFUSED|CC_ERR_K8S_PATH_NONCANONICAL/);
    }
    expect((await call('/k8s/builder/prod/api/v1/namespaces/default/pods/web-1/proxy/metrics')).code).toBe(
      'CC_ERR_K8S_PROXY_REFUSED',
    );
    const protobuf = await call('/k8s/builder/prod/api/v1/namespaces/default/pods', {
      method: 'POST',
      headers: { 'content-type': 'application/vnd.kubernetes.protobuf' },
      body: 'k8s\0binary',
    });
    expect(protobuf.code).toBe('CC_ERR_K8S_REQUEST_INVALID');
    const unknownWatch = await call(
      '/k8s/builder/prod/api/v1/namespaces/default/pods?watch=true&watch=false',
    );
    expect(unknownWatch.code).toBe('CC_ERR_K8S_REQUEST_INVALID');
    expect(gw.api.received.length).toBe(before);
    const raw = (head: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = connect(
          { host: '127.0.0.1', port: Number(new URL(gw.k8s.url).port), rejectUnauthorized: false },
          () => socket.write(head),
        );
        let text = '';
        socket.on('data', (c: Buffer) => {
          text += c.toString('latin1');
        });
        socket.on('end', () => resolve(text));
        socket.on('error', reject);
      });
    const spdy = await raw(
      `POST /k8s/builder/prod/api/v1/namespaces/default/pods/web-1/exec?command=sh&stdout=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ticket}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n`,
    );
    expect(spdy).toMatch(/^HTTP\/1\.1 400 /);
    expect(spdy).toContain('CC_ERR_K8S_STREAM_UNSUPPORTED');
    expect(spdy).toContain('SPDY streams are not carried');
    const portForward = await raw(
      `GET /k8s/builder/prod/api/v1/namespaces/default/pods/web-1/portforward?ports=5432 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ticket}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n`,
    );
    expect(portForward).toContain('CC_ERR_K8S_STREAM_UNSUPPORTED');
    const base64 = await raw(
      `GET /k8s/builder/prod/api/v1/namespaces/default/pods/web-1/exec?command=sh&stdout=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ticket}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: base64.channel.k8s.io, v4.tunnel\r\n\r\n`,
    );
    expect(base64).toContain('CC_ERR_K8S_STREAM_UNSUPPORTED');
    // A handshake the gateway's WebSocket server would refuse is refused before any credential
    // is released: no key, a key that is not 16 bytes, another version, not a GET.
    const exec = '/k8s/builder/prod/api/v1/namespaces/default/pods/web-1/exec?command=sh&stdout=true';
    for (const [method, key, version] of [
      ['GET', '', '13'],
      ['GET', 'c2hvcnQ=', '13'],
      ['GET', 'dGhlIHNhbXBsZSBub25jZQ==', '8'],
      ['POST', 'dGhlIHNhbXBsZSBub25jZQ==', '13'],
    ]) {
      const answer = await raw(
        `${method} ${exec} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${ticket}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: ${version}\r\n${key === '' ? '' : `Sec-WebSocket-Key: ${key}\r\n`}Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n`,
      );
      expect(answer, `${method} ${key} ${version}`).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toContain('CC_ERR_K8S_REQUEST_INVALID');
    }
    expect(gw.api.received.length).toBe(before);
  });

  it('headers outside the allow list never reach the API server; protobuf Accept becomes JSON', async () => {
    const r = await call('/k8s/builder/prod/api/v1/namespaces/default/pods', {
      headers: {
        accept: 'application/vnd.kubernetes.protobuf, application/json',
        'x-remote-user': 'system:admin',
        'x-remote-group': 'system:masters',
        cookie: 'a=b',
      },
    });
    expect(r.status).toBe(200);
    const seen = gw.api.received.at(-1)!;
    expect(seen.headers.accept).toBe('application/json');
    expect(seen.headers['x-remote-user']).toBeUndefined();
    expect(seen.headers['x-remote-group']).toBeUndefined();
    expect(seen.headers.cookie).toBeUndefined();
    // Secrets must come back as JSON, or their base64 values would pass undecoded.
    await call('/k8s/builder/prod/api/v1/namespaces/default/secrets', {
      headers: { accept: 'application/yaml, application/json;as=Table;g=meta.k8s.io;v=v1, */*' },
    });
    expect(gw.api.received.at(-1)!.headers.accept).toBe('application/json;as=Table;g=meta.k8s.io;v=v1');
    await call('/k8s/builder/prod/api/v1/namespaces/default/secrets/x', {
      headers: { accept: 'application/yaml' },
    });
    expect(gw.api.received.at(-1)!.headers.accept).toBe('application/json');
    const only = await call('/k8s/builder/prod/api/v1/namespaces/default/pods', {
      headers: { accept: 'application/vnd.kubernetes.protobuf' },
    });
    expect(only.status).toBe(200);
    expect(gw.api.received.at(-1)!.headers.accept).toBe('application/json');
  });

  it('no cluster credential or ticket appears in logs, audit or recordings', async () => {
    await gw.ctx.audit.flush();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    await gw.k8s.close();
    const sessions = JSON.stringify(await gw.ctx.store.listSessions({ limit: 1000 }));
    for (const text of [gw.logs(), audit, sessions]) {
      expect(text).not.toContain(CLUSTER_TOKEN);
      expect(text).not.toContain('other-cluster-canary-0a9b8c7d6e');
      expect(text).not.toContain(ticket);
    }
    expect(sessions).toContain('"frontend":"kubernetes"');
  });
});

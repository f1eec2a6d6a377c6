import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Gateway, selfSignedCert, startGateway, startUpstream, type Upstream } from './harness.js';

const SECRET = 'tls-canary-Secret-5a4b3c2d1e';

describe('https upstreams', () => {
  let certDir: string;
  let up: Upstream;
  let trusting: Gateway;
  let untrusting: Gateway;

  beforeAll(async () => {
    certDir = mkdtempSync(join(tmpdir(), 'coatcheck-cert-'));
    const cert = selfSignedCert(certDir);
    up = await startUpstream(cert);
    trusting = await startGateway({ extraConfig: `http:\n  upstreamCaFile: ${cert.certFile}\n` });
    untrusting = await startGateway();
    for (const gw of [trusting, untrusting]) {
      await gw.addSecret('tls', SECRET, ['secure']);
      await gw.addConnection('secure', up.url);
    }
  });

  afterAll(async () => {
    await trusting?.close();
    await untrusting?.close();
    await up?.close();
    rmSync(certDir, { recursive: true, force: true });
  });

  it('forwards over TLS to an upstream whose CA is configured, and scans the answer', async () => {
    const agent = await trusting.createAgent('tls-agent');
    const ticket = await trusting.issue('tls', agent.ref);
    up.handle('/whoami', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`you sent ${req.headers.authorization}`);
    });
    const res = await request(`${trusting.url}/c/secure/whoami`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
    });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
    expect(text).toMatch(/^you sent Bearer cct_[0-9A-Za-z]{28}$/);
    expect(text).not.toContain(SECRET);
  });

  it('refuses to release anything to an upstream whose certificate it cannot verify', async () => {
    const agent = await untrusting.createAgent('tls-agent');
    const ticket = await untrusting.issue('tls', agent.ref);
    const before = up.received.length;
    const res = await request(`${untrusting.url}/c/secure/whoami`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
    });
    const body = (await res.body.json()) as { error: { code: string } };
    expect({ status: res.statusCode, code: body.error.code }).toEqual({
      status: 502,
      code: 'CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE',
    });
    expect(up.received.length).toBe(before);
  });
});

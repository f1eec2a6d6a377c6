import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fetch, ProxyAgent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Proxied, startProxy, testCa } from './forward-harness.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);
const CREDENTIAL = 'conn-canary-Credential-77aa66bb55cc';

describe('forward proxy: unbound hosts tunnelled, connection-bound hosts intercepted with their credentials', () => {
  let dir: string;
  let ca: ReturnType<typeof testCa>;
  let bound: Upstream;
  let unbound: Upstream;
  let gw: Gateway;
  let px: Proxied;
  let agent: { key: string; ref: string };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-fwd-tunnel-'));
    ca = testCa(dir);
    bound = await startUpstream(ca);
    unbound = await startUpstream(ca);
    gw = await startGateway({ extraConfig: 'proxy:\n  unboundHosts: tunnel\n' });
    // No secret names the host: an http connection does, with a credential the agent never sees.
    await gw.addSecret('k8s-token', CREDENTIAL, ['cluster']);
    await gw.addConnection('cluster', bound.url, { Authorization: 'Bearer {{secret:k8s-token}}' });
    px = await startProxy(gw, { upstreamCaFile: ca.caFile });
    agent = await gw.createAgent('tunnel-agent');
    for (const up of [bound, unbound]) {
      up.handle('/whoami', (req, res) => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`you sent ${req.headers.authorization ?? 'nothing'}`);
      });
    }
  }, 60_000);

  afterAll(async () => {
    await px?.close();
    await gw?.close();
    await bound?.close();
    await unbound?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("tunnels an unbound host untouched: the client sees the upstream's own certificate", async () => {
    // Trusting only the upstream's CA (not coatcheck's) works: the gateway did not intercept.
    const { stdout } = await run('curl', [
      '-sS',
      '--max-time',
      '30',
      '--proxy',
      `http://${px.address}`,
      '--proxy-user',
      `a:${agent.key}`,
      '--cacert',
      ca.caFile,
      '-H',
      'Authorization: Bearer passed-as-is',
      `${unbound.url}/whoami`,
    ]);
    expect(stdout).toBe('you sent Bearer passed-as-is');
    const audit = await gw.ctx.store.readAudit(0, 10_000);
    expect(audit.filter((r) => r.type === 'gateway.proxy.tunnel')).toHaveLength(1);
  });

  it('intercepts a host an http connection points at, and injects its credential', async () => {
    const dispatcher = new ProxyAgent({
      uri: px.proxy.url,
      token: `Bearer ${agent.key}`,
      requestTls: { ca: px.proxy.ca.cert },
    });
    try {
      const res = await fetch(`${bound.url}/whoami`, { dispatcher });
      const text = await res.text();
      expect(res.status).toBe(200);
      expect(bound.received.at(-1)!.headers.authorization).toBe(`Bearer ${CREDENTIAL}`);
      // The credential echoed back is turned into a ticket.
      expect(text).toMatch(/^you sent Bearer cct_[0-9A-Za-z]{28}$/);
    } finally {
      await dispatcher.close();
    }
  });

  it('canary: the credential appears in no log or audit record', async () => {
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const text of [px.logs(), gw.logs(), audit]) {
      expect(text).not.toContain(CREDENTIAL);
      expect(text).not.toContain(agent.key);
    }
  });
});

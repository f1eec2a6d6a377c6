import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Proxied, startProxy, testCa } from './forward-harness.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);
const TOKEN = 'k8s-canary-Token-0a9b8c7d6e5f';

function has(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const hasKubectl = has('kubectl', ['version', '--client']);
const hasRequests = has('python3', ['-c', 'import requests']);

describe('more real clients through the forward proxy (run where the tool is installed)', () => {
  let dir: string;
  let up: Upstream;
  let gw: Gateway;
  let px: Proxied;
  let agent: { key: string; ref: string };
  let bundle: string;
  const outputs: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-fwd-tools-'));
    const ca = testCa(dir);
    up = await startUpstream(ca);
    up.handle('/api/v1/namespaces', (req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'NamespaceList', seen: req.headers.authorization ?? null }));
    });
    gw = await startGateway();
    await gw.addSecret('k8s', TOKEN, [up.url.replace(/^https:\/\//, '')]);
    px = await startProxy(gw, { upstreamCaFile: ca.caFile });
    agent = await gw.createAgent('tools-agent');
    bundle = join(dir, 'bundle.pem');
    writeFileSync(bundle, `${px.proxy.ca.cert}${rootCertificates.join('\n')}\n`);
  }, 60_000);

  afterAll(async () => {
    await px?.close();
    await gw?.close();
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(!hasKubectl)('kubectl with a ticket as the bearer token in its kubeconfig', async () => {
    const ticket = await gw.issue('k8s', agent.ref);
    const kubeconfig = join(dir, 'kubeconfig');
    // Go never proxies loopback addresses taken from HTTPS_PROXY; proxy-url in the kubeconfig is used as is.
    writeFileSync(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        '- name: c',
        '  cluster:',
        `    server: ${up.url}`,
        `    certificate-authority: ${px.caFile}`,
        `    proxy-url: http://tools-agent:${agent.key}@${px.address}`,
        'users:',
        '- name: u',
        '  user:',
        `    token: ${ticket}`,
        'contexts:',
        '- name: x',
        '  context: { cluster: c, user: u }',
        'current-context: x',
        '',
      ].join('\n'),
    );
    const { stdout, stderr } = await run(
      'kubectl',
      ['--kubeconfig', kubeconfig, 'get', '--raw', '/api/v1/namespaces'],
      {
        env: { PATH: process.env.PATH, HOME: dir },
        timeout: 60_000,
      },
    );
    outputs.push(stdout, stderr);
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${TOKEN}`);
    const body = JSON.parse(stdout) as { kind: string; seen: string };
    expect(body.kind).toBe('NamespaceList');
    expect(body.seen).toMatch(/^Bearer cct_[0-9A-Za-z]{28}$/);
  });

  it.skipIf(!hasRequests)('Python requests with HTTPS_PROXY and REQUESTS_CA_BUNDLE', async () => {
    const ticket = await gw.issue('k8s', agent.ref);
    const script = [
      'import os, requests',
      "r = requests.get(os.environ['URL'], headers={'Authorization': 'Bearer ' + os.environ['TICKET']}, timeout=30)",
      'print(r.status_code, r.text)',
    ].join('\n');
    const { stdout, stderr } = await run('python3', ['-c', script], {
      env: {
        PATH: process.env.PATH,
        HTTPS_PROXY: `http://tools-agent:${agent.key}@${px.address}`,
        NO_PROXY: '',
        REQUESTS_CA_BUNDLE: bundle,
        URL: `${up.url}/api/v1/namespaces`,
        TICKET: ticket,
      },
      timeout: 60_000,
    });
    outputs.push(stdout, stderr);
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(stdout).toMatch(/^200 \{"kind":"NamespaceList","seen":"Bearer cct_[0-9A-Za-z]{28}"\}\n$/);
  });

  it('canary: the token appears in no log, audit record or tool output', async () => {
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const text of [px.logs(), gw.logs(), audit, ...outputs]) {
      expect(text).not.toContain(TOKEN);
      expect(text).not.toContain(agent.key);
    }
  });
});

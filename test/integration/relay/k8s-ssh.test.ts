import { type ChildProcess, execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderKubeconfig } from '../../../src/cli/kubeconfig-render.js';
import { createLogger } from '../../../src/core/logger.js';
import { isTicket } from '../../../src/core/ticket-format.js';
import { type KubernetesListener, startKubernetesFrontend } from '../../../src/frontends/kubernetes/start.js';
import { type RelayListener, startRelayListener } from '../../../src/relay/listener.js';
import { openProxyCa } from '../../../src/vault/proxy-ca.js';
import { CLI_ENTRY } from '../../helpers/cli.js';
import { createTopology, netnsUnavailable, type Topology } from '../../helpers/netns.js';
import { kubectlMissing } from '../kubernetes/harness.js';
import {
  everyOutput,
  type SshGateway,
  startSshGateway,
  startThrowawaySshd,
  type ThrowawaySshd,
} from '../ssh/harness.js';
import { until } from './world.js';

/**
 * Kubernetes and SSH upstreams through a relay (docs/relay.md), across a real network
 * boundary: the test API server and an OpenSSH server live in a namespace reachable only
 * from the relay's; kubectl and ssh talk to the gateway here, which reaches them only
 * through `coatcheck relay run` in the relay namespace.
 */
const unavailable = netnsUnavailable() ?? kubectlMissing;
if (unavailable !== null) console.log(`relay kubernetes/ssh tests skipped: ${unavailable}`);

const KUBE_PORT = 6443;
const SSH_PORT = 2222;
/** The cluster's bearer token (the connection's credential): never leaves the gateway. */
const CLUSTER_TOKEN = 'k8s-relay-cluster-canary-4b1e7f9a2c6d';
/** A vault secret a container prints: comes back as a ticket. */
const POD_SECRET = 'pod-env-relay-canary-9d2f6a1c7e3b';

let net: Topology;
let dir: string;
let gw: SshGateway;
let sshd: ThrowawaySshd;
let k8s: KubernetesListener;
let relayListener: RelayListener;
let apiServer: ChildProcess;
let apiLog = '';
/** What the Kubernetes front-end and the relay listener logged. */
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
let caFile: string;
let relayKey: string;
let keyFile: string;
let kubeconfig: string;
let kubeTicket: string;
let sshTicket: string;
let certTicket: string;
let clientCredential: string;
const relays: Array<{ child: ChildProcess; output: () => string; exited: Promise<number | null> }> = [];

function startRelay() {
  const child = net.spawnIn(net.relayNs, process.execPath, [
    '--import',
    'tsx',
    CLI_ENTRY,
    'relay',
    'run',
    '--gateway',
    `https://${net.gatewayIp}:${relayListener.port}`,
    '--key-file',
    keyFile,
    '--ca',
    caFile,
    '--allow',
    `${net.targetIp}:${KUBE_PORT}`,
    '--allow',
    `${net.targetIp}:${SSH_PORT}`,
  ]);
  let text = '';
  child.stdout!.on('data', (c: Buffer) => {
    text += c.toString('utf8');
  });
  child.stderr!.on('data', (c: Buffer) => {
    text += c.toString('utf8');
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const relay = { child, output: () => text, exited };
  relays.push(relay);
  return relay;
}

function kubectl(
  args: string[],
  input?: string,
  config = kubeconfig,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(
      'kubectl',
      ['--kubeconfig', config, '--cache-dir', join(dir, 'kube-cache'), '--request-timeout', '20s', ...args],
      { env: { PATH: process.env.PATH, HOME: dir }, timeout: 40_000 },
      (error, stdout, stderr) =>
        resolve({
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
          stdout,
          stderr,
        }),
    );
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input);
  });
}

/** One GET to the Kubernetes front-end as kubectl sends it (the ticket as the bearer token). */
function k8sGet(path: string): Promise<{ status: number; error: string; body: string }> {
  return new Promise((resolve, reject) => {
    const url = new URL(`${k8s.url}/k8s/builder/cluster${path}`);
    const req = httpsRequest(
      url,
      {
        ca: k8s.ca,
        headers: { authorization: `Bearer ${kubeTicket}`, accept: 'application/json' },
        timeout: 30_000,
      },
      (res) => {
        let body = '';
        res.on('data', (c: Buffer) => {
          body += c.toString('utf8');
        });
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            error: String(res.headers['x-coatcheck-error'] ?? ''),
            body,
          }),
        );
      },
    );
    req.on('error', reject);
    req.end();
  });
}

function reachable(host: string, port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port, timeout: 2_000 });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('timeout', () => {
      socket.destroy();
      resolve('timeout');
    });
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

describe.skipIf(unavailable !== null)('kubernetes and ssh through a relay, across network namespaces', () => {
  beforeAll(async () => {
    net = createTopology();
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-relay-k8s-'));
    // The API server in the target namespace, listening only on the target link.
    apiServer = net.spawnIn(
      net.targetNs,
      process.execPath,
      [
        '--import',
        'tsx',
        join(import.meta.dirname, '../../helpers/kube-apiserver-main.ts'),
        dir,
        net.targetIp,
        String(KUBE_PORT),
      ],
      { KUBE_TOKEN: CLUSTER_TOKEN, POD_SECRET },
    );
    apiServer.stderr!.on('data', (c: Buffer) => {
      apiLog += c.toString('utf8');
    });
    const api = await new Promise<{ url: string; caPem: string; clientCredential: string }>(
      (resolve, reject) => {
        let text = '';
        apiServer.stdout!.on('data', (c: Buffer) => {
          text += c.toString('utf8');
          if (text.includes('\n')) resolve(JSON.parse(text.slice(0, text.indexOf('\n'))));
        });
        apiServer.once('exit', (code) => reject(new Error(`the API server exited (${code}): ${apiLog}`)));
      },
    );
    // OpenSSH in the target namespace.
    sshd = await startThrowawaySshd({ netns: { name: net.targetNs, address: net.targetIp, port: SSH_PORT } });

    // The gateway, here: SSH and Kubernetes front-ends and the relay listener on one context.
    gw = await startSshGateway();
    const { ctx } = gw;
    k8s = await startKubernetesFrontend(ctx, { host: '127.0.0.1', port: 0 }, log);
    relayListener = await startRelayListener({
      address: { host: net.gatewayIp, port: 0 },
      ca: await openProxyCa(ctx.store, ctx.keys.masters),
      serverNames: [],
      relays: ctx.relays,
      hub: ctx.relayHub,
      audit: ctx.audit,
      log,
    });
    caFile = join(dir, 'gateway-ca.pem');
    writeFileSync(caFile, relayListener.ca.cert);
    relayKey = (await ctx.relays.create('site', 'admin:test')).key;
    keyFile = join(dir, 'site.key');
    writeFileSync(keyFile, `${relayKey}\n`, { mode: 0o600 });

    const builder = await gw.createAgent('builder');
    await gw.addSecret('cluster-token', CLUSTER_TOKEN, ['conn:cluster']);
    await gw.addSecret('pod-secret', POD_SECRET, ['conn:nowhere']);
    await gw.addSecret('box-key', sshd.clientKey, ['conn:box']);
    clientCredential = api.clientCredential;
    await gw.addSecret('cluster-cert', clientCredential, ['conn:cluster-cert']);
    await ctx.connections.add(
      {
        name: 'cluster-cert',
        type: 'kubernetes',
        url: api.url,
        credential: 'cluster-cert',
        rules: { ca: api.caPem },
        via: 'site',
      },
      'admin:test',
    );
    certTicket = await gw.issue('cluster-cert', builder.ref, ['conn:cluster-cert']);
    await ctx.connections.add(
      {
        name: 'cluster',
        type: 'kubernetes',
        url: api.url,
        credential: 'cluster-token',
        rules: { ca: api.caPem },
        via: 'site',
      },
      'admin:test',
    );
    await ctx.connections.add(
      {
        name: 'box',
        type: 'ssh',
        url: `ssh://root@${net.targetIp}:${SSH_PORT}`,
        rules: { hostKey: sshd.hostKey },
        via: 'site',
      },
      'admin:test',
    );
    kubeTicket = await gw.issue('cluster-token', builder.ref, ['conn:cluster']);
    sshTicket = await gw.issue('box-key', builder.ref, ['conn:box']);
    kubeconfig = join(dir, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      renderKubeconfig({
        agent: 'builder',
        connection: 'cluster',
        gateway: k8s.url,
        ticket: kubeTicket,
        ca: k8s.ca,
      }),
      { mode: 0o600 },
    );
  }, 120_000);

  afterAll(async () => {
    for (const relay of relays) relay.child.kill('SIGKILL');
    await k8s?.close();
    await relayListener?.close();
    await gw?.close();
    sshd?.stop();
    net?.cleanup();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  it('the gateway cannot reach the API server or sshd itself', async () => {
    expect(await reachable(net.targetIp, KUBE_PORT)).not.toBe('connected');
    expect(await reachable(net.targetIp, SSH_PORT)).not.toBe('connected');
  });

  it('refuses both while no relay is connected, with the relay error', async () => {
    // kubectl's discovery prints no server message ("an error on the server"); the answer
    // itself names the code (the Status and x-coatcheck-error). Once discovery is cached,
    // kubectl prints the code itself (the revocation case below).
    const pods = await kubectl(['get', 'pods']);
    expect(pods.code).not.toBe(0);
    const answer = await k8sGet('/api/v1/namespaces/default/pods');
    expect(answer.status).toBe(502);
    expect(answer.error).toBe('CC_ERR_RELAY_UNAVAILABLE');
    expect(JSON.parse(answer.body)).toMatchObject({
      kind: 'Status',
      message: expect.stringContaining('CC_ERR_RELAY_UNAVAILABLE'),
    });
    const ssh = await gw.ssh('builder%box', sshTicket, ['echo', 'hi']);
    expect(ssh.code).not.toBe(0);
    expect(ssh.stdout).toBe('');
    expect(ssh.stderr).toContain('CC_ERR_RELAY_UNAVAILABLE');
  }, 60_000);

  it('kubectl get and exec (WebSocket) through gateway → relay → API server', async () => {
    startRelay();
    await until(() => gw.ctx.relayHub.sessions('site') === 1, 30_000, 'the relay session');
    const pods = await kubectl(['get', 'pods', '-o', 'name']);
    expect(pods.stderr).toBe('');
    expect(pods.stdout.trim()).toBe('pod/web-1');
    const hello = await kubectl(['exec', 'web-1', '--', 'echo', 'through', 'the', 'relay']);
    expect(hello.stderr).toBe('');
    expect(hello.stdout).toBe('through the relay\n');
    // What the container prints is inspected as without a relay: a known secret comes back a ticket.
    const printed = await kubectl(['exec', 'web-1', '--', 'printenv', 'DB_PASSWORD']);
    expect(printed.stderr).toBe('');
    expect(printed.stdout).not.toContain(POD_SECRET);
    expect(isTicket(printed.stdout.trim())).toBe(true);
    // stdin crosses the relay too.
    const echoed = await kubectl(['exec', '-i', 'web-1', '--', 'cat'], 'typed through the relay\n');
    expect(echoed.stdout).toBe('typed through the relay\n');
    expect(apiLog).toContain('exec echo through the relay');
    // A client-certificate credential: the TLS handshake over the relay's stream presents it.
    const certConfig = join(dir, 'kubeconfig-cert');
    writeFileSync(
      certConfig,
      renderKubeconfig({
        agent: 'builder',
        connection: 'cluster-cert',
        gateway: k8s.url,
        ticket: certTicket,
        ca: k8s.ca,
      }),
      { mode: 0o600 },
    );
    const byCert = await kubectl(['get', 'pods', '-o', 'name'], undefined, certConfig);
    expect(byCert.stderr).toBe('');
    expect(byCert.stdout.trim()).toBe('pod/web-1');
  }, 120_000);

  it('ssh exec and stdin through gateway → relay → sshd; the host key pin still holds', async () => {
    const r = await gw.ssh('builder%box', sshTicket, ['sh', '-c', "'echo $SSH_CONNECTION'"]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    // sshd saw the client arrive from the relay's side of the target link, at its own address.
    const [clientIp, , serverIp, serverPort] = r.stdout.trim().split(' ');
    expect(serverIp).toBe(net.targetIp);
    expect(serverPort).toBe(String(SSH_PORT));
    expect(clientIp).not.toBe(net.gatewayIp);
    expect(clientIp).toMatch(/^10\.214\./);
    const counted = await gw.ssh('builder%box', sshTicket, ['wc', '-c'], { input: 'x'.repeat(200_000) });
    expect(counted.stdout.trim()).toBe('200000');
    const printed = await gw.ssh('builder%box', sshTicket, ['echo', POD_SECRET]);
    expect(printed.stdout).not.toContain(POD_SECRET);
    expect(isTicket(printed.stdout.trim())).toBe(true);
  }, 120_000);

  it('relay killed mid-session: a running ssh command and kubectl exec end with an error; a new relay carries new sessions', async () => {
    const started = Date.now();
    const sleeping = gw.ssh('builder%box', sshTicket, ['sleep', '60']);
    const ticking = kubectl(['exec', 'web-1', '--', 'tick']);
    await until(() => apiLog.includes('exec tick') && gw.frontend.live.size > 0, 20_000, 'both sessions');
    await new Promise((r) => setTimeout(r, 1000));
    const relay = relays.at(-1)!;
    relay.child.kill('SIGKILL');
    await relay.exited;
    const [ssh, exec] = await Promise.all([sleeping, ticking]);
    // Both ended when the relay went, long before the command would have.
    expect(Date.now() - started).toBeLessThan(40_000);
    expect(ssh.code).not.toBe(0);
    expect(exec.code).not.toBe(0);
    expect(exec.stdout).toContain('tick 0');
    startRelay();
    await until(() => gw.ctx.relayHub.sessions('site') === 1, 30_000, 'the relay to reconnect');
    expect((await gw.ssh('builder%box', sshTicket, ['echo', 'again'])).stdout).toBe('again\n');
    expect((await kubectl(['exec', 'web-1', '--', 'echo', 'again'])).stdout).toBe('again\n');
  }, 120_000);

  it('a wrong host key pin is refused through the relay as directly, nothing sent', async () => {
    await gw.ctx.connections.add(
      {
        name: 'impostor',
        type: 'ssh',
        url: `ssh://root@${net.targetIp}:${SSH_PORT}`,
        rules: { hostKey: 'SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' },
        via: 'site',
      },
      'admin:test',
    );
    await gw.addSecret('impostor-key', sshd.clientKey, ['conn:impostor']);
    const builder = await gw.createAgent('other');
    const ticket = await gw.issue('impostor-key', builder.ref, ['conn:impostor']);
    const r = await gw.ssh('other%impostor', ticket, ['echo', 'hi']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('CC_ERR_SSH_UPSTREAM_HOST_KEY');
  }, 60_000);

  it('a revoked relay: its key is refused, and kubectl and ssh get the relay error', async () => {
    const relay = relays.at(-1)!;
    await gw.ctx.relays.revoke('site', 'admin:test');
    expect(gw.ctx.relayHub.sessions('site')).toBe(0);
    expect(await relay.exited).toBe(1);
    expect(relay.output()).toContain('CC_ERR_RELAY_REVOKED');
    const again = startRelay();
    expect(await again.exited).toBe(1);
    const pods = await kubectl(['get', 'pods']);
    expect(pods.code).not.toBe(0);
    expect(pods.stderr).toContain('CC_ERR_RELAY_UNAVAILABLE');
    const exec = await kubectl(['exec', 'web-1', '--', 'echo', 'after']);
    expect(exec.code).not.toBe(0);
    expect(exec.stdout).toBe('');
    const ssh = await gw.ssh('builder%box', sshTicket, ['echo', 'after']);
    expect(ssh.code).not.toBe(0);
    expect(ssh.stdout).toBe('');
    expect(ssh.stderr).toContain('CC_ERR_RELAY_UNAVAILABLE');
    expect(apiLog).not.toContain('exec echo after');
  }, 90_000);

  it('canary: no credential, ticket or key in relay output, gateway logs, audit or recordings', async () => {
    const relayText = relays.map((r) => r.output()).join('\n');
    expect(relayText.length).toBeGreaterThan(0);
    const gateway = await everyOutput(gw);
    for (const text of [relayText, gateway, logText]) {
      // The client certificate's private key.
      expect(text).not.toContain(
        clientCredential.slice(clientCredential.indexOf('PRIVATE KEY-----')).split('\n')[1]!,
      );
      for (const value of [
        certTicket,
        CLUSTER_TOKEN,
        POD_SECRET,
        sshd.clientKey.split('\n')[1]!,
        kubeTicket,
        sshTicket,
        relayKey,
      ]) {
        expect(text).not.toContain(value);
      }
    }
  });
});

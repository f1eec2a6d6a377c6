import { type ChildProcessWithoutNullStreams, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest, type Server } from 'node:http';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import Database from 'better-sqlite3';
import pg from 'pg';
import ssh2 from 'ssh2';
import { Agent, request as undiciRequest } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { cli, spawnCli } from '../helpers/cli.js';
import { type KubeApiServer, startKubeApiServer } from '../helpers/kube-apiserver.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';
import { type FakeProvider, startFakeProvider } from '../integration/llm/fake-provider.js';
import { sshdAvailable, startThrowawaySshd, type ThrowawaySshd } from '../integration/ssh/harness.js';

/**
 * Every forwarding path, driven through a real `coatcheck serve`: once an approval is
 * granted, a store that cannot write audit records (a trigger aborts every insert, as a
 * full disk would) refuses the operation, spends no approval and releases nothing; once
 * the store recovers, the same approval lets the same operation through exactly once.
 */

const SVC_SECRET = ['svc', 'canary', randomBytes(6).toString('hex')].join('-');
const PROVIDER_KEY = ['provider', 'canary', randomBytes(6).toString('hex')].join('-');
const PG_PASSWORD = ['pg', 'canary', randomBytes(6).toString('hex')].join('-');
const K8S_TOKEN = ['k8s', 'canary', randomBytes(6).toString('hex')].join('-');
const WS_SECRET = ['ws', 'canary', randomBytes(6).toString('hex')].join('-');
const CANARIES = [SVC_SECRET, PROVIDER_KEY, PG_PASSWORD, K8S_TOKEN, WS_SECRET];
const MCP_FIXTURE = fileURLToPath(new URL('../integration/mcp/fixture-server.mjs', import.meta.url));
const DATABASE = `cc_audit_down_${randomBytes(4).toString('hex')}`;

const POLICY = `@id("everything-else") permit(principal, action, resource)
unless {
  (action == Action::"http:POST" && resource == Connection::"svc") ||
  action == Action::"sql:write" ||
  (action == Action::"mcp:call" && context has tool && context.tool == "deploy") ||
  action == Action::"llm:call" ||
  action == Action::"k8s:delete" ||
  (action == Action::"ssh:exec" && context has program && context.program == "touch") ||
  (action == Action::"http:GET" && resource == Connection::"wsvc")
};
@id("held") @approval("required") permit(principal, action, resource)
when {
  (action == Action::"http:POST" && resource == Connection::"svc") ||
  action == Action::"sql:write" ||
  (action == Action::"mcp:call" && context has tool && context.tool == "deploy") ||
  action == Action::"llm:call" ||
  action == Action::"k8s:delete" ||
  (action == Action::"ssh:exec" && context has program && context.program == "touch") ||
  (action == Action::"http:GET" && resource == Connection::"wsvc")
};
`;

interface Reply {
  readonly status: number;
  readonly body: string;
}

/** One plain HTTP request (to the gateway's HTTP listener, or through its forward proxy). */
function send(
  target: { host: string; port: number; path: string },
  method: string,
  headers: Record<string, string>,
  body?: string,
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ ...target, method, headers, agent: false }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => {
        text += chunk.toString('utf8');
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('a failing audit store on every forwarding path: refused, no approval spent, nothing released', () => {
  let dir: string;
  let up: Upstream;
  let provider: FakeProvider;
  let server: ChildProcessWithoutNullStreams;
  let serverOutput = '';
  let listening: {
    admin: string;
    http: string;
    proxy: string;
    postgres: string;
    kubernetes: string;
    ssh: string;
  };
  let api: KubeApiServer;
  let k8sTicket: string;
  let sshd: ThrowawaySshd | null = null;
  let sshTicket: string;
  let ws: { server: Server; url: string; authorizations: string[] };
  let wsTicket: string;
  let agentKey: string;
  let svcTicket: string;
  let pgTicket: string;
  const mcpLog = () => join(dir, 'mcp.jsonl');
  const replies: string[] = [];

  const env = () => ({ COATCHECK_HOME: dir });
  const run = async (argv: string[], stdin?: string) => {
    const result = await cli(argv, { env: env(), ...(stdin === undefined ? {} : { stdin }) });
    expect(result.code, `${argv.join(' ')}: ${result.stderr}`).toBe(0);
    return result.stdout.trim();
  };
  const database = () => new Database(join(dir, 'coatcheck.db'));
  const breakAudit = () => {
    const db = database();
    db.exec(`CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END`);
    db.close();
  };
  const repairAudit = () => {
    const db = database();
    db.exec('DROP TRIGGER audit_down');
    db.close();
  };
  const approvals = () => {
    const db = database();
    const rows = db.prepare('SELECT id, status FROM approvals ORDER BY created_at').all() as Array<{
      id: string;
      status: string;
    }>;
    db.close();
    return rows;
  };
  const statusOf = (id: string) => approvals().find((a) => a.id === id)?.status;

  /** Run `attempt` until the operation is held, approve the request it made, return its id. */
  async function heldAndApproved(attempt: () => Promise<unknown>): Promise<string> {
    const before = new Set(approvals().map((a) => a.id));
    await attempt();
    const created = approvals().filter((a) => !before.has(a.id));
    expect(created.map((a) => a.status)).toEqual(['pending']);
    const id = created[0]!.id;
    await run(['approvals', 'approve', id, '--as', 'ada']);
    expect(statusOf(id)).toBe('approved');
    return id;
  }

  /**
   * The property, for one path: with the audit store down the approved operation is
   * refused and nothing reaches the upstream; the approval stays approved; after repair
   * the same operation goes through once and spends it.
   */
  async function holdsUnderAuditFailure(
    attempt: () => Promise<{ ok: boolean; text: string }>,
    upstreamCount: () => number,
  ) {
    const id = await heldAndApproved(attempt);
    const reached = upstreamCount();
    breakAudit();
    try {
      const refused = await attempt();
      replies.push(refused.text);
      expect(refused.text).toMatch(/CC_ERR_AUDIT_UNAVAILABLE|the audit log could not be written/);
      expect(refused.ok, refused.text).toBe(false);
      expect(upstreamCount()).toBe(reached);
      expect(statusOf(id)).toBe('approved');
    } finally {
      repairAudit();
    }
    const allowed = await attempt();
    replies.push(allowed.text);
    expect(allowed.ok, allowed.text).toBe(true);
    expect(upstreamCount()).toBe(reached + 1);
    expect(statusOf(id)).toBe('used');
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-audit-down-'));
    up = await startUpstream();
    provider = await startFakeProvider();
    const admin = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${DATABASE}`);
    await admin.end();
    const setup = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: DATABASE });
    await setup.connect();
    await setup.query('CREATE TABLE deploys (id int)');
    await setup.end();

    api = await startKubeApiServer({ dir, token: K8S_TOKEN });
    // A WebSocket upstream (the ws library's server) that notes the Authorization each upgrade brought.
    {
      const authorizations: string[] = [];
      const server = createHttpServer((_req, res) => res.writeHead(426).end());
      const wss = new WebSocketServer({ noServer: true });
      server.on('upgrade', (req, socket, head) => {
        authorizations.push(String(req.headers.authorization ?? ''));
        wss.handleUpgrade(req, socket, head, (client) => client.close(1000, 'bye'));
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      ws = { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, authorizations };
    }
    // SSH needs Debian's openssh-server and root (a throwaway user is made); without them the SSH case is skipped.
    if (sshdAvailable()) sshd = await startThrowawaySshd({ logLevel: 'INFO' });
    await run(['init']);
    writeFileSync(join(dir, 'policy.cedar'), POLICY);
    writeFileSync(
      join(dir, 'coatcheck.yaml'),
      'policy:\n  path: policy.cedar\napprovals:\n  holdTimeout: 1s\nlog:\n  level: debug\n',
    );
    await run(['secret', 'add', 'svc-token', '--allow', 'svc'], SVC_SECRET);
    await run(['secret', 'add', 'provider-key', '--allow', 'model'], PROVIDER_KEY);
    await run(['secret', 'add', 'pg-password', '--allow', 'orders'], PG_PASSWORD);
    await run(['connection', 'add', 'svc', '--type', 'http', '--url', up.url]);
    await run([
      'connection',
      'add',
      'model',
      '--type',
      'llm',
      '--url',
      provider.url,
      '--credential',
      'provider-key',
    ]);
    await run([
      'connection',
      'add',
      'orders',
      '--type',
      'postgres',
      '--url',
      `postgres://postgres@127.0.0.1:5432/${DATABASE}?sslmode=disable`,
    ]);
    await run(['secret', 'add', 'k8s-token', '--allow', 'prod'], K8S_TOKEN);
    await run([
      'connection',
      'add',
      'prod',
      '--type',
      'kubernetes',
      '--url',
      api.url,
      '--ca',
      api.caFile,
      '--credential',
      'k8s-token',
    ]);
    await run(['secret', 'add', 'ws-token', '--allow', 'wsvc'], WS_SECRET);
    await run(['connection', 'add', 'wsvc', '--type', 'http', '--url', ws.url]);
    if (sshd !== null) {
      await run(['secret', 'add', 'sshbox-key', '--allow', 'conn:sshbox'], sshd.clientKey);
      await run([
        'connection',
        'add',
        'sshbox',
        '--type',
        'ssh',
        '--url',
        `ssh://root@127.0.0.1:${sshd.port}`,
        '--host-key',
        sshd.hostKey,
      ]);
    }
    writeFileSync(join(dir, 'leak.txt'), '');
    await run([
      'connection',
      'add',
      'tools',
      '--type',
      'mcp',
      '--command',
      `'${process.execPath}' '${MCP_FIXTURE}' '${mcpLog()}' '${join(dir, 'leak.txt')}'`,
    ]);
    writeFileSync(mcpLog(), '');
    agentKey = await run(['agent', 'create', 'worker']);

    server = spawnCli(
      [
        '--json',
        'serve',
        '--listen-admin',
        '127.0.0.1:0',
        '--listen-http',
        '127.0.0.1:0',
        '--listen-proxy',
        '127.0.0.1:0',
        '--listen-postgres',
        '127.0.0.1:0',
        '--listen-k8s',
        '127.0.0.1:0',
        '--listen-ssh',
        '127.0.0.1:0',
      ],
      env(),
    );
    server.stderr.on('data', (chunk: Buffer) => {
      serverOutput += chunk.toString('utf8');
    });
    listening = await new Promise((resolve, reject) => {
      let text = '';
      server.stdout.on('data', (chunk: Buffer) => {
        serverOutput += chunk.toString('utf8');
        text += chunk.toString('utf8');
        if (text.includes('\n')) resolve(JSON.parse(text.slice(0, text.indexOf('\n'))));
      });
      server.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${serverOutput}`)));
    });
    // Issued through the running server (server.json now names it).
    svcTicket = await run(['token', 'issue', '--secret', 'svc-token', '--to', 'worker']);
    pgTicket = await run(['token', 'issue', '--secret', 'pg-password', '--to', 'worker']);
    k8sTicket = await run(['token', 'issue', '--secret', 'k8s-token', '--to', 'worker']);
    wsTicket = await run(['token', 'issue', '--secret', 'ws-token', '--to', 'worker']);
    if (sshd !== null) sshTicket = await run(['token', 'issue', '--secret', 'sshbox-key', '--to', 'worker']);
  }, 120_000);

  afterAll(async () => {
    if (server?.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((resolve) => server.once('exit', resolve));
    }
    await up?.close();
    await provider?.close();
    await api?.close();
    ws?.server.closeAllConnections();
    await new Promise((resolve) => ws?.server.close(resolve));
    sshd?.stop();
    const admin = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${DATABASE} WITH (FORCE)`);
    await admin.end();
    // A server with every front-end holds more change listeners than Node's default bound:
    // none of them may be reported as a leak.
    expect(serverOutput).not.toContain('MaxListenersExceededWarning');
    // No secret in anything the server printed or any refusal it sent.
    for (const canary of CANARIES) {
      expect(serverOutput).not.toContain(canary);
      for (const reply of replies) expect(reply).not.toContain(canary);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  const deliveredTo = (path: string) => () => up.received.filter((r) => r.url === path).length;
  const httpTarget = (path: string) => {
    const url = new URL(listening.http);
    return { host: url.hostname, port: Number(url.port), path };
  };

  it('HTTP reverse proxy', async () => {
    await holdsUnderAuditFailure(async () => {
      const reply = await send(
        httpTarget('/c/svc/deploy-reverse'),
        'POST',
        { 'proxy-authorization': `Bearer ${agentKey}`, authorization: `Bearer ${svcTicket}` },
        '{"version":42}',
      );
      return { ok: reply.status === 200, text: reply.body };
    }, deliveredTo('/deploy-reverse'));
    const released = up.received.find((r) => r.url === '/deploy-reverse')!;
    expect(released.headers.authorization).toBe(`Bearer ${SVC_SECRET}`);
  }, 60_000);

  it('forward proxy (plain http request)', async () => {
    const proxy = new URL(listening.proxy);
    const target = new URL('/deploy-forward', up.url);
    await holdsUnderAuditFailure(async () => {
      const reply = await send(
        { host: proxy.hostname, port: Number(proxy.port), path: target.href },
        'POST',
        {
          host: target.host,
          'proxy-authorization': `Bearer ${agentKey}`,
          authorization: `Bearer ${svcTicket}`,
        },
        '{"version":43}',
      );
      return { ok: reply.status === 200, text: reply.body };
    }, deliveredTo('/deploy-forward'));
  }, 60_000);

  it('PostgreSQL', async () => {
    const [host, port] = listening.postgres.split(':');
    const rows = async () => {
      const direct = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: DATABASE });
      await direct.connect();
      const { rows: found } = await direct.query('SELECT count(*)::int AS n FROM deploys');
      await direct.end();
      return (found[0] as { n: number }).n;
    };
    let inserted = 0;
    await holdsUnderAuditFailure(
      async () => {
        // A new session each time: the login, too, releases the password only when audited.
        const client = new pg.Client({
          host,
          port: Number(port),
          user: 'worker',
          password: pgTicket,
          database: 'orders',
        });
        client.on('error', () => undefined);
        try {
          await client.connect();
          await client.query('INSERT INTO deploys VALUES (44)');
          return { ok: true, text: 'inserted' };
        } catch (error) {
          return { ok: false, text: String((error as Error).message) };
        } finally {
          await client.end().catch(() => undefined);
          inserted = await rows();
        }
      },
      () => inserted,
    );
  }, 60_000);

  it('PostgreSQL, in a session that logged in before the store failed', async () => {
    const [host, port] = listening.postgres.split(':');
    const count = async () => {
      const direct = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: DATABASE });
      await direct.connect();
      const { rows: found } = await direct.query('SELECT count(*)::int AS n FROM deploys WHERE id = 47');
      await direct.end();
      return (found[0] as { n: number }).n;
    };
    let session: pg.Client | null = null;
    let inserted = 0;
    try {
      await holdsUnderAuditFailure(
        async () => {
          if (session === null) {
            session = new pg.Client({
              host,
              port: Number(port),
              user: 'worker',
              password: pgTicket,
              database: 'orders',
            });
            session.on('error', () => undefined);
            await session.connect();
          }
          try {
            await session.query('INSERT INTO deploys VALUES (47)');
            return { ok: true, text: 'inserted' };
          } catch (error) {
            const text = String((error as Error).message);
            if (/audit log could not be written/.test(text)) {
              // The gateway ends a session whose statement it could not audit: log in anew next time.
              await session.end().catch(() => undefined);
              session = null;
            }
            return { ok: false, text };
          } finally {
            inserted = await count();
          }
        },
        () => inserted,
      );
    } finally {
      await (session as pg.Client | null)?.end().catch(() => undefined);
    }
  }, 60_000);

  it('MCP tool call', async () => {
    const calls = () =>
      readFileSync(mcpLog(), 'utf8')
        .split('\n')
        .filter((line) => line.includes('"deploy"')).length;
    await holdsUnderAuditFailure(async () => {
      const client = new Client({ name: 'audit-down', version: '1.0.0' });
      try {
        await client.connect(
          new StreamableHTTPClientTransport(new URL(`${listening.http}/mcp/tools`), {
            requestInit: { headers: { authorization: `Bearer ${agentKey}` } },
          }),
        );
        const result = await client.callTool({ name: 'deploy', arguments: { text: 'v45' } });
        return { ok: result.isError !== true, text: JSON.stringify(result) };
      } catch (error) {
        return { ok: false, text: String((error as Error).message) };
      } finally {
        await client.close().catch(() => undefined);
      }
    }, calls);
  }, 60_000);

  it('LLM guard', async () => {
    await holdsUnderAuditFailure(
      async () => {
        const reply = await send(
          httpTarget('/llm/model/v1/chat/completions'),
          'POST',
          { authorization: `Bearer ${agentKey}`, 'content-type': 'application/json' },
          JSON.stringify({ model: 'gpt-test', messages: [{ role: 'user', content: 'deploy v46' }] }),
        );
        return { ok: reply.status === 200, text: reply.body };
      },
      () => provider.received.length,
    );
    expect(provider.received.at(-1)!.headers.authorization).toBe(`Bearer ${PROVIDER_KEY}`);
  }, 60_000);

  it('Kubernetes API', async () => {
    api.put('pods', { metadata: { name: 'web-9', namespace: 'default' }, spec: {} });
    // The gateway's Kubernetes listener serves TLS under the home's local CA; this test judges audit, not TLS.
    const dispatcher = new Agent({ connect: { rejectUnauthorized: false } });
    try {
      await holdsUnderAuditFailure(
        async () => {
          const res = await undiciRequest(
            `${listening.kubernetes}/k8s/worker/prod/api/v1/namespaces/default/pods/web-9`,
            { method: 'DELETE', headers: { authorization: `Bearer ${k8sTicket}` }, dispatcher },
          );
          const text = await res.body.text();
          return { ok: res.statusCode === 200, text };
        },
        () => api.received.filter((r) => r.method === 'DELETE').length,
      );
      const released = api.received.find((r) => r.method === 'DELETE')!;
      expect(released.headers.authorization).toBe(`Bearer ${K8S_TOKEN}`);
    } finally {
      await dispatcher.close();
    }
  }, 60_000);

  it('WebSocket through the forward proxy (plain ws:// upgrade)', async () => {
    const proxy = new URL(listening.proxy);
    const target = new URL('/socket', ws.url);
    const upgrade = () =>
      new Promise<{ ok: boolean; text: string }>((resolve, reject) => {
        const socket = netConnect({ host: proxy.hostname, port: Number(proxy.port) }, () =>
          socket.write(
            [
              `GET ${target.href} HTTP/1.1`,
              `host: ${target.host}`,
              'connection: Upgrade',
              'upgrade: websocket',
              `sec-websocket-key: ${randomBytes(16).toString('base64')}`,
              'sec-websocket-version: 13',
              `proxy-authorization: Bearer ${agentKey}`,
              `authorization: Bearer ${wsTicket}`,
              '',
              '',
            ].join('\r\n'),
          ),
        );
        let text = '';
        const done = () => resolve({ ok: /^HTTP\/1\.1 101 /.test(text), text });
        socket.on('data', (chunk: Buffer) => {
          text += chunk.toString('latin1');
          // Switched: the upgrade went through; this test needs nothing more of the socket.
          if (text.startsWith('HTTP/1.1 101 ') && text.includes('\r\n\r\n')) {
            socket.destroy();
            done();
          }
        });
        socket.on('close', done);
        socket.on('error', reject);
      });
    await holdsUnderAuditFailure(upgrade, () => ws.authorizations.length);
    // Only the upgrade that went through brought the secret, exchanged for the ticket.
    expect(ws.authorizations).toEqual([`Bearer ${WS_SECRET}`]);
  }, 60_000);

  /** OpenSSH's client through the gateway's SSH listener, the ticket as the password (SSH_ASKPASS). */
  function sshRun(args: string[]): Promise<{ code: number; text: string }> {
    const [host, port] = listening.ssh.split(':') as [string, string];
    const askpass = join(dir, 'askpass.sh');
    if (!existsSync(askpass)) {
      writeFileSync(askpass, '#!/bin/sh\nprintf "%s\\n" "$CC_TEST_PASSWORD"\n');
      chmodSync(askpass, 0o755);
    }
    return new Promise((resolve) => {
      const child = execFile(
        'ssh',
        [
          '-F',
          '/dev/null',
          // This test judges audit, not host keys.
          '-o',
          'StrictHostKeyChecking=no',
          '-o',
          'UserKnownHostsFile=/dev/null',
          '-o',
          'PubkeyAuthentication=no',
          '-o',
          'PreferredAuthentications=password',
          '-o',
          'NumberOfPasswordPrompts=1',
          '-o',
          'LogLevel=ERROR',
          '-p',
          port,
          '-l',
          'worker%sshbox',
          host,
          ...args,
        ],
        {
          env: {
            PATH: process.env.PATH ?? '/usr/bin:/bin',
            HOME: dir,
            SSH_ASKPASS: askpass,
            SSH_ASKPASS_REQUIRE: 'force',
            CC_TEST_PASSWORD: sshTicket,
          },
          timeout: 60_000,
        },
        (error, stdout, stderr) =>
          resolve({
            code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
            text: `${stdout}${stderr}`,
          }),
      );
      child.stdin?.end();
    });
  }
  /** Logins the upstream sshd accepted (each one is the gateway presenting the released key). */
  const upstreamLogins = () => (sshd!.log().match(/Accepted publickey for root/g) ?? []).length;

  it.skipIf(!sshdAvailable())(
    'SSH exec, a new login each time',
    async () => {
      const marker = join(sshd!.dir, 'audit-down-new-login');
      const attempt = () => sshRun(['touch', marker]);
      const id = await heldAndApproved(attempt);
      expect(existsSync(marker)).toBe(false);
      const logins = upstreamLogins();
      const logged = serverOutput.length;
      breakAudit();
      try {
        // Releasing the key is audited first: the login itself is refused, so nothing reaches sshd.
        const refused = await attempt();
        replies.push(refused.text);
        expect(refused.code, refused.text).not.toBe(0);
        expect(existsSync(marker)).toBe(false);
        expect(upstreamLogins()).toBe(logins);
        expect(statusOf(id)).toBe('approved');
        // The client is told only that the login failed; the gateway's log says why.
        expect(serverOutput.slice(logged)).toMatch(
          /"reason":"CC_ERR_AUDIT_UNAVAILABLE"[^\n]*"msg":"ssh: login refused"/,
        );
      } finally {
        repairAudit();
      }
      const allowed = await attempt();
      replies.push(allowed.text);
      expect(allowed.code, allowed.text).toBe(0);
      expect(existsSync(marker)).toBe(true);
      expect(upstreamLogins()).toBe(logins + 1);
      expect(statusOf(id)).toBe('used');
      // The private key the gateway logged in with is in nothing it printed or answered.
      const keyBody = sshd!.clientKey.split('\n')[1]!;
      expect(serverOutput).not.toContain(keyBody);
      for (const reply of replies) expect(reply).not.toContain(keyBody);
    },
    90_000,
  );

  it.skipIf(!sshdAvailable())(
    'SSH exec, in a session that logged in before the store failed',
    async () => {
      const marker = join(sshd!.dir, 'audit-down-same-session');
      const [host, port] = listening.ssh.split(':') as [string, string];
      let session: ssh2.Client | null = null;
      const connect = () =>
        new Promise<ssh2.Client>((resolve, reject) => {
          const client = new ssh2.Client();
          client.on('ready', () => resolve(client));
          client.on('error', reject);
          client.on('close', () => {
            if (session === client) session = null;
          });
          client.connect({
            host,
            port: Number(port),
            username: 'worker%sshbox',
            password: sshTicket,
            // This test judges audit, not host keys.
            hostVerifier: () => true,
            readyTimeout: 30_000,
          });
        });
      const exec = (client: ssh2.Client, command: string) =>
        new Promise<{ code: number; text: string }>((resolve, reject) => {
          client.exec(command, (error, stream) => {
            if (error) {
              reject(error);
              return;
            }
            let text = '';
            let code = -1;
            stream.on('data', (d: Buffer) => {
              text += d.toString('utf8');
            });
            stream.stderr.on('data', (d: Buffer) => {
              text += d.toString('utf8');
            });
            stream.on('exit', (status: number | null) => {
              code = status ?? -1;
            });
            stream.on('close', () => resolve({ code, text }));
          });
        });
      const logins = upstreamLogins();
      try {
        session = await connect();
        await holdsUnderAuditFailure(
          async () => {
            session ??= await connect();
            const result = await exec(session, `touch ${marker}`);
            return { ok: result.code === 0, text: result.text };
          },
          () => (existsSync(marker) ? 1 : 0),
        );
        // One login upstream carried every attempt: the refused command never went to sshd.
        expect(upstreamLogins()).toBe(logins + 1);
      } finally {
        (session as ssh2.Client | null)?.end();
      }
    },
    90_000,
  );

  it('the audit chain still verifies after every refusal', async () => {
    const verified = await cli(['audit', 'verify'], { env: env() });
    expect(verified.code, verified.stderr).toBe(0);
  });
});

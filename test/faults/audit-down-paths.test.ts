import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import Database from 'better-sqlite3';
import pg from 'pg';
import { Agent, request as undiciRequest } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, spawnCli } from '../helpers/cli.js';
import { type KubeApiServer, startKubeApiServer } from '../helpers/kube-apiserver.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';
import { type FakeProvider, startFakeProvider } from '../integration/llm/fake-provider.js';

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
const CANARIES = [SVC_SECRET, PROVIDER_KEY, PG_PASSWORD, K8S_TOKEN];
const MCP_FIXTURE = fileURLToPath(new URL('../integration/mcp/fixture-server.mjs', import.meta.url));
const DATABASE = `cc_audit_down_${randomBytes(4).toString('hex')}`;

const POLICY = `@id("everything-else") permit(principal, action, resource)
unless {
  (action == Action::"http:POST" && resource == Connection::"svc") ||
  action == Action::"sql:write" ||
  (action == Action::"mcp:call" && context has tool && context.tool == "deploy") ||
  action == Action::"llm:call" ||
  action == Action::"k8s:delete"
};
@id("held") @approval("required") permit(principal, action, resource)
when {
  (action == Action::"http:POST" && resource == Connection::"svc") ||
  action == Action::"sql:write" ||
  (action == Action::"mcp:call" && context has tool && context.tool == "deploy") ||
  action == Action::"llm:call" ||
  action == Action::"k8s:delete"
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
  let listening: { admin: string; http: string; proxy: string; postgres: string; kubernetes: string };
  let api: KubeApiServer;
  let k8sTicket: string;
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
  }, 120_000);

  afterAll(async () => {
    if (server?.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((resolve) => server.once('exit', resolve));
    }
    await up?.close();
    await provider?.close();
    await api?.close();
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

  it('the audit chain still verifies after every refusal', async () => {
    const verified = await cli(['audit', 'verify'], { env: env() });
    expect(verified.code, verified.stderr).toBe(0);
  });
});

import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli, spawnCli, waitForLine } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-serve-Zq8Lm3Xw1';

describe('serve and the admin API', () => {
  let t: TestHome;
  let server: ChildProcessWithoutNullStreams | null = null;
  let serverErr = '';

  beforeEach(async () => {
    t = await makeTestHome();
  });
  afterEach(() => {
    server?.kill('SIGKILL');
    server = null;
    t.remove();
  });

  it('prints what it listens on; the CLI then goes through the API; the key guards it; SIGTERM stops it cleanly', async () => {
    const env = { COATCHECK_HOME: t.home.dir, COATCHECK_LOG_LEVEL: 'debug' };
    server = spawnCli(['serve', '--listen-admin', '127.0.0.1:0'], env) as ChildProcessWithoutNullStreams;
    server.stderr.on('data', (c: Buffer) => {
      serverErr += c.toString('utf8');
    });
    const [, url] = await waitForLine(server, /admin API\s+(http:\/\/127\.0\.0\.1:\d+)/);
    expect(existsSync(t.home.serverFile)).toBe(true);

    // The in-process CLI finds the running server (server.json) and uses its API.
    expect((await cli(['secret', 'add', 'db', '--allow', 'pg'], { env, stdin: CANARY })).code).toBe(0);
    const key = (await cli(['agent', 'create', 'worker'], { env })).stdout.trim();
    const ticket = (await cli(['token', 'issue', '--secret', 'db', '--to', 'worker'], { env })).stdout.trim();
    expect(ticket).toMatch(/^cct_/);
    const tail = JSON.parse((await cli(['audit', 'tail', '--json', '-n', '3'], { env })).stdout) as {
      actor: string;
    }[];
    expect(tail.map((r) => r.actor)).toEqual(['admin:api', 'admin:api', 'admin:api']);

    const unauthorized = await fetch(`${url}/v1/secrets`);
    expect(unauthorized.status).toBe(401);
    expect(await unauthorized.json()).toEqual({
      error: {
        code: 'CC_ERR_ADMIN_UNAUTHORIZED',
        message: 'a valid admin key is required (Authorization: Bearer <admin key>)',
      },
    });
    const wrongKey = await fetch(`${url}/v1/secrets`, { headers: { authorization: 'Bearer cck_wrong' } });
    expect(wrongKey.status).toBe(401);
    const ok = await fetch(`${url}/v1/secrets`, { headers: { authorization: `Bearer ${t.adminKey}` } });
    expect(ok.status).toBe(200);
    const badBody = await fetch(`${url}/v1/tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t.adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ secret: 'db', to: 'worker', uses: -1 }),
    });
    expect(badBody.status).toBe(400);
    expect(((await badBody.json()) as { error: { code: string } }).error.code).toBe(
      'CC_ERR_INVALID_ARGUMENT',
    );
    const openapi = (await (await fetch(`${url}/v1/openapi.json`)).json()) as {
      openapi: string;
      paths: Record<string, unknown>;
    };
    expect(openapi.openapi).toBe('3.1.0');
    expect(Object.keys(openapi.paths)).toEqual(
      expect.arrayContaining(['/v1/secrets', '/v1/tokens', '/v1/audit/verify', '/v1/keys/rotate']),
    );

    server.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => server!.once('exit', resolve));
    expect(code).toBe(0);
    expect(existsSync(t.home.serverFile)).toBe(false);
    server = null;
    for (const text of [serverErr]) {
      expect(text).not.toContain(CANARY);
      expect(text).not.toContain(ticket);
      expect(text).not.toContain(key);
    }
    // With the server gone, the CLI works on the store directly again.
    expect((await cli(['audit', 'verify'], { env })).code).toBe(0);
  });

  it('refuses a listener it cannot provide instead of silently skipping it', async () => {
    const env = { COATCHECK_HOME: t.home.dir };
    // The PostgreSQL listener's port is taken: serve must fail at start, naming the flag.
    const { createServer } = await import('node:net');
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const result = await cli(
        ['serve', '--listen-admin', '127.0.0.1:0', '--listen-postgres', `127.0.0.1:${port}`],
        { env },
      );
      expect(result.code).toBe(2);
      expect(result.stderr).toContain('--listen-postgres');
    } finally {
      taken.close();
    }
  });
});

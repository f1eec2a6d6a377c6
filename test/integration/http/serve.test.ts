import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);
const SECRET = 'serve-canary-Zz9Yy8Xx7Ww6';
const main = new URL('../../../src/cli/main.ts', import.meta.url).pathname;

describe('coatcheck serve --listen-http', () => {
  let dir: string;
  let up: Upstream;
  let server: ChildProcess;
  let stderr = '';
  let urls: { admin: string; http: string };

  const cli = async (args: string[], input?: string) => {
    const child = run(process.execPath, ['--import', 'tsx', main, '--dir', dir, ...args], {
      env: { ...process.env, COATCHECK_HOME: '' },
    });
    if (input !== undefined) {
      child.child.stdin!.end(input);
    }
    return (await child).stdout;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-serve-'));
    up = await startUpstream();
    await cli(['init']);
    await cli(['secret', 'add', 'svc-token', '--allow', 'svc'], SECRET);
    await cli(['connection', 'add', 'svc', '--type', 'http', '--url', up.url]);
    server = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        main,
        '--dir',
        dir,
        '--json',
        'serve',
        '--listen-admin',
        '127.0.0.1:0',
        '--listen-http',
        '127.0.0.1:0',
      ],
      {
        env: { ...process.env, COATCHECK_HOME: '', COATCHECK_LOG_LEVEL: 'debug' },
      },
    );
    server.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    urls = await new Promise((resolve, reject) => {
      server.stdout!.once('data', (d: Buffer) => resolve(JSON.parse(d.toString())));
      server.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
    });
  });

  afterAll(async () => {
    if (server?.exitCode === null) {
      server.kill('SIGTERM');
      await new Promise((resolve) => server.once('exit', resolve));
    }
    await up?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves the HTTP front-end next to the admin API, with the CLI going through the running server', async () => {
    expect(urls.http).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const key = (await cli(['agent', 'create', 'cli-agent'])).trim();
    const ticket = (await cli(['token', 'issue', '--secret', 'svc-token', '--to', 'cli-agent'])).trim();
    up.handle('/echo', (req, res) => res.end(`got ${req.headers.authorization}`));
    const res = await request(`${urls.http}/c/svc/echo`, {
      headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
    });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
    expect(text).toMatch(/^got Bearer cct_[0-9A-Za-z]{28}$/);

    const metrics = await (await request(`${urls.admin}/metrics`)).body.text();
    expect(metrics).toContain('coatcheck_http_requests_total{frontend="http",method="GET",status="2xx"} 1');
    // Recordings are batched; the CLI reads them through the running server.
    await expect
      .poll(
        async () =>
          JSON.parse(await cli(['--json', 'sessions', 'list'])).map((s: { path: string }) => s.path),
        { timeout: 5000 },
      )
      .toEqual(['/echo']);
  }, 60_000);

  it('stops on SIGTERM, and never logged the secret', async () => {
    server.kill('SIGTERM');
    expect(await new Promise((resolve) => server.once('exit', resolve))).toBe(0);
    expect(stderr).toContain('"msg":"http request"');
    expect(stderr).not.toContain(SECRET);
    expect(stderr).not.toMatch(/cc[ta]_[0-9A-Za-z]{28}/);
  });
});

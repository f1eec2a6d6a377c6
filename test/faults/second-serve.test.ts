import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli, spawnCli, waitForLine } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// A second `serve` on the same home must neither start nor disturb the first: it used to
// fail with an unnamed internal error and delete the running server's server.json, after
// which the CLI bypassed the server (and its caches) entirely.
describe('one server per home', () => {
  let t: TestHome;
  let first: ChildProcessWithoutNullStreams | null = null;
  let blocker: Server | null = null;
  beforeEach(async () => {
    t = await makeTestHome();
  });
  afterEach(async () => {
    first?.kill('SIGKILL');
    first = null;
    await new Promise<void>((resolve) => (blocker ? blocker.close(() => resolve()) : resolve()));
    blocker = null;
    t.remove();
  });

  it('a second serve is refused with the first one named, and server.json stays the first one’s', async () => {
    const env = { COATCHECK_HOME: t.home.dir };
    first = spawnCli(['serve', '--listen-admin', '127.0.0.1:0'], env) as ChildProcessWithoutNullStreams;
    const [, url] = await waitForLine(first, /admin API\s+(http:\/\/127\.0\.0\.1:\d+)/);
    const before = readFileSync(t.home.serverFile, 'utf8');
    expect(JSON.parse(before)).toMatchObject({ pid: first.pid, admin: url });

    // Same port, and another free port: both refused because the home is taken.
    const port = new URL(url!).port;
    for (const listen of [`127.0.0.1:${port}`, '127.0.0.1:0']) {
      const second = await cli(['serve', '--listen-admin', listen], { env });
      expect(second.code).not.toBe(0);
      expect(second.stderr).toContain('CC_ERR_SERVER_RUNNING');
      expect(second.stderr).toContain(`pid ${first.pid}`);
      expect(second.stderr).toContain(url);
      expect(readFileSync(t.home.serverFile, 'utf8')).toBe(before);
    }
    // The CLI still goes through the running server (its actor is the API, not the CLI).
    expect((await cli(['agent', 'create', 'worker'], { env })).code).toBe(0);
    const tail = JSON.parse((await cli(['audit', 'tail', '--json', '-n', '1'], { env })).stdout) as {
      actor: string;
    }[];
    expect(tail[0]?.actor).toBe('admin:api');
  });

  it('a server.json left by a dead process is stale: serve starts and replaces it', async () => {
    writeFileSync(
      t.home.serverFile,
      `${JSON.stringify({ pid: 2 ** 22 + 12345, admin: 'http://127.0.0.1:1' })}\n`,
      {
        mode: 0o600,
      },
    );
    const env = { COATCHECK_HOME: t.home.dir };
    first = spawnCli(['serve', '--listen-admin', '127.0.0.1:0'], env) as ChildProcessWithoutNullStreams;
    const [, url] = await waitForLine(first, /admin API\s+(http:\/\/127\.0\.0\.1:\d+)/);
    expect(JSON.parse(readFileSync(t.home.serverFile, 'utf8'))).toMatchObject({ pid: first.pid, admin: url });
  });

  it('a busy port is named in a CC_ERR_LISTEN_ADDRESS_IN_USE error, and the claim on the home is released', async () => {
    blocker = createServer();
    await new Promise<void>((resolve) => blocker!.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    const env = { COATCHECK_HOME: t.home.dir };
    for (const flag of ['--listen-admin', '--listen-http']) {
      const args =
        flag === '--listen-admin'
          ? [flag, `127.0.0.1:${port}`]
          : ['--listen-admin', '127.0.0.1:0', flag, `127.0.0.1:${port}`];
      const result = await cli(['serve', ...args], { env });
      expect(result.code).not.toBe(0);
      expect(result.stderr).toContain('CC_ERR_LISTEN_ADDRESS_IN_USE');
      expect(result.stderr).toContain(`127.0.0.1:${port}`);
    }
    // Nothing holds the home afterwards: a correct start works.
    first = spawnCli(['serve', '--listen-admin', '127.0.0.1:0'], env) as ChildProcessWithoutNullStreams;
    await waitForLine(first, /admin API\s+(http:\/\/127\.0\.0\.1:\d+)/);
  });
});

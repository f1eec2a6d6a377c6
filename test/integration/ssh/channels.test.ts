import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  everyOutput,
  freePort,
  type SshGateway,
  startSshGateway,
  startThrowawaySshd,
  type ThrowawaySshd,
} from './harness.js';

/** Shell through a pty, sftp, scp, a local port forward and git over ssh, through the gateway. */
let sshd: ThrowawaySshd;
let gw: SshGateway;
let ticket: string;
let web: Server;
let webPort: number;

function run(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  input?: string,
  cwd?: string,
): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    const child = execFile(
      command,
      args,
      { env, cwd, timeout: 90_000, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) =>
        resolve({
          stdout,
          stderr,
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
        }),
    );
    // A child that exits before reading stdin gives EPIPE; its exit code and output are what the test checks.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input ?? '');
  });
}

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway();
  const builder = (await gw.createAgent('builder')).ref;
  await gw.addSecret('box-key', sshd.clientKey, ['conn:box']);
  await gw.addConnection('box', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
  ticket = await gw.issue('box-key', builder, ['conn:box']);
  web = createServer((req, res) => res.end(`hello from ${req.url}`));
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  webPort = (web.address() as { port: number }).port;
}, 60_000);

afterAll(async () => {
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
  await gw?.close();
  sshd?.stop();
});

describe('ssh: channels other than exec', { timeout: 120_000 }, () => {
  it('a shell through a pty, driven by ssh -tt', async () => {
    const r = await gw.ssh('builder%box', ticket, [], {
      extra: ['-tt'],
      input: 'echo shell-$((6*7))\nexit 3\n',
    });
    expect(r.stdout).toContain('shell-42');
    expect(r.code).toBe(3);
  });

  it('sftp put and get', async () => {
    const local = join(gw.dir, 'upload.bin');
    const data = randomBytes(300_000);
    writeFileSync(local, data);
    const remote = join(sshd.dir, 'uploaded.bin');
    const back = join(gw.dir, 'download.bin');
    const r = await run(
      'sftp',
      [...gw.clientOptions(), '-P', String(gw.port), 'builder%box@127.0.0.1'],
      gw.clientEnv(ticket),
      `put ${local} ${remote}\nget ${remote} ${back}\nbye\n`,
    );
    expect(r.code).toBe(0);
    expect(readFileSync(remote).equals(data)).toBe(true);
    expect(readFileSync(back).equals(data)).toBe(true);
  });

  it('scp (over the sftp subsystem) copies a file', async () => {
    const local = join(gw.dir, 'scp.bin');
    const data = randomBytes(100_000);
    writeFileSync(local, data);
    const remote = join(sshd.dir, 'scp.bin');
    const r = await run(
      'scp',
      [...gw.clientOptions(), '-P', String(gw.port), local, `builder%box@127.0.0.1:${remote}`],
      gw.clientEnv(ticket),
    );
    expect(r.code).toBe(0);
    expect(readFileSync(remote).equals(data)).toBe(true);
  });

  it('a local port forward (-L) reaches an HTTP server on the upstream side', async () => {
    const local = await freePort();
    const child = spawn(
      'ssh',
      [
        ...gw.clientOptions(),
        '-N',
        '-o',
        'ExitOnForwardFailure=yes',
        '-L',
        `127.0.0.1:${local}:127.0.0.1:${webPort}`,
        '-p',
        String(gw.port),
        '-l',
        'builder%box',
        '127.0.0.1',
      ],
      { env: gw.clientEnv(ticket), stdio: 'ignore' },
    );
    try {
      let body = '';
      for (let i = 0; i < 200 && body === ''; i++) {
        try {
          body = await (await fetch(`http://127.0.0.1:${local}/through-the-tunnel`)).text();
        } catch {
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      expect(body).toBe('hello from /through-the-tunnel');
    } finally {
      child.kill();
    }
    await gw.settled();
    const forwards = (await gw.ctx.store.readAudit(0, 100_000)).filter(
      (a) => a.type === 'ssh.channel' && (a.data as { kind: string }).kind === 'forward',
    );
    expect(forwards.length).toBeGreaterThan(0);
    expect((forwards[0]!.data as { target: string }).target).toBe(`127.0.0.1:${webPort}`);
  });

  it('git clone and push over ssh through the gateway (GIT_SSH_COMMAND)', async () => {
    const bare = join(sshd.dir, 'repo.git');
    execFileSync('git', ['init', '-q', '--bare', '-b', 'main', bare]);
    const seed = join(gw.dir, 'seed');
    mkdirSync(seed);
    const gitEnv = {
      ...gw.clientEnv(ticket),
      GIT_AUTHOR_NAME: 't',
      GIT_AUTHOR_EMAIL: 't@example.com',
      GIT_COMMITTER_NAME: 't',
      GIT_COMMITTER_EMAIL: 't@example.com',
      GIT_SSH_COMMAND: `ssh ${gw.clientOptions().join(' ')} -l builder%box`,
    };
    const url = `ssh://127.0.0.1:${gw.port}${bare}`;
    const git = (args: string[], cwd: string) => run('git', args, gitEnv, undefined, cwd);
    expect((await git(['init', '-q', '-b', 'main'], seed)).code).toBe(0);
    writeFileSync(join(seed, 'README'), 'first\n');
    expect((await git(['add', 'README'], seed)).code).toBe(0);
    expect((await git(['commit', '-q', '-m', 'first'], seed)).code).toBe(0);
    const pushed = await git(['push', '-q', url, 'main'], seed);
    expect(pushed.stderr).toBe('');
    expect(pushed.code).toBe(0);
    const clone = join(gw.dir, 'clone');
    const cloned = await git(['clone', '-q', url, clone], gw.dir);
    expect(cloned.code).toBe(0);
    expect(readFileSync(join(clone, 'README'), 'utf8')).toBe('first\n');
  });

  it('no credential or ticket appears in logs, audit or recordings', async () => {
    const text = await everyOutput(gw);
    expect(text).not.toContain(sshd.clientKey.split('\n')[1]!);
    expect(text).not.toContain(ticket);
  });
});

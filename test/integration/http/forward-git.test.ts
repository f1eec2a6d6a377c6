import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GitServer, type Proxied, startGitServer, startProxy, testCa } from './forward-harness.js';
import { type Gateway, startGateway } from './harness.js';

const run = promisify(execFile);
const PASSWORD = 'git-canary-Password-1f2e3d4c5b6a';

describe('git over HTTPS through the forward proxy, with a ticket as the password', () => {
  let dir: string;
  let git: GitServer;
  let gw: Gateway;
  let px: Proxied;
  let agent: { key: string; ref: string };
  let gitEnv: NodeJS.ProcessEnv;
  const outputs: string[] = [];

  const gitRun = async (args: string[], cwd: string) => {
    try {
      const { stdout, stderr } = await run('git', args, { cwd, env: gitEnv, timeout: 60_000 });
      outputs.push(stdout, stderr);
      return { code: 0, stdout, stderr };
    } catch (error) {
      const e = error as { code: number; stdout: string; stderr: string };
      outputs.push(e.stdout, e.stderr);
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-git-'));
    const ca = testCa(dir);
    // A bare repository with one commit, served by git http-backend behind a node https server.
    const root = join(dir, 'srv');
    mkdirSync(root);
    execFileSync('git', ['init', '-q', '--bare', '-b', 'main', join(root, 'repo.git')]);
    execFileSync('git', ['-C', join(root, 'repo.git'), 'config', 'http.receivepack', 'true']);
    const seed = join(dir, 'seed');
    execFileSync('git', ['init', '-q', '-b', 'main', seed]);
    writeFileSync(join(seed, 'README'), 'hello\n');
    const id = ['-c', 'user.name=t', '-c', 'user.email=t@example.invalid'];
    execFileSync('git', ['-C', seed, ...id, 'add', 'README']);
    execFileSync('git', ['-C', seed, ...id, 'commit', '-q', '-m', 'first']);
    execFileSync('git', ['-C', seed, 'push', '-q', join(root, 'repo.git'), 'main']);
    git = await startGitServer(root, ca, PASSWORD);
    gw = await startGateway();
    await gw.addSecret('git-password', PASSWORD, [git.url.replace(/^https:\/\//, '')]);
    px = await startProxy(gw, { upstreamCaFile: ca.caFile });
    agent = await gw.createAgent('git-agent');
    gitEnv = {
      PATH: process.env.PATH,
      HOME: dir,
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_TERMINAL_PROMPT: '0',
      GIT_AUTHOR_NAME: 'agent',
      GIT_AUTHOR_EMAIL: 'agent@example.invalid',
      GIT_COMMITTER_NAME: 'agent',
      GIT_COMMITTER_EMAIL: 'agent@example.invalid',
      HTTPS_PROXY: `http://git-agent:${agent.key}@${px.address}`,
      https_proxy: `http://git-agent:${agent.key}@${px.address}`,
      GIT_SSL_CAINFO: px.caFile,
    };
  }, 60_000);

  afterAll(async () => {
    await px?.close();
    await gw?.close();
    await git?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('clones and pushes with the ticket in the URL; the server sees the real password only', async () => {
    const ticket = await gw.issue('git-password', agent.ref);
    const work = join(dir, 'work');
    const url = `https://x-access-token:${ticket}@${git.url.replace(/^https:\/\//, '')}/repo.git`;
    const clone = await gitRun(['clone', '-q', url, work], dir);
    expect(clone.code).toBe(0);
    expect(readFileSync(join(work, 'README'), 'utf8')).toBe('hello\n');
    writeFileSync(join(work, 'NOTES'), 'from the agent\n');
    await gitRun(['add', 'NOTES'], work);
    await gitRun(['commit', '-q', '-m', 'agent change'], work);
    const push = await gitRun(['push', '-q', 'origin', 'main'], work);
    expect(push.code).toBe(0);
    const log = execFileSync('git', [
      '-C',
      join(git.root, 'repo.git'),
      'log',
      '--format=%s',
      'main',
    ]).toString();
    expect(log).toBe('agent change\nfirst\n');
    const basic = `Basic ${Buffer.from(`x-access-token:${PASSWORD}`).toString('base64')}`;
    expect(git.authorizations.length).toBeGreaterThan(0);
    expect(git.authorizations.every((a) => a === basic)).toBe(true);
  });

  it('clones with the ticket in an Authorization extra header (http.extraHeader)', async () => {
    const ticket = await gw.issue('git-password', agent.ref);
    const header = `Authorization: Basic ${Buffer.from(`x-access-token:${ticket}`).toString('base64')}`;
    const work = join(dir, 'work-header');
    const res = await gitRun(
      ['-c', `http.extraHeader=${header}`, 'clone', '-q', `${git.url}/repo.git`, work],
      dir,
    );
    expect(res.code).toBe(0);
    expect(readFileSync(join(work, 'NOTES'), 'utf8')).toBe('from the agent\n');
  });

  it('fails to clone with a revoked ticket, and the server never sees a password', async () => {
    const ticket = await gw.issue('git-password', agent.ref);
    await gw.ctx.vault.revokeTicket(ticket, 'admin:test');
    const before = git.authorizations.length;
    const url = `https://x-access-token:${ticket}@${git.url.replace(/^https:\/\//, '')}/repo.git`;
    const res = await gitRun(['clone', '-q', url, join(dir, 'work-revoked')], dir);
    expect(res.code).not.toBe(0);
    expect(git.authorizations.length).toBe(before);
  });

  it('canary: the password appears in no log, audit record, recording or git output', async () => {
    await px.proxy.pipeline.services.recorder.flush();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    const sessions = JSON.stringify(await gw.ctx.store.listSessions({ limit: 1000 }));
    for (const text of [px.logs(), gw.logs(), audit, sessions, ...outputs]) {
      expect(text).not.toContain(PASSWORD);
      expect(text).not.toContain(agent.key);
    }
  });
});

import { execFile, execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  everyOutput,
  type SshGateway,
  startSshGateway,
  startThrowawaySshd,
  type ThrowawaySshd,
} from './harness.js';

/**
 * Per-command policy, approvals, raw command lines, smuggling, revocation and a wrong
 * host key, against a real sshd with the real OpenSSH client.
 */
const POLICY = `
@id("plain-commands") permit(principal, action == Action::"ssh:exec", resource == Connection::"box") when { context has program && ["echo", "cat", "sleep", "true", "printf"].contains(context.program) };
@id("touch-needs-approval") @approval("required") permit(principal, action == Action::"ssh:exec", resource == Connection::"box") when { context has program && context.program == "touch" };
@id("no-cat-shadow") forbid(principal, action == Action::"ssh:exec", resource) when { context has args && context.args.contains("/etc/shadow") };
@id("one-raw-line") permit(principal, action == Action::"ssh:exec-raw", resource == Connection::"box") when { context has command && context.command == "echo a && echo b" };
@id("keyed-box") permit(principal, action == Action::"ssh:exec", resource == Connection::"boxcred") when { context has program && context.program == "echo" };
@id("wrong-box") permit(principal, action == Action::"ssh:exec", resource == Connection::"wrongkey");
`;

let sshd: ThrowawaySshd;
let gw: SshGateway;
let builder: string;
let ticket: string;
const approver = { ref: 'human:approver@example.com', name: 'approver', groups: [] as string[] };

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway({ policy: POLICY, holdTimeout: '1s' });
  builder = (await gw.createAgent('builder')).ref;
  await gw.addSecret('box-key', sshd.clientKey, ['conn:box', 'conn:wrongkey']);
  await gw.addConnection('box', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(gw.dir, 'impostor')]);
  const impostor = readFileSync(join(gw.dir, 'impostor.pub'), 'utf8').split(' ').slice(0, 2).join(' ');
  await gw.addConnection('wrongkey', `ssh://root@127.0.0.1:${sshd.port}`, impostor);
  ticket = await gw.issue('box-key', builder, ['conn:box']);
  await gw.addSecret('boxcred-key', sshd.clientKey, ['conn:boxcred']);
  await gw.addConnection('boxcred', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey, 'boxcred-key');
}, 60_000);

afterAll(async () => {
  await gw?.close();
  sshd?.stop();
});

describe('ssh: per-command policy', { timeout: 120_000 }, () => {
  it('a permitted program runs; another is denied with a stable code and exit status 126', async () => {
    const ok = await gw.ssh('builder%box', ticket, ['echo', 'allowed']);
    expect(ok.stdout).toBe('allowed\n');
    const denied = await gw.ssh('builder%box', ticket, ['id']);
    expect(denied.code).toBe(126);
    expect(denied.stderr).toContain('CC_ERR_POLICY_DENIED');
    expect(denied.stdout).toBe('');
    const forbidden = await gw.ssh('builder%box', ticket, ['cat', '/etc/shadow']);
    expect(forbidden.code).toBe(126);
    expect(forbidden.stderr).toContain('CC_ERR_POLICY_DENIED');
  });

  it('command-line smuggling is refused before policy: operators, substitution, newline', async () => {
    for (const line of [
      'echo ok; id',
      'echo ok && id',
      'echo $(id)',
      'echo `id`',
      'echo ok\nid',
      'echo ok | sh',
      'X=1 echo',
    ]) {
      const r = await gw.ssh('builder%box', ticket, [line]);
      expect(r.code, line).toBe(126);
      expect(r.stderr, line).toContain('CC_ERR_SSH_COMMAND_UNCLASSIFIED');
      expect(r.stdout, line).toBe('');
    }
  });

  it('a raw command line runs only where policy permits ssh:exec-raw for that exact line', async () => {
    const ok = await gw.ssh('builder%box', ticket, ['echo a && echo b']);
    expect(ok.stdout).toBe('a\nb\n');
    const other = await gw.ssh('builder%box', ticket, ['echo a && id']);
    expect(other.code).toBe(126);
    expect(other.stderr).toContain('CC_ERR_SSH_COMMAND_UNCLASSIFIED');
  });

  it('an approval-required command is held, then runs once approved; another line is not covered', async () => {
    const target = join(sshd.dir, 'approved-marker');
    const held = await gw.ssh('builder%box', ticket, ['touch', target]);
    expect(held.code).toBe(126);
    expect(held.stderr).toContain('CC_ERR_APPROVAL_REQUIRED');
    const id = /waiting for approval (apr_[0-9A-Za-z]+)/.exec(held.stderr)?.[1];
    expect(id).toBeDefined();
    expect(existsSync(target)).toBe(false);
    await gw.ctx.approvals.decide(id!, { approver, decision: 'approve' }, 'admin:test');
    const other = await gw.ssh('builder%box', ticket, ['touch', `${target}-other`]);
    expect(other.code).toBe(126);
    expect(existsSync(`${target}-other`)).toBe(false);
    const ran = await gw.ssh('builder%box', ticket, ['touch', target]);
    expect(ran.code).toBe(0);
    expect(existsSync(target)).toBe(true);
  });
});

describe('ssh: agent key login', { timeout: 120_000 }, () => {
  it("under a configured policy an agent's key logs in and the connection's credential is used", async () => {
    const { key } = await gw.createAgent('keyed');
    const r = await gw.ssh('keyed%boxcred', key, ['echo', 'by-key']);
    expect(r.stdout).toBe('by-key\n');
    // Another agent's key for this user name: refused.
    const other = await gw.createAgent('keyed2');
    const wrong = await gw.ssh('keyed%boxcred', other.key, ['echo', 'x']);
    expect(wrong.code).toBe(255);
    // A connection without a credential: a key does not open it.
    const none = await gw.ssh('keyed%box', key, ['echo', 'x']);
    expect(none.code).toBe(255);
    const text = await everyOutput(gw);
    expect(text).not.toContain(key);
    expect(text).not.toContain(other.key);
  });
});

describe('ssh: revocation and host keys', { timeout: 120_000 }, () => {
  function running(password: string, args: string[]) {
    let stderr = '';
    const started = Date.now();
    const child = execFile(
      'ssh',
      [...gw.clientOptions(), '-p', String(gw.port), '-l', 'builder%box', '127.0.0.1', ...args],
      { env: gw.clientEnv(password) },
    );
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise<{ code: number | null; ms: number }>((resolve) =>
      child.on('exit', (code) => resolve({ code, ms: Date.now() - started })),
    );
    return { exited, stderr: () => stderr };
  }

  /**
   * Until a connection opened since `before` (the live ones then) has its command decided:
   * a session of the previous test may still be closing, and must not count.
   */
  async function whenRunning(before: ReadonlySet<unknown>): Promise<void> {
    for (let i = 0; i < 400; i++) {
      await gw.ctx.audit.flush();
      for (const live of gw.frontend.live)
        if (!before.has(live) && live.session.events.some((e) => e.type === 'decision')) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('the command never started');
  }

  it('revoking the ticket ends a live session at once', async () => {
    const child = await gw.issue('box-key', builder, ['conn:box']);
    const before = new Set(gw.frontend.live);
    const run = running(child, ['sleep', '60']);
    await whenRunning(before);
    await new Promise((r) => setTimeout(r, 500));
    const revokedAt = Date.now();
    await gw.ctx.vault.revokeTicket(child, 'admin:test');
    const { code } = await run.exited;
    expect(Date.now() - revokedAt).toBeLessThan(15_000);
    expect(code).not.toBe(0);
    expect(run.stderr()).toContain('CC_ERR_TICKET_REVOKED');
  });

  it('revoking the agent ends its live session', async () => {
    const agent = (await gw.createAgent('shortlived')).ref;
    const t = await gw.issue('box-key', agent, ['conn:box']);
    let stderr = '';
    const before = new Set(gw.frontend.live);
    const child = execFile(
      'ssh',
      [...gw.clientOptions(), '-p', String(gw.port), '-l', 'shortlived%box', '127.0.0.1', 'sleep', '60'],
      { env: gw.clientEnv(t) },
    );
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    await whenRunning(before);
    await gw.ctx.agents.revoke('shortlived', 'admin:test');
    expect(await exited).not.toBe(0);
    expect(stderr).toContain('CC_ERR_AGENT_REVOKED');
  });

  it('an upstream with another host key than the pinned one is refused before any credential is sent', async () => {
    const t = await gw.issue('box-key', builder, ['conn:wrongkey']);
    const r = await gw.ssh('builder%wrongkey', t, ['echo', 'x']);
    expect(r.code).toBe(126);
    expect(r.stderr).toContain('CC_ERR_SSH_UPSTREAM_HOST_KEY');
    expect(r.stdout).toBe('');
  });

  it('nothing of the key, the tickets or the approvals leaks into logs, audit or recordings', async () => {
    const text = await everyOutput(gw);
    expect(text).not.toContain(sshd.clientKey.split('\n')[1]!);
    expect(text).not.toContain(ticket);
  });
});

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
 * The SSH front-end against a real OpenSSH server, driven by the real OpenSSH client:
 * the agent logs in as AGENT%CONNECTION with a ticket as the password; the gateway logs in
 * upstream with the key pair (root) or the password (a throwaway user) and never shows it.
 */
let sshd: ThrowawaySshd;
let gw: SshGateway;
let ticket: string;
let pwTicket: string;
let otherAgentTicket: string;
let builder: string;
const AWS_KEY = 'AKIAQYLPMN5HHHFPZAM2';

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway();
  builder = (await gw.createAgent('builder')).ref;
  const other = (await gw.createAgent('other')).ref;
  await gw.addSecret('box-key', sshd.clientKey, ['conn:box']);
  await gw.addSecret('box-password', sshd.password, ['conn:boxpw']);
  await gw.addConnection('box', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
  await gw.addConnection('boxpw', `ssh://${sshd.passwordUser}@127.0.0.1:${sshd.port}`, sshd.hostKey);
  ticket = await gw.issue('box-key', builder, ['conn:box']);
  pwTicket = await gw.issue('box-password', builder, ['conn:boxpw']);
  otherAgentTicket = await gw.issue('box-key', other, ['conn:box']);
}, 60_000);

afterAll(async () => {
  await gw?.close();
  sshd?.stop();
});

describe('ssh front-end: exec', { timeout: 120_000 }, () => {
  it('runs a command upstream with the key pair; output and exit status come back', async () => {
    const r = await gw.ssh('builder%box', ticket, ['echo', 'hello', "'two words'"]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('hello two words\n');
    expect(r.code).toBe(0);
    const fail = await gw.ssh('builder%box', ticket, ['sh', '-c', "'exit 7'"]);
    expect(fail.code).toBe(7);
  });

  it('keyboard-interactive carries the ticket too', async () => {
    const r = await gw.ssh('builder%box', ticket, ['echo', 'kbd'], {
      extra: ['-o', 'PreferredAuthentications=keyboard-interactive'],
    });
    expect(r.stdout).toBe('kbd\n');
  });

  it('logs in upstream with a password credential', async () => {
    const r = await gw.ssh('builder%boxpw', pwTicket, ['id', '-un']);
    expect(r.stdout.trim()).toBe(sshd.passwordUser);
    expect(r.code).toBe(0);
  });

  it('carries stdin to the command and EOF after it', async () => {
    const r = await gw.ssh('builder%box', ticket, ['wc', '-c'], { input: 'x'.repeat(100_000) });
    expect(r.stdout.trim()).toBe('100000');
  });

  it('stdout and stderr stay apart', async () => {
    const r = await gw.ssh('builder%box', ticket, ['ls', '/nonexistent-path-xyz']);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('nonexistent-path-xyz');
    expect(r.code).not.toBe(0);
  });

  it('a secret the server prints comes back as a ticket bound to the agent', async () => {
    const path = sshd.file('leak.txt', `key=${AWS_KEY}\nkey=${sshd.password}\n`);
    const r = await gw.ssh('builder%box', ticket, ['cat', path]);
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain(AWS_KEY);
    expect(r.stdout).not.toContain(sshd.password);
    const tickets = r.stdout.match(/cct_[0-9A-Za-z]{28}/g) ?? [];
    expect(tickets.length).toBe(2);
    for (const t of tickets) {
      const view = await gw.ctx.vault.inspectTicket(t);
      expect(view.principal).toBe(builder);
    }
  });
});

describe('ssh front-end: stderr and recordings', { timeout: 120_000 }, () => {
  it('a finding in stderr becomes a ticket too; the command line is kept cleaned in audit and recordings', async () => {
    const r = await gw.ssh('builder%box', ticket, ['ls', `/nonexistent/${AWS_KEY}`]);
    expect(r.stderr).not.toContain(AWS_KEY);
    expect(r.stderr).toMatch(/cct_[0-9A-Za-z]{28}/);
    await gw.settled();
    const execs = (await gw.ctx.store.readAudit(0, 100_000)).filter(
      (a) => a.type === 'ssh.channel' && (a.data as { kind: string }).kind === 'exec',
    );
    const last = execs.at(-1)!.data as { command: string; exitCode: number };
    expect(last.command).toContain('ls /nonexistent/');
    expect(last.command).not.toContain(AWS_KEY);
    expect(last.exitCode).not.toBe(0);
    const sessions = await gw.ctx.store.listSessions({ limit: 100 });
    const recorded = sessions.flatMap(
      (s) => (s.summary.events as { type: string; data: Record<string, unknown> }[]) ?? [],
    );
    const exec = recorded.find(
      (e) => e.type === 'exec' && String(e.data.command).startsWith('ls /nonexistent/'),
    );
    expect(exec).toBeDefined();
    expect(String(exec!.data.stderr)).toContain('[ticket]');
    expect(String(exec!.data.stderr)).not.toMatch(/cct_[0-9A-Za-z]{28}/);
  });
});

describe('ssh front-end: through the driver', { timeout: 120_000 }, () => {
  it('a secret written in two pieces back to back is still found', async () => {
    const r = await gw.ssh('builder%box', ticket, [
      'sh',
      '-c',
      `'printf ${AWS_KEY.slice(0, 9)}; printf ${AWS_KEY.slice(9)}'`,
    ]);
    expect(r.stdout).not.toContain(AWS_KEY);
    expect(r.stdout).toMatch(/^cct_[0-9A-Za-z]{28}$/);
  });

  it('sessions and exchanges are counted under frontend="ssh" in the one registry', async () => {
    await gw.settled();
    const text = await gw.ctx.metrics.metrics();
    expect(text).toMatch(/coatcheck_sessions_total\{frontend="ssh",outcome="ok"\} [1-9]/);
    expect(text).toMatch(
      /coatcheck_session_exchanges_total\{frontend="ssh",step="decision",outcome="allow"\} [1-9]/,
    );
  });
});

describe('ssh front-end: login refusals', { timeout: 120_000 }, () => {
  it('another agent’s ticket does not log in', async () => {
    const r = await gw.ssh('builder%box', otherAgentTicket, ['true']);
    expect(r.code).toBe(255);
    expect(r.stderr).toMatch(/Permission denied/);
  });

  it('a ticket for another connection does not log in', async () => {
    const r = await gw.ssh('builder%box', pwTicket, ['true']);
    expect(r.code).toBe(255);
    const again = await gw.ssh('builder%boxpw', ticket, ['true']);
    expect(again.code).toBe(255);
  });

  it('a user name without a connection, an unknown connection, a malformed ticket: refused and audited', async () => {
    for (const [user, password] of [
      ['builder', ticket],
      ['builder%nope', ticket],
      ['builder%box', 'not-a-ticket'],
      ['nobody%box', ticket],
      [`${ticket}%box`, ticket],
    ] as const) {
      const r = await gw.ssh(user, password, ['true']);
      expect(r.code).toBe(255);
    }
    await gw.settled();
    const refused = (await gw.ctx.store.readAudit(0, 100_000)).filter((r) => r.type === 'ssh.login.refused');
    expect(refused.length).toBeGreaterThanOrEqual(5);
    expect(JSON.stringify(refused)).not.toContain(ticket);
  });

  it('an agent key does not log in under the built-in policy', async () => {
    const { key } = await gw.createAgent('keyed');
    const r = await gw.ssh('keyed%box', key, ['true']);
    expect(r.code).toBe(255);
  });
});

describe('ssh front-end: requests never carried', { timeout: 120_000 }, () => {
  it('SendEnv/SetEnv, agent forwarding and X11 are refused; the command still runs without them', async () => {
    const r = await gw.ssh('builder%box', ticket, ['printenv', 'CC_SMUGGLED'], {
      extra: ['-o', 'SetEnv=CC_SMUGGLED=1', '-A', '-X'],
    });
    expect(r.stdout).toBe('');
    expect(r.code).not.toBe(0); // printenv: not set
    await gw.settled();
    const kinds = (await gw.ctx.store.readAudit(0, 100_000))
      .filter((a) => a.type === 'ssh.channel')
      .map((a) => (a.data as { kind: string }).kind);
    expect(kinds).toContain('env');
  });

  it('a remote forward (-R) is refused', async () => {
    const r = await gw.ssh('builder%box', ticket, ['true'], {
      extra: ['-R', '127.0.0.1:0:127.0.0.1:1', '-o', 'ExitOnForwardFailure=yes'],
    });
    expect(r.code).toBe(255);
  });
});

describe('ssh front-end: bounds', { timeout: 120_000 }, () => {
  it('three failed logins close the connection, whatever the client would try next', async () => {
    const r = await gw.ssh('builder%box', 'cct_notavalidticketatallxxxxxxxxxxx', ['true'], {
      extra: ['-o', 'NumberOfPasswordPrompts=10', '-o', 'PreferredAuthentications=password'],
    });
    expect(r.code).toBe(255);
    await gw.settled();
    const refusals = (await gw.ctx.store.readAudit(0, 100_000)).filter((a) => a.type === 'ssh.login.refused');
    const bySession = new Map<string, number>();
    for (const a of refusals) {
      const id = (a.data as { session: string }).session;
      bySession.set(id, (bySession.get(id) ?? 0) + 1);
    }
    expect(Math.max(...bySession.values())).toBeLessThanOrEqual(3);
  });

  it('channels beyond maxChannels on one connection are refused (OpenSSH multiplexing)', async () => {
    const small = await startSshGateway({ sshOptions: { maxChannels: 2 } });
    try {
      const agent = (await small.createAgent('builder')).ref;
      await small.addSecret('box-key', sshd.clientKey, ['conn:box']);
      await small.addConnection('box', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
      const t = await small.issue('box-key', agent, ['conn:box']);
      const control = join(small.dir, 'ctl');
      const master = await small.ssh('builder%box', t, [], {
        extra: ['-M', '-S', control, '-f', '-N', '-o', 'ControlPersist=60'],
      });
      expect(master.code).toBe(0);
      const results = await Promise.all(
        [1, 2, 3].map((i) =>
          small.ssh('builder%box', t, ['sleep', '3'], { extra: ['-S', control], input: String(i) }),
        ),
      );
      const refused = results.filter((r) => r.stderr.includes('CC_ERR_SSH_REQUEST_REFUSED'));
      expect(refused.length).toBe(1);
      expect(results.filter((r) => r.code === 0).length).toBe(2);
      await small.ssh('builder%box', t, [], { extra: ['-S', control, '-O', 'exit'] });
    } finally {
      await small.close();
    }
  });
});

describe('ssh front-end: canaries', { timeout: 120_000 }, () => {
  it('no credential, ticket or password appears in logs, audit or recordings', async () => {
    const text = await everyOutput(gw);
    const keyBody = sshd.clientKey.split('\n')[1]!;
    for (const canary of [keyBody, sshd.password, ticket, pwTicket, otherAgentTicket, AWS_KEY]) {
      expect(text).not.toContain(canary);
    }
  });
});

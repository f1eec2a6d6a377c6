import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalClient } from '../../../src/admin/client.js';
import { cli } from '../../helpers/cli.js';
import {
  everyOutput,
  type SshGateway,
  startSshGateway,
  startThrowawaySshd,
  type ThrowawaySshd,
} from './harness.js';

/**
 * Public-key login (ADR 0023): an agent logs in with an SSH key registered to it, using a
 * real OpenSSH client (`ssh -i KEY`). The key identifies the agent; the connection's
 * credential is released only through a live ticket the agent holds for it. Refused: an
 * unregistered key, another agent's key, a removed key, a forged signature, an agent
 * without a ticket. Removing the key, revoking the ticket or the agent ends live sessions.
 */
let sshd: ThrowawaySshd;
let gw: SshGateway;
let builder: string;
let other: string;
let noticket: string;
const keys: Record<string, string> = {};

function keygen(name: string, type = 'ed25519', bits?: number): string {
  const path = join(gw.dir, name);
  execFileSync('ssh-keygen', [
    '-q',
    '-t',
    type,
    ...(bits === undefined ? [] : ['-b', String(bits)]),
    '-N',
    '',
    '-f',
    path,
    '-C',
    `${name}@test`,
  ]);
  return path;
}

const pub = (path: string) => readFileSync(`${path}.pub`, 'utf8');

async function refusals(): Promise<{ code: string; reason: string; user: string }[]> {
  await gw.settled();
  return (await gw.ctx.store.readAudit(0, 1_000_000))
    .filter((a) => a.type === 'ssh.login.refused')
    .map((a) => a.data as { code: string; reason: string; user: string });
}

/** A key login running `args`, with its exit and stderr (for sessions that end while running). */
function running(user: string, key: string, args: string[]) {
  let stderr = '';
  const result = gw.sshKey(user, key, args, { timeoutMs: 60_000 }).then((r) => {
    stderr = r.stderr;
    return r;
  });
  return { result, stderr: () => stderr };
}

async function whenRunning(agentRef: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    for (const live of gw.frontend.live)
      if (live.session.principal?.ref === agentRef && live.session.events.some((e) => e.type === 'decision'))
        return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the command never started');
}

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway();
  builder = (await gw.createAgent('builder')).ref;
  other = (await gw.createAgent('other')).ref;
  noticket = (await gw.createAgent('noticket')).ref;
  await gw.addSecret('box-key', sshd.clientKey, ['conn:box', 'conn:nocred']);
  await gw.addConnection('box', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey, 'box-key');
  await gw.addConnection('nocred', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
  // The grants: tickets the agents hold for the connection's credential (never presented).
  await gw.issue('box-key', builder, ['conn:box']);
  await gw.issue('box-key', other, ['conn:box']);
  for (const name of ['builder', 'other', 'unregistered', 'noticket', 'removed']) keys[name] = keygen(name);
  await gw.ctx.agents.addSshKey('builder', pub(keys.builder!), 'admin:test');
  await gw.ctx.agents.addSshKey('other', pub(keys.other!), 'admin:test');
  await gw.ctx.agents.addSshKey('noticket', pub(keys.noticket!), 'admin:test');
}, 60_000);

afterAll(async () => {
  await gw?.close();
  sshd?.stop();
});

describe('ssh: public-key login', { timeout: 120_000 }, () => {
  it('an agent logs in with its registered key; the held ticket releases the credential', async () => {
    const r = await gw.sshKey('builder%box', keys.builder!, ['id', '-un']);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('root');
    expect(r.code).toBe(0);
    await gw.settled();
    const audit = await gw.ctx.store.readAudit(0, 1_000_000);
    const exchange = audit.filter((a) => a.type === 'token.exchange' && a.actor === builder).at(-1);
    expect(exchange).toBeDefined();
    const held = (await gw.ctx.vault.listTickets({ principal: builder }))[0]!;
    expect((exchange!.data as { ticket: string }).ticket).toBe(held.id);
  });

  it('an unregistered key is refused', async () => {
    const r = await gw.sshKey('builder%box', keys.unregistered!, ['id']);
    expect(r.code).toBe(255);
    expect(r.stderr).toContain('Permission denied');
    expect(r.stdout).toBe('');
    expect((await refusals()).at(-1)).toMatchObject({
      code: 'CC_ERR_SSH_LOGIN_FAILED',
      reason: 'CC_ERR_SSH_KEY_UNKNOWN',
      user: 'builder',
    });
  });

  it("another agent's key does not log in as this agent", async () => {
    const r = await gw.sshKey('builder%box', keys.other!, ['id']);
    expect(r.code).toBe(255);
    expect(r.stdout).toBe('');
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_UNKNOWN');
    // …while it does log in as its own agent.
    const own = await gw.sshKey('other%box', keys.other!, ['echo', 'mine']);
    expect(own.stdout).toBe('mine\n');
  });

  it('a key is registered to one agent only', async () => {
    await expect(gw.ctx.agents.addSshKey('builder', pub(keys.other!), 'admin:test')).rejects.toMatchObject({
      code: 'CC_ERR_ALREADY_EXISTS',
    });
  });

  it('an agent with a key but no ticket for the connection is refused', async () => {
    const r = await gw.sshKey('noticket%box', keys.noticket!, ['id']);
    expect(r.code).toBe(255);
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_NO_TICKET');
    // A ticket for another connection is not a grant for this one.
    await gw.issue('box-key', noticket, ['conn:nocred']);
    const again = await gw.sshKey('noticket%box', keys.noticket!, ['id']);
    expect(again.code).toBe(255);
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_NO_TICKET');
  });

  it('a connection without --credential has nothing for a key to release', async () => {
    const r = await gw.sshKey('builder%nocred', keys.builder!, ['id']);
    expect(r.code).toBe(255);
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_NO_TICKET');
  });

  it('a forged signature over the registered public key is refused (hostile client)', async () => {
    const parsed = ssh2.utils.parseKey(pub(keys.builder!));
    if (parsed instanceof Error) throw parsed;
    class ForgingAgent extends ssh2.BaseAgent {
      override getIdentities(cb: (err: Error | undefined, keys: ssh2.ParsedKey[]) => void) {
        cb(undefined, [parsed as ssh2.ParsedKey]);
      }
      override sign(_key: unknown, data: Buffer, ...rest: unknown[]) {
        const cb = rest.at(-1) as (err: Error | undefined, sig: Buffer) => void;
        cb(undefined, Buffer.alloc(64, data[0] ?? 1));
      }
    }
    const outcome = await new Promise<string>((resolve) => {
      const client = new ssh2.Client();
      client.on('ready', () => {
        client.end();
        resolve('ready');
      });
      client.on('error', (error: Error & { level?: string }) => resolve(error.level ?? error.message));
      client.connect({
        host: '127.0.0.1',
        port: gw.port,
        username: 'builder%box',
        agent: new ForgingAgent(),
        hostVerifier: () => true,
        readyTimeout: 20_000,
      });
    });
    expect(outcome).toBe('client-authentication');
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_UNKNOWN');
  });

  it('registration refuses a private key (without echoing it), several keys, options, weak RSA', async () => {
    const privateText = readFileSync(keys.unregistered!, 'utf8');
    const err = await gw.ctx.agents.addSshKey('builder', privateText, 'admin:test').catch((e: Error) => e);
    expect(err).toMatchObject({ code: 'CC_ERR_SSH_KEY_INVALID' });
    expect(JSON.stringify(err) + String((err as Error).message)).not.toContain(privateText.split('\n')[1]!);
    const two = pub(keys.unregistered!) + pub(keys.removed!);
    await expect(gw.ctx.agents.addSshKey('builder', two, 'admin:test')).rejects.toMatchObject({
      code: 'CC_ERR_SSH_KEY_INVALID',
    });
    await expect(
      gw.ctx.agents.addSshKey('builder', `command="id" ${pub(keys.unregistered!)}`, 'admin:test'),
    ).rejects.toMatchObject({ code: 'CC_ERR_SSH_KEY_INVALID' });
    const [type, data] = pub(keys.unregistered!).split(' ');
    // A truncated key blob, and an ed25519 blob claiming to be RSA.
    const cut = Buffer.from(data!, 'base64').subarray(0, -4).toString('base64');
    for (const line of [`${type} ${cut}`, `ssh-rsa ${data}`, `${type} not*base64`]) {
      await expect(gw.ctx.agents.addSshKey('builder', line, 'admin:test')).rejects.toMatchObject({
        code: 'CC_ERR_SSH_KEY_INVALID',
      });
    }
    const weak = keygen('weak', 'rsa', 1024);
    await expect(gw.ctx.agents.addSshKey('builder', pub(weak), 'admin:test')).rejects.toMatchObject({
      code: 'CC_ERR_SSH_KEY_INVALID',
    });
  });

  it('add, list and remove through the admin operations; a removed key no longer logs in', async () => {
    const client = createLocalClient(gw.ctx, 'admin:test');
    const added = (await client.call('agentSshKeyAdd', {
      name: 'builder',
      publicKey: pub(keys.removed!),
    })) as { fingerprint: string; id: string };
    expect(added.fingerprint).toBe(
      execFileSync('ssh-keygen', ['-lf', `${keys.removed!}.pub`], { encoding: 'utf8' }).split(' ')[1],
    );
    const listed = (await client.call('agentSshKeyList', { name: 'builder' })) as { fingerprint: string }[];
    expect(listed.map((k) => k.fingerprint)).toContain(added.fingerprint);
    expect((await gw.sshKey('builder%box', keys.removed!, ['echo', 'ok'])).stdout).toBe('ok\n');
    await client.call('agentSshKeyRemove', { name: 'builder', key: added.fingerprint });
    const r = await gw.sshKey('builder%box', keys.removed!, ['echo', 'ok']);
    expect(r.code).toBe(255);
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_UNKNOWN');
    await gw.settled();
    const audit = await gw.ctx.store.readAudit(0, 1_000_000);
    expect(audit.some((a) => a.type === 'agent.sshkey.add' && a.data.fingerprint === added.fingerprint)).toBe(
      true,
    );
    expect(
      audit.some((a) => a.type === 'agent.sshkey.remove' && a.data.fingerprint === added.fingerprint),
    ).toBe(true);
  });

  it('removing the key ends a live session that logged in with it', async () => {
    const key = keygen('live-removed');
    const view = await gw.ctx.agents.addSshKey('builder', pub(key), 'admin:test');
    const run = running('builder%box', key, ['sleep', '60']);
    await whenRunning(builder);
    await new Promise((r) => setTimeout(r, 300));
    const at = Date.now();
    await gw.ctx.agents.removeSshKey('builder', view.fingerprint, 'admin:test');
    const r = await run.result;
    expect(Date.now() - at).toBeLessThan(15_000);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('CC_ERR_SSH_KEY_REMOVED');
  });

  it('revoking the held ticket ends a live key session, and the key alone then opens nothing', async () => {
    const holder = (await gw.createAgent('holder')).ref;
    const ticket = await gw.issue('box-key', holder, ['conn:box']);
    const key = keygen('holder');
    await gw.ctx.agents.addSshKey('holder', pub(key), 'admin:test');
    const run = running('holder%box', key, ['sleep', '60']);
    await whenRunning(holder);
    await new Promise((r) => setTimeout(r, 300));
    await gw.ctx.vault.revokeTicket(ticket, 'admin:test');
    const r = await run.result;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('CC_ERR_TICKET_REVOKED');
    const after = await gw.sshKey('holder%box', key, ['id']);
    expect(after.code).toBe(255);
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_NO_TICKET');
  });

  it('revoking the agent ends its live key session; its key then logs in no more', async () => {
    const doomed = (await gw.createAgent('doomed')).ref;
    await gw.issue('box-key', doomed, ['conn:box']);
    const key = keygen('doomed');
    await gw.ctx.agents.addSshKey('doomed', pub(key), 'admin:test');
    const run = running('doomed%box', key, ['sleep', '60']);
    await whenRunning(doomed);
    await new Promise((r) => setTimeout(r, 300));
    await gw.ctx.agents.revoke('doomed', 'admin:test');
    const r = await run.result;
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('CC_ERR_AGENT_REVOKED');
    expect((await gw.sshKey('doomed%box', key, ['id'])).code).toBe(255);
  });

  it('a held ticket with no use left, or for another secret, is no grant', async () => {
    const spent = (await gw.createAgent('spent')).ref;
    const key = keygen('spent');
    await gw.ctx.agents.addSshKey('spent', pub(key), 'admin:test');
    await gw.ctx.vault.issueTicket(
      { secret: 'box-key', principal: spent, destinations: ['conn:box'], maxUses: 1 },
      'admin:test',
    );
    // Another secret that may go to the connection, held by the agent: not the connection's credential.
    await gw.addSecret('decoy', 'decoy-value-not-a-key-0123456789', ['conn:box']);
    await gw.issue('decoy', spent, ['conn:box']);
    expect((await gw.sshKey('spent%box', key, ['echo', 'once'])).stdout).toBe('once\n');
    const again = await gw.sshKey('spent%box', key, ['echo', 'twice']);
    expect(again.code).toBe(255);
    expect((await refusals()).at(-1)?.reason).toBe('CC_ERR_SSH_KEY_NO_TICKET');
  });

  it('the CLI adds, lists and removes keys; a private key file is refused without being echoed', async () => {
    const key = keygen('cli');
    const run = (args: string[]) => cli(['--dir', gw.dir, ...args]);
    const added = await run(['agent', 'add-ssh-key', 'other', `${key}.pub`]);
    expect(added.code).toBe(0);
    const fp = execFileSync('ssh-keygen', ['-lf', `${key}.pub`], { encoding: 'utf8' }).split(' ')[1]!;
    expect(added.stdout).toContain(fp);
    expect((await run(['agent', 'list-ssh-keys', 'other'])).stdout).toContain(fp);
    const refused = await run(['agent', 'add-ssh-key', 'other', key]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('CC_ERR_SSH_KEY_INVALID');
    const secretLine = readFileSync(key, 'utf8').split('\n')[1]!;
    expect(refused.stdout + refused.stderr).not.toContain(secretLine);
    expect((await run(['agent', 'remove-ssh-key', 'other', fp])).code).toBe(0);
    expect((await run(['agent', 'list-ssh-keys', 'other'])).stdout).not.toContain(fp);
    expect((await run(['agent', 'list-ssh-keys', 'other', '--all'])).stdout).toContain(fp);
    expect((await run(['agent', 'add-ssh-key', 'nobody', `${key}.pub`])).stderr).toContain(
      'CC_ERR_AGENT_UNKNOWN',
    );
  });

  it('nothing of the upstream key or the agents private keys leaks into logs, audit or recordings', async () => {
    const text = await everyOutput(gw);
    expect(text).not.toContain(sshd.clientKey.split('\n')[1]!);
    expect(text).not.toContain(readFileSync(keys.builder!, 'utf8').split('\n')[1]!);
  });
});

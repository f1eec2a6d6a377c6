import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLocalClient } from '../../../src/admin/client.js';
import { firstUseMetaKey } from '../../../src/frontends/ssh/upstream.js';
import {
  everyOutput,
  type SshGateway,
  startSshGateway,
  startThrowawaySshd,
  type ThrowawaySshd,
} from './harness.js';

/**
 * Trust on first use of the upstream's host key (`--host-key tofu`, ADR 0023): the first
 * connection records the key the server presents (audited), later connections must see
 * the same key; a server whose key changed is refused before any credential is sent.
 */
let sshd: ThrowawaySshd;
let gw: SshGateway;
let ticket: string;
let builder: string;

function fingerprint(dir: string, name: string): string {
  return execFileSync('ssh-keygen', ['-lf', join(dir, `${name}.pub`)], { encoding: 'utf8' }).split(' ')[1]!;
}

async function trusted() {
  await gw.settled();
  return (await gw.ctx.store.readAudit(0, 1_000_000)).filter((a) => a.type === 'ssh.hostkey.trusted');
}

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway();
  builder = (await gw.createAgent('builder')).ref;
  await gw.addSecret('box-key', sshd.clientKey, ['conn:tofu', 'conn:race']);
  await gw.addConnection('tofu', `ssh://root@127.0.0.1:${sshd.port}`, 'tofu');
  await gw.addConnection('race', `ssh://root@127.0.0.1:${sshd.port}`, 'tofu');
  ticket = await gw.issue('box-key', builder, ['conn:tofu', 'conn:race']);
}, 60_000);

afterAll(async () => {
  await gw?.close();
  sshd?.stop();
});

describe('ssh: trust on first use of the upstream host key', { timeout: 120_000 }, () => {
  it('the first connection pins the key the server presents, and audits it', async () => {
    expect(await trusted()).toEqual([]);
    const r = await gw.ssh('builder%tofu', ticket, ['echo', 'first']);
    expect(r.stdout).toBe('first\n');
    const events = await trusted();
    expect(events).toHaveLength(1);
    expect(events[0]!.actor).toBe(builder);
    expect(events[0]!.data).toMatchObject({
      connection: 'tofu',
      host: '127.0.0.1',
      port: sshd.port,
      keyType: 'ssh-ed25519',
      fingerprint: fingerprint(sshd.dir, 'host'),
    });
    const pin = await gw.ctx.store.getMeta(firstUseMetaKey('tofu', { host: '127.0.0.1', port: sshd.port }));
    expect(pin).toBe(sshd.hostKey);
  });

  it('later connections with the same key pass without a new record', async () => {
    const r = await gw.ssh('builder%tofu', ticket, ['echo', 'again']);
    expect(r.stdout).toBe('again\n');
    expect(await trusted()).toHaveLength(1);
  });

  it('connections racing to be first record one key once, and all pass', async () => {
    const runs = await Promise.all(
      [1, 2, 3, 4].map((n) => gw.ssh('builder%race', ticket, ['echo', String(n)])),
    );
    expect(runs.map((r) => r.stdout)).toEqual(['1\n', '2\n', '3\n', '4\n']);
    expect((await trusted()).filter((e) => e.data.connection === 'race')).toHaveLength(1);
  });

  it('a server that now presents another key is refused with a stable code, nothing run', async () => {
    const before = sshd.hostKey;
    await sshd.rekey();
    expect(sshd.hostKey).not.toBe(before);
    const path = sshd.file('tofu-marker', '');
    const r = await gw.ssh('builder%tofu', ticket, ['rm', path]);
    expect(r.code).toBe(126);
    expect(r.stderr).toContain('CC_ERR_SSH_UPSTREAM_HOST_KEY');
    expect(r.stderr).toContain('trusted on first use');
    expect(r.stdout).toBe('');
    execFileSync('test', ['-e', path]);
    // The pin did not move, and no new key was recorded.
    const pin = await gw.ctx.store.getMeta(firstUseMetaKey('tofu', { host: '127.0.0.1', port: sshd.port }));
    expect(pin).toBe(before);
    expect((await trusted()).filter((e) => e.data.connection === 'tofu')).toHaveLength(1);
    await gw.settled();
    const upstream = (await gw.ctx.store.readAudit(0, 1_000_000)).filter(
      (a) => a.type === 'ssh.channel' && a.data.kind === 'upstream',
    );
    expect(upstream.at(-1)?.data.outcome).toBe('CC_ERR_SSH_UPSTREAM_HOST_KEY');
  });

  it('an operator who checked the new key out of band pins it explicitly', async () => {
    await gw.ctx.connections.remove('tofu', 'admin:test');
    await gw.addConnection('tofu', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
    const r = await gw.ssh('builder%tofu', ticket, ['echo', 'pinned']);
    expect(r.stdout).toBe('pinned\n');
  });

  it('--host-key takes only a key line, a SHA256 fingerprint or tofu', async () => {
    // Through the admin operation (the CLI's and the API's path), which validates the rules.
    const client = createLocalClient(gw.ctx, 'admin:test');
    const add = (hostKey: string) =>
      client.call('connectionAdd', {
        name: 'bad',
        type: 'ssh',
        url: `ssh://root@127.0.0.1:${sshd.port}`,
        rules: { hostKey },
      });
    for (const bad of ['TOFU', 'tofu ', 'trust', 'tofu ssh-ed25519 AAAA', '']) {
      await expect(add(bad)).rejects.toMatchObject({ code: 'CC_ERR_INVALID_ARGUMENT' });
    }
    await add('tofu');
    await client.call('connectionRemove', { name: 'bad' });
  });

  it('no secret or ticket in logs, audit or recordings', async () => {
    const text = await everyOutput(gw);
    expect(text).not.toContain(sshd.clientKey.split('\n')[1]!);
    expect(text).not.toContain(ticket);
  });
});

import { chmodSync, existsSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { rotateMasterKey } from '../../src/admin/rotate.js';
import { initHome } from '../../src/server/context.js';
import { MasterKey } from '../../src/vault/envelope.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// No command may overwrite or replace key material that data depends on: init in a home
// that has data but lost its config file must refuse before it writes anything.
const CANARY = 'canary-init-Zq7Lm2Xw9Rt';

async function homeWithSecret(env: NodeJS.ProcessEnv = {}): Promise<TestHome> {
  const t = await makeTestHome(env);
  const ctx = await t.open();
  await ctx.vault.addSecret({ name: 's1', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
  await ctx.close();
  return t;
}

async function secretStillReadable(t: TestHome, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const ctx = await t.open({ env });
  try {
    const agent = await ctx.agents.create({ name: 'reader' }, 'admin:test');
    const principal = await ctx.agents.authenticate(agent.key);
    const { ticket } = await ctx.vault.issueTicket({ secret: 's1', principal: principal.ref }, 'admin:test');
    const released = await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } });
    expect(released.value.revealText()).toBe(CANARY);
  } finally {
    await ctx.close();
  }
}

describe('init never destroys key material', () => {
  let t: TestHome;
  afterEach(() => t?.remove());

  describe('a home with data whose config file is gone', () => {
    let keyBefore: Buffer;
    let adminBefore: Buffer;
    let config: string;
    beforeEach(async () => {
      t = await homeWithSecret();
      keyBefore = readFileSync(t.home.masterKeyFile);
      adminBefore = readFileSync(t.home.adminKeyFile);
      config = readFileSync(t.home.configFile, 'utf8');
      unlinkSync(t.home.configFile);
    });

    it('init refuses with CC_ERR_HOME_EXISTS and leaves master.key and admin.key as they were', async () => {
      await expect(initHome(t.home, { env: {} })).rejects.toMatchObject({ code: 'CC_ERR_HOME_EXISTS' });
      expect(readFileSync(t.home.masterKeyFile).equals(keyBefore)).toBe(true);
      expect(readFileSync(t.home.adminKeyFile).equals(adminBefore)).toBe(true);
      expect(existsSync(t.home.configFile)).toBe(false);
      writeFileSync(t.home.configFile, config, { mode: 0o600 });
      await secretStillReadable(t);
    });

    it('the CLI `init` and `serve --init` refuse the same way, naming the key files', async () => {
      const init = await cli(['init', '--dir', t.home.dir]);
      expect(init.code).not.toBe(0);
      expect(init.stderr).toContain('CC_ERR_HOME_EXISTS');
      expect(init.stderr).toContain('master.key');
      const serve = await cli(['serve', '--init', '--dir', t.home.dir, '--listen-http', '127.0.0.1:0']);
      expect(serve.code).not.toBe(0);
      expect(serve.stderr).toContain('CC_ERR_HOME_EXISTS');
      expect(readFileSync(t.home.masterKeyFile).equals(keyBefore)).toBe(true);
      writeFileSync(t.home.configFile, config, { mode: 0o600 });
      await secretStillReadable(t);
    });

    it('the master key file lost too: init still refuses, because the store is initialized', async () => {
      renameSync(t.home.masterKeyFile, join(t.dir, 'saved.key'));
      unlinkSync(t.home.adminKeyFile);
      await expect(initHome(t.home, { env: {} })).rejects.toMatchObject({ code: 'CC_ERR_HOME_EXISTS' });
      // Nothing new was written: no key file was created for a store sealed under another key.
      expect(existsSync(t.home.masterKeyFile)).toBe(false);
      expect(existsSync(t.home.adminKeyFile)).toBe(false);
      renameSync(join(t.dir, 'saved.key'), t.home.masterKeyFile);
      writeFileSync(t.home.configFile, config, { mode: 0o600 });
      await secretStillReadable(t);
    });

    it('only a pending master.key.next left: init refuses and keeps it', async () => {
      const next = join(t.home.dir, 'master.key.next');
      renameSync(t.home.masterKeyFile, next);
      unlinkSync(t.home.adminKeyFile);
      await expect(initHome(t.home, { env: {} })).rejects.toMatchObject({ code: 'CC_ERR_HOME_EXISTS' });
      expect(readFileSync(next).equals(keyBefore)).toBe(true);
      expect(existsSync(t.home.masterKeyFile)).toBe(false);
    });
  });

  it('with the master key in the environment and the config gone, init refuses before touching the store', async () => {
    const env = { COATCHECK_MASTER_KEY: MasterKey.generate().toBase64() };
    t = await homeWithSecret(env);
    unlinkSync(t.home.configFile);
    unlinkSync(t.home.adminKeyFile);
    await expect(initHome(t.home, { env })).rejects.toMatchObject({ code: 'CC_ERR_HOME_EXISTS' });
    // Even another key from the environment does not re-initialize the store.
    await expect(
      initHome(t.home, { env: { COATCHECK_MASTER_KEY: MasterKey.generate().toBase64() } }),
    ).rejects.toMatchObject({ code: 'CC_ERR_HOME_EXISTS' });
    expect(existsSync(t.home.masterKeyFile)).toBe(false);
  });

  it('a rotation never overwrites or deletes a key file (master.key, a leftover master.key.next)', async () => {
    t = await homeWithSecret();
    const next = join(t.home.dir, 'master.key.next');
    const ctx = await t.open();
    try {
      const planted = `${MasterKey.generate().toBase64()}\n`;
      writeFileSync(next, planted, { mode: 0o600 });
      chmodSync(next, 0o600);
      const master = readFileSync(t.home.masterKeyFile, 'utf8');
      const result = await rotateMasterKey(ctx, 'admin:test');
      expect(result.phase).toBe('retired');
      expect(readFileSync(next, 'utf8')).toBe(planted);
      expect(readFileSync(t.home.masterKeyFile, 'utf8')).toBe(master);
      expect(existsSync(result.keyFile)).toBe(true);
    } finally {
      await ctx.close();
    }
  });

  it('a fresh home still initializes, and a second init is refused', async () => {
    t = await makeTestHome();
    expect(readFileSync(t.home.masterKeyFile, 'utf8').trim()).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    await expect(initHome(t.home, { env: {} })).rejects.toMatchObject({ code: 'CC_ERR_HOME_EXISTS' });
  });
});

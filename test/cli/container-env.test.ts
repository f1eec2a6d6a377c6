import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { request } from 'undici';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { resolveHome } from '../../src/config/home.js';
import { parseConfig } from '../../src/config/load-config.js';
import { initHome, openContext } from '../../src/server/context.js';
import { cli, spawnCli, waitForLine } from '../helpers/cli.js';

/**
 * Config from the environment, as a container gets it (issue 15): listeners, the master
 * key from a file outside the home, the admin key from a secret, and a read-only config
 * file outside the home that every replica of a deployment shares.
 */
const newMasterKey = () => randomBytes(32).toString('base64');
const newAdminKey = () => `cck_${randomBytes(32).toString('base64url')}`;

describe('listeners from the environment', () => {
  it('COATCHECK_LISTEN_* override listen.*; off turns a front-end off; the flags of serve still win', async () => {
    const config = await parseConfig('listen:\n  http: 127.0.0.1:7080\n  ssh: 127.0.0.1:7022\n', 'c.yaml', {
      COATCHECK_LISTEN_ADMIN: '0.0.0.0:7070',
      COATCHECK_LISTEN_POSTGRES: '0.0.0.0:7432',
      COATCHECK_LISTEN_PROXY: '[::]:7090',
      COATCHECK_LISTEN_KUBERNETES: 'gateway.internal:7443',
      COATCHECK_LISTEN_SSH: 'off',
      COATCHECK_LISTEN_RELAY: '0.0.0.0:7444',
    });
    expect(config.listen).toEqual({
      admin: '0.0.0.0:7070',
      http: '127.0.0.1:7080',
      postgres: '0.0.0.0:7432',
      proxy: '[::]:7090',
      kubernetes: 'gateway.internal:7443',
      ssh: null,
      relay: '0.0.0.0:7444',
      acceptors: 4,
    });
  });

  it('a malformed value is refused with CC_ERR_CONFIG_INVALID naming the variable; the admin listener cannot be off', async () => {
    for (const [name, value] of [
      ['COATCHECK_LISTEN_HTTP', '7080'],
      ['COATCHECK_LISTEN_HTTP', '0.0.0.0:70800'],
      ['COATCHECK_LISTEN_HTTP', 'a b:1'],
      ['COATCHECK_LISTEN_POSTGRES', `${'a'.repeat(400)}:1`],
      ['COATCHECK_LISTEN_ADMIN', 'off'],
      ['COATCHECK_LISTEN_SSH', '0.0.0.0:22\n'],
    ] as const) {
      let caught: unknown;
      try {
        await parseConfig('', 'c.yaml', { [name]: value });
      } catch (error) {
        caught = error;
      }
      expect({ name, value, caught }).toMatchObject({
        name,
        caught: { code: 'CC_ERR_CONFIG_INVALID', details: { file: name } },
      });
    }
  });
});

describe('keys from the environment', () => {
  let dir: string;
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('COATCHECK_MASTER_KEY_FILE: init writes no master.key; the home opens with the file; the key is in no output', async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-env-'));
    const key = newMasterKey();
    const keyFile = join(dir, 'secret-master.key');
    writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
    const env = { COATCHECK_HOME: join(dir, 'home'), COATCHECK_MASTER_KEY_FILE: keyFile };
    const init = await cli(['init', '--json'], { env });
    expect(init.code).toBe(0);
    expect(JSON.parse(init.stdout).masterKey).toBe(`COATCHECK_MASTER_KEY_FILE (${keyFile})`);
    expect(readdirSync(join(dir, 'home')).sort()).toEqual(['admin.key', 'coatcheck.db', 'coatcheck.yaml']);
    const added = await cli(['secret', 'add', 's', '--allow', 'example.com'], { env, stdin: 'v' });
    expect(added.code).toBe(0);
    // Without the file the vault does not open; with COATCHECK_MASTER_KEY holding the same key it does.
    const without = await cli(['secret', 'list'], { env: { COATCHECK_HOME: env.COATCHECK_HOME } });
    expect(without.stderr).toContain('CC_ERR_MASTER_KEY_MISSING');
    const same = await cli(['secret', 'list'], {
      env: { COATCHECK_HOME: env.COATCHECK_HOME, COATCHECK_MASTER_KEY: key },
    });
    expect(same.code).toBe(0);
    for (const out of [init, added, without, same]) expect(out.stdout + out.stderr).not.toContain(key);
  });

  it('COATCHECK_MASTER_KEY_FILE is refused when readable by others, missing, not a key, too large, or set beside COATCHECK_MASTER_KEY', async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-env-'));
    const keyFile = join(dir, 'm.key');
    const big = join(dir, 'big.key');
    writeFileSync(big, 'A'.repeat(10_000), { mode: 0o600 });
    const cases: Array<[NodeJS.ProcessEnv, string, () => void]> = [
      [{ COATCHECK_MASTER_KEY_FILE: keyFile }, 'CC_ERR_MASTER_KEY_INVALID', () => chmodSync(keyFile, 0o644)],
      [{ COATCHECK_MASTER_KEY_FILE: join(dir, 'absent.key') }, 'CC_ERR_MASTER_KEY_MISSING', () => undefined],
      [{ COATCHECK_MASTER_KEY_FILE: big }, 'CC_ERR_MASTER_KEY_INVALID', () => undefined],
      [{ COATCHECK_MASTER_KEY_FILE: dir }, 'CC_ERR_MASTER_KEY_INVALID', () => undefined],
      [
        { COATCHECK_MASTER_KEY_FILE: keyFile, COATCHECK_MASTER_KEY: newMasterKey() },
        'CC_ERR_MASTER_KEY_INVALID',
        () => undefined,
      ],
    ];
    for (const [index, [env, code, prepare]] of cases.entries()) {
      writeFileSync(keyFile, `${newMasterKey()}\n`, { mode: 0o600 });
      chmodSync(keyFile, 0o600);
      prepare();
      const home = resolveHome(join(dir, `home${index}`), {});
      await expect(initHome(home, { env })).rejects.toMatchObject({ code });
      // Nothing was left behind: init can be run again once the key is right.
      expect(existsSync(home.configFile)).toBe(false);
      expect(existsSync(home.adminKeyFile)).toBe(false);
    }
  });

  it('COATCHECK_ADMIN_KEY at init: no admin.key file; the admin API accepts that key and no other', async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-env-'));
    const adminKey = newAdminKey();
    const env = {
      COATCHECK_HOME: join(dir, 'home'),
      COATCHECK_MASTER_KEY: newMasterKey(),
      COATCHECK_ADMIN_KEY: adminKey,
    };
    const init = await cli(['init', '--json'], { env });
    expect(init.code).toBe(0);
    expect(JSON.parse(init.stdout).adminKeyFile).toBe('COATCHECK_ADMIN_KEY');
    expect(readdirSync(env.COATCHECK_HOME).sort()).toEqual(['coatcheck.db', 'coatcheck.yaml']);
    expect(init.stdout + init.stderr).not.toContain(adminKey);
    const server = spawnCli(['serve', '--listen-admin', '127.0.0.1:0'], env);
    try {
      const [, url] = await waitForLine(server, /admin API\s+(http:\/\/127\.0\.0\.1:\d+)/);
      const status = async (key: string) => {
        const res = await request(`${url}/v1/status`, { headers: { authorization: `Bearer ${key}` } });
        await res.body.dump();
        return res.statusCode;
      };
      expect(await status(adminKey)).toBe(200);
      expect(await status(newAdminKey())).toBe(401);
      // The CLI presents the same variable.
      const listed = await cli(['agent', 'list'], { env });
      expect(listed.code).toBe(0);
    } finally {
      server.kill('SIGTERM');
      await new Promise((r) => server.once('exit', r));
    }
  }, 60_000);

  it('a malformed COATCHECK_ADMIN_KEY is refused before anything is written', async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-env-'));
    for (const bad of [
      'short',
      'cck_tooshort',
      `xyz_${randomBytes(32).toString('base64url')}`,
      `cck_${'a'.repeat(200)}`,
      `cck_${randomBytes(32).toString('base64')}`,
    ]) {
      const home = resolveHome(join(dir, 'home'), {});
      await expect(
        initHome(home, { env: { COATCHECK_MASTER_KEY: newMasterKey(), COATCHECK_ADMIN_KEY: bad } }),
      ).rejects.toMatchObject({ code: 'CC_ERR_CONFIG_INVALID' });
      expect(existsSync(home.dir)).toBe(false);
    }
  });
});

describe('COATCHECK_CONFIG: a read-only config outside the home', () => {
  const ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
  const database = `cc_env_${randomBytes(4).toString('hex')}`;
  let dir: string;
  afterAll(async () => {
    const client = new Client({ connectionString: ADMIN_URL });
    await client.connect();
    await client.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await client.end();
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('SQLite: init reads it and writes none; serve --init inits once, then starts on the initialized store', async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-env-'));
    const config = join(dir, 'etc', 'coatcheck.yaml');
    mkdirSync(join(dir, 'etc'));
    writeFileSync(config, 'log:\n  level: warn\nshutdown:\n  drainTimeout: 1s\n');
    chmodSync(config, 0o444);
    const env = {
      COATCHECK_HOME: join(dir, 'home'),
      COATCHECK_CONFIG: config,
      COATCHECK_MASTER_KEY: newMasterKey(),
      COATCHECK_ADMIN_KEY: newAdminKey(),
      COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
    };
    for (let start = 0; start < 2; start++) {
      const server = spawnCli(['serve', '--init', '--json'], env);
      let err = '';
      server.stderr.on('data', (c: Buffer) => {
        err += c.toString('utf8');
      });
      const [line] = await waitForLine(server, /\{.*"admin".*\}\n/);
      const listening = JSON.parse(line) as { admin: string };
      const ready = await request(`${listening.admin}/readyz`);
      expect(ready.statusCode).toBe(200);
      await ready.body.dump();
      server.kill('SIGTERM');
      expect(await new Promise((r) => server.once('exit', r))).toBe(0);
      // The first start initialized the home; the second found it initialized.
      expect(err.includes('initialized coatcheck home')).toBe(start === 0);
    }
    expect(readdirSync(env.COATCHECK_HOME).sort()).toEqual(['coatcheck.db']);
  }, 60_000);

  it('PostgreSQL: two replicas with their own empty homes start with serve --init on one database; one initializes it, both serve', async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-env-'));
    const client = new Client({ connectionString: ADMIN_URL });
    await client.connect();
    await client.query(`CREATE DATABASE ${database}`);
    await client.end();
    const config = join(dir, 'coatcheck.yaml');
    writeFileSync(config, 'store:\n  driver: postgres\nlog:\n  level: warn\n');
    chmodSync(config, 0o444);
    const adminKey = newAdminKey();
    const shared = {
      COATCHECK_CONFIG: config,
      COATCHECK_DATABASE_URL: `postgres://postgres@127.0.0.1:5432/${database}`,
      COATCHECK_MASTER_KEY: newMasterKey(),
      COATCHECK_ADMIN_KEY: adminKey,
      COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
    };
    const starts = [0, 1].map(async (i) => {
      const env = { ...shared, COATCHECK_HOME: join(dir, `replica${i}`) };
      // A replica that lost the race to initialize may stop on a store still being
      // initialized; an orchestrator restarts it, with a pause. Give each replica five starts.
      let why = '';
      for (let attempt = 0; attempt < 5; attempt++) {
        const server = spawnCli(['serve', '--init', '--json'], env);
        let stderr = '';
        server.stderr.on('data', (chunk: Buffer) => {
          stderr += chunk.toString('utf8');
        });
        try {
          const [line] = await waitForLine(server, /\{.*"admin".*\}\n/);
          return { server, admin: (JSON.parse(line) as { admin: string }).admin };
        } catch {
          // exited before listening: start again, after the pause a restart policy would make
          why = stderr.slice(-600);
          await new Promise((r) => setTimeout(r, 1_000));
        }
      }
      throw new Error(`replica ${i} did not start; its last start said: ${why}`);
    });
    const replicas = await Promise.all(starts);
    try {
      for (const { admin } of replicas) {
        const ready = await request(`${admin}/readyz`);
        expect(ready.statusCode).toBe(200);
        await ready.body.dump();
        const status = await request(`${admin}/v1/status`, {
          headers: { authorization: `Bearer ${adminKey}` },
        });
        expect(status.statusCode).toBe(200);
        await status.body.dump();
      }
      // One home.init record: the store was initialized once.
      const db = new Client({ connectionString: shared.COATCHECK_DATABASE_URL });
      await db.connect();
      const inits = await db.query("SELECT count(*)::int AS n FROM audit WHERE type = 'home.init'");
      await db.end();
      expect(inits.rows[0].n).toBe(1);
      // A replica added later (a scale-up) finds the store initialized and does not init: its
      // home directory does not exist yet, and it still starts (it once stopped with ENOENT on
      // its server file, every restart, whenever it lost the race above).
      const later = spawnCli(['serve', '--init', '--json'], {
        ...shared,
        COATCHECK_HOME: join(dir, 'replica2'),
      });
      try {
        const [line] = await waitForLine(later, /\{.*"admin".*\}\n/);
        const ready = await request(`${(JSON.parse(line) as { admin: string }).admin}/readyz`);
        expect(ready.statusCode).toBe(200);
        await ready.body.dump();
      } finally {
        later.kill('SIGTERM');
        await new Promise((r) => later.once('exit', r));
      }
    } finally {
      for (const { server } of replicas) {
        server.kill('SIGTERM');
        await new Promise((r) => server.once('exit', r));
      }
    }
    // The homes hold no key and no config: everything came from the environment.
    for (const i of [0, 1]) expect(readdirSync(join(dir, `replica${i}`))).toEqual([]);
    const ctx = await openContext(resolveHome(join(dir, 'replica0'), shared), { env: shared });
    await ctx.close();
  }, 120_000);
});

import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { rotateMasterKey } from '../../src/admin/rotate.js';
import { AGENT_KEY_REFERENCE } from '../../src/cli/proxy.js';
import { createLeafCerts } from '../../src/frontends/http/leaf-certs.js';
import type { Context } from '../../src/server/context.js';
import { MasterKey } from '../../src/vault/envelope.js';
import { PROXY_CA_KEY_AAD, PROXY_CA_KEY_META, readKeyringState } from '../../src/vault/keyring.js';
import { openProxyCa, PROXY_CA_CERT_META } from '../../src/vault/proxy-ca.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/** The master key the store names active (the one new data is sealed under). */
async function activeKey(ctx: Context): Promise<MasterKey> {
  return ctx.keys.masters.require((await readKeyringState(ctx.store)).active, 'test');
}

describe('forward proxy CA', () => {
  let t: TestHome;
  let env: NodeJS.ProcessEnv;
  beforeEach(async () => {
    t = await makeTestHome();
    env = { COATCHECK_HOME: t.home.dir };
  });
  afterEach(() => t.remove());

  it('is made at init: certificate in clear, key sealed under the master key (no PKCS#8 in the store)', async () => {
    const ctx = await t.open();
    try {
      const cert = await ctx.store.getMeta(PROXY_CA_CERT_META);
      const sealed = await ctx.store.getMeta(PROXY_CA_KEY_META);
      expect(cert).toMatch(/^-----BEGIN CERTIFICATE-----\n/);
      expect(sealed).not.toBeNull();
      const x509 = new X509Certificate(cert!);
      expect({ ca: x509.ca, subject: x509.subject }).toEqual({
        ca: true,
        subject: 'O=coatcheck\nCN=coatcheck local CA',
      });
      // The sealed blob opens under the master key only, with its own associated data.
      const blob = Buffer.from(sealed!, 'base64');
      expect(blob.includes(Buffer.from('PRIVATE KEY'))).toBe(false);
      const master = await activeKey(ctx);
      expect(master.unwrap(blob, PROXY_CA_KEY_AAD)).not.toBeNull();
      expect(master.unwrap(blob, 'coatcheck index key')).toBeNull();
      expect(MasterKey.generate().unwrap(blob, PROXY_CA_KEY_AAD)).toBeNull();
      const ca = await openProxyCa(ctx.store, ctx.keys.masters);
      expect(x509.checkPrivateKey(ca.key)).toBe(true);
      // No key material anywhere in the home's files but the sealed blob in the database.
      const db = readFileSync(join(t.home.dir, 'coatcheck.db'));
      expect(db.includes(Buffer.from('PRIVATE KEY'))).toBe(false);
    } finally {
      await ctx.close();
    }
  });

  it('is made on first use for a home that predates it, once', async () => {
    // An old home: no CA rows in meta.
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.prepare('DELETE FROM meta WHERE key IN (?, ?)').run(PROXY_CA_CERT_META, PROXY_CA_KEY_META);
    db.close();
    const ctx = await t.open();
    try {
      expect(await ctx.store.getMeta(PROXY_CA_CERT_META)).toBeNull();
      const first = await openProxyCa(ctx.store, ctx.keys.masters);
      const second = await openProxyCa(ctx.store, ctx.keys.masters);
      expect(second.fingerprint).toBe(first.fingerprint);
      expect(await ctx.store.getMeta(PROXY_CA_KEY_META)).not.toBeNull();
    } finally {
      await ctx.close();
    }
  });

  it('key rotation rewraps the CA key: the same CA opens under the new key, not the old', async () => {
    const ctx = await t.open();
    try {
      const before = await openProxyCa(ctx.store, ctx.keys.masters);
      const old = await activeKey(ctx);
      await rotateMasterKey(ctx, 'admin:test');
      const after = await openProxyCa(ctx.store, ctx.keys.masters);
      expect(after.fingerprint).toBe(before.fingerprint);
      const sealed = Buffer.from((await ctx.store.getMeta(PROXY_CA_KEY_META))!, 'base64');
      expect(old.unwrap(sealed, PROXY_CA_KEY_AAD)).toBeNull();
      expect((await activeKey(ctx)).kid).not.toBe(old.kid);
      expect((await activeKey(ctx)).unwrap(sealed, PROXY_CA_KEY_AAD)).not.toBeNull();
    } finally {
      await ctx.close();
    }
  });

  it('mints leaf certificates per host under the CA, cached in a bounded LRU', async () => {
    const ctx = await t.open();
    try {
      const ca = await openProxyCa(ctx.store, ctx.keys.masters);
      const leaves = createLeafCerts(ca, { max: 2 });
      const a = leaves.get('api.example.com');
      expect(leaves.get('API.example.com')).toBe(a);
      leaves.get('127.0.0.1');
      leaves.get('b.example.com');
      expect(leaves.size).toBe(2);
      expect(leaves.get('api.example.com')).not.toBe(a);
    } finally {
      await ctx.close();
    }
  });

  it('`ca export` prints the certificate; `env AGENT` prints the environment block and writes the CA files', async () => {
    const exported = await cli(['ca', 'export'], { env });
    expect(exported.code).toBe(0);
    const x509 = new X509Certificate(exported.stdout);
    expect(x509.ca).toBe(true);
    expect(exported.stdout).not.toContain('PRIVATE');
    const json = await cli(['ca', 'export', '--json'], { env });
    expect(JSON.parse(json.stdout)).toEqual({
      certificate: exported.stdout,
      fingerprint: x509.fingerprint256,
    });

    const key = (await cli(['agent', 'create', 'builder'], { env })).stdout.trim();
    const block = await cli(['env', 'builder', '--proxy', '127.0.0.1:7090', '--shell', 'dotenv'], { env });
    expect(block.code).toBe(0);
    const dir = t.home.dir;
    expect(block.stdout).toBe(
      [
        `HTTPS_PROXY=http://builder:${AGENT_KEY_REFERENCE}@127.0.0.1:7090`,
        `HTTP_PROXY=http://builder:${AGENT_KEY_REFERENCE}@127.0.0.1:7090`,
        `https_proxy=http://builder:${AGENT_KEY_REFERENCE}@127.0.0.1:7090`,
        `http_proxy=http://builder:${AGENT_KEY_REFERENCE}@127.0.0.1:7090`,
        `NODE_EXTRA_CA_CERTS=${dir}/proxy-ca.pem`,
        `SSL_CERT_FILE=${dir}/proxy-ca-bundle.pem`,
        `REQUESTS_CA_BUNDLE=${dir}/proxy-ca-bundle.pem`,
        `CURL_CA_BUNDLE=${dir}/proxy-ca-bundle.pem`,
        `GIT_SSL_CAINFO=${dir}/proxy-ca-bundle.pem`,
        '',
      ].join('\n'),
    );
    // The default is sh: exported, so the processes the shell starts (git, curl) see them.
    const sh = await cli(['env', 'builder', '--proxy', '127.0.0.1:7090'], {
      env: { ...env, COATCHECK_AGENT_KEY: 'cca_k' },
    });
    expect(sh.stdout.split('\n')[0]).toBe('export HTTPS_PROXY="http://builder:cca_k@127.0.0.1:7090"');
    const { execFileSync } = await import('node:child_process');
    const seen = execFileSync(
      'sh',
      ['-c', `eval "$(cat)"; sh -c 'printf %s "$HTTPS_PROXY|$GIT_SSL_CAINFO"'`],
      {
        input: sh.stdout,
      },
    ).toString();
    expect(seen).toBe(`http://builder:cca_k@127.0.0.1:7090|${dir}/proxy-ca-bundle.pem`);
    // Without the key at hand, sh expands the reference when the block is evaluated.
    const ref = await cli(['env', 'builder', '--proxy', '127.0.0.1:7090'], { env });
    const expanded = execFileSync('sh', ['-c', `eval "$(cat)"; sh -c 'printf %s "$https_proxy"'`], {
      input: ref.stdout,
      env: { PATH: process.env.PATH, COATCHECK_AGENT_KEY: 'cca_from_env' },
    }).toString();
    expect(expanded).toBe('http://builder:cca_from_env@127.0.0.1:7090');
    const fish = await cli(['env', 'builder', '--proxy', '127.0.0.1:7090', '--shell', 'fish'], { env });
    expect(fish.stdout.split('\n')[0]).toBe(
      'set -gx HTTPS_PROXY "http://builder:$COATCHECK_AGENT_KEY@127.0.0.1:7090"',
    );
    const ps = await cli(['env', 'builder', '--proxy', '127.0.0.1:7090', '--shell', 'powershell'], { env });
    expect(ps.stdout.split('\n')[0]).toBe(
      '$env:HTTPS_PROXY = "http://builder:$env:COATCHECK_AGENT_KEY@127.0.0.1:7090"',
    );
    const bad = await cli(['env', 'builder', '--shell', 'csh'], { env });
    expect(bad.code).toBe(2);
    expect(readFileSync(join(dir, 'proxy-ca.pem'), 'utf8')).toBe(exported.stdout);
    expect(readFileSync(join(dir, 'proxy-ca-bundle.pem'), 'utf8').startsWith(exported.stdout)).toBe(true);
    const withKey = await cli(['env', 'builder', '--proxy', '127.0.0.1:7090'], {
      env: { ...env, COATCHECK_AGENT_KEY: key },
    });
    expect(withKey.stdout.split('\n')[0]).toBe(`export HTTPS_PROXY="http://builder:${key}@127.0.0.1:7090"`);
    const unknown = await cli(['env', 'nobody'], { env });
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/CC_ERR_NOT_FOUND|CC_ERR_AGENT_UNKNOWN/);
  });
});

describe('proxyEnvLines', () => {
  it('names the gateway’s own listeners in NO_PROXY, and quotes what a shell would expand', async () => {
    const { proxyEnvLines } = await import('../../src/cli/proxy.js');
    const block = proxyEnvLines(
      {
        agent: 'a',
        proxy: '10.0.0.5:7090',
        agentKey: null,
        caFile: '/tmp/$HOME/ca.pem',
        bundleFile: '/tmp/b`x`.pem',
        noProxy: ['gw.internal:7080', 'gw.internal:7080'],
      },
      'sh',
    );
    expect(block).toContain('export NO_PROXY="gw.internal:7080"\nexport no_proxy="gw.internal:7080"');
    expect(block).toContain('export NODE_EXTRA_CA_CERTS="/tmp/\\$HOME/ca.pem"');
    expect(block).toContain('export GIT_SSL_CAINFO="/tmp/b\\`x\\`.pem"');
  });
});

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Context } from '../../src/server/context.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-credential-Hx6Pw2Rb8';

// A secret's allow list is the boundary for every release path: a connection's own
// credential or injected header is no side door around it.
describe('connection credentials obey the secret’s allowed destinations', () => {
  let t: TestHome;
  beforeEach(async () => {
    t = await makeTestHome();
  });
  afterEach(() => t.remove());

  const env = () => ({ COATCHECK_HOME: t.home.dir });

  it('connection add refuses a --credential or --inject-header secret that does not allow the connection', async () => {
    expect(
      (await cli(['secret', 'add', 'gh', '--allow', 'api.github.com'], { env: env(), stdin: CANARY })).code,
    ).toBe(0);
    for (const extra of [
      ['--credential', 'gh'],
      ['--inject-header', 'X-Api-Key: {{secret:gh}}'],
      ['--inject-header', 'Authorization: Bearer {{ secret:gh }}'],
    ]) {
      const r = await cli(
        ['connection', 'add', 'evil', '--type', 'http', '--url', 'https://evil.example.net', ...extra],
        {
          env: env(),
        },
      );
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain('CC_ERR_CREDENTIAL_DESTINATION');
      expect(r.stderr).not.toContain(CANARY);
    }
    // Allowed by host, or by the connection's name: accepted.
    expect(
      (
        await cli(
          [
            'connection',
            'add',
            'gh-api',
            '--type',
            'http',
            '--url',
            'https://api.github.com',
            '--credential',
            'gh',
          ],
          { env: env() },
        )
      ).code,
    ).toBe(0);
    expect(
      (
        await cli(['secret', 'add', 'k2', '--allow', 'conn:internal'], {
          env: env(),
          stdin: 'another-canary-value-1',
        })
      ).code,
    ).toBe(0);
    expect(
      (
        await cli(
          [
            'connection',
            'add',
            'internal',
            '--type',
            'http',
            '--url',
            'https://svc.internal',
            '--credential',
            'k2',
          ],
          { env: env() },
        )
      ).code,
    ).toBe(0);
    // Same host, plain http or another port: not the destination the secret allows.
    for (const url of ['http://api.github.com', 'https://api.github.com:8443']) {
      const r = await cli(
        ['connection', 'add', `x${url.length}`, '--type', 'http', '--url', url, '--credential', 'gh'],
        { env: env() },
      );
      expect(r.code).not.toBe(0);
    }
  });

  it('at use: a credential whose secret no longer allows the connection is not released', async () => {
    let ctx: Context = await t.open();
    try {
      await ctx.vault.addSecret(
        { name: 'db', value: Buffer.from(CANARY), allow: ['conn:api'] },
        'admin:test',
      );
      await ctx.connections.add(
        { name: 'api', type: 'http', url: 'https://api.example.com', credential: 'db' },
        'admin:test',
      );
      const agent = await ctx.agents.create({ name: 'a' }, 'admin:test');
      const principal = await ctx.agents.authenticate(agent.key);
      const target = { connection: 'api', scheme: 'https' as const, host: 'api.example.com', port: 443 };
      expect((await ctx.vault.releaseCredential('db', { principal, target })).value.revealText()).toBe(
        CANARY,
      );
      await ctx.vault.updateSecret('db', { allow: ['conn:other'] }, 'admin:test');
      const refused = await ctx.vault.releaseCredential('db', { principal, target }).then(
        () => null,
        (e: { code: string; message: string }) => e,
      );
      expect(refused).toMatchObject({ code: 'CC_ERR_CREDENTIAL_DESTINATION' });
      expect(JSON.stringify(refused)).not.toContain(CANARY);
    } finally {
      await ctx.close();
    }
    ctx = await t.open();
    await ctx.close();
  });
});

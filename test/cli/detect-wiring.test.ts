import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// Built at run time so no secret-shaped literal sits in the repository.
const AWS_KEY = ['AKIA', 'Q3EGRTZ7', 'MNPWX4LD'].join('');
const VAULT_CANARY = 'vault-canary-Zx81Qm02Lp77';

describe('detector wired into the CLI and the logger', () => {
  let t: TestHome;
  let env: NodeJS.ProcessEnv;
  beforeEach(async () => {
    t = await makeTestHome();
    env = { COATCHECK_HOME: t.home.dir };
    expect((await cli(['agent', 'create', 'writer'], { env })).code).toBe(0);
  });
  afterEach(() => t.remove());

  it('tokenize registers each found secret once and prints tickets bound to the agent', async () => {
    const prompt = `Deploy with key ${AWS_KEY} and again ${AWS_KEY}, thanks.`;
    const result = await cli(['tokenize', '--to', 'writer', '--dest', 'aws'], { env, stdin: prompt });
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(
      /^Deploy with key cct_[0-9A-Za-z]{28} and again cct_[0-9A-Za-z]{28}, thanks\.$/,
    );
    expect(result.stdout).not.toContain(AWS_KEY);
    const tickets = result.stdout.match(/cct_[0-9A-Za-z]{28}/g)!;
    const inspected = JSON.parse((await cli(['token', 'inspect', tickets[0]!, '--json'], { env })).stdout);
    expect(inspected).toMatchObject({
      status: 'active',
      destinations: ['conn:aws'],
      secret: expect.stringMatching(/^found-aws-access-key-/),
    });
    const secrets = JSON.parse((await cli(['secret', 'list', '--json'], { env })).stdout) as {
      name: string;
      allow: string[];
    }[];
    expect(secrets).toHaveLength(1);
    expect(secrets[0]!.allow).toEqual(['conn:aws']);
    for (const file of readdirSync(t.home.dir)) {
      expect(readFileSync(join(t.home.dir, file)).includes(Buffer.from(AWS_KEY)), file).toBe(false);
    }
    const noAgent = await cli(['tokenize'], { env, stdin: prompt });
    expect(noAgent).toMatchObject({ code: 2, stdout: '' });
  });

  it('scan finds, scrub masks', async () => {
    const scan = await cli(['scan', '-', '--format', 'json'], { env, stdin: `key=${AWS_KEY}\n` });
    expect(scan.code).toBe(1);
    expect(scan.stdout).not.toContain(AWS_KEY);
    const scrub = await cli(['scrub'], { env, stdin: `key=${AWS_KEY}\n` });
    expect(scrub).toEqual({ code: 0, stdout: 'key=[REDACTED:aws-access-key]\n', stderr: '' });
  });

  it('the gateway logger masks vault secrets and secret formats in every line', async () => {
    const ctx = await t.open();
    try {
      await ctx.vault.addSecret(
        { name: 'db', value: Buffer.from(VAULT_CANARY), allow: ['pg'] },
        'admin:test',
      );
      let out = '';
      const sink = new Writable({
        write(chunk: Buffer, _e, cb) {
          out += chunk.toString();
          cb();
        },
      });
      const { createLogger } = await import('../../src/core/logger.js');
      const { createLogScrubber } = await import('../../src/detect/scrub.js');
      // The context's own logger writes to stderr; check the same scrubbing on a sink.
      const log = createLogger({ level: 'info', destination: sink, scrub: createLogScrubber() });
      log.info({ detail: `oops ${AWS_KEY}` }, 'careless line');
      expect(out).toContain('[REDACTED:aws-access-key]');
      expect(out).not.toContain(AWS_KEY);
      await expect
        .poll(async () => {
          let captured = '';
          const original = process.stderr.write.bind(process.stderr);
          (process.stderr as { write: unknown }).write = (chunk: string | Buffer) => {
            captured += chunk.toString();
            return true;
          };
          try {
            ctx.log.warn(
              { leaked: `value=${VAULT_CANARY}`, b64: Buffer.from(VAULT_CANARY).toString('base64') },
              'careless',
            );
          } finally {
            (process.stderr as { write: unknown }).write = original;
          }
          return (
            captured.includes('careless') &&
            !captured.includes(VAULT_CANARY) &&
            !captured.includes(Buffer.from(VAULT_CANARY).toString('base64'))
          );
        })
        .toBe(true);
    } finally {
      await ctx.close();
    }
  });
});

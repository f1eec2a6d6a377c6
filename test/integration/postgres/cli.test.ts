import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { cli } from '../../helpers/cli.js';

let dir: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-pgcli-'));
  env = { COATCHECK_HOME: join(dir, 'home') };
  expect((await cli(['init'], { env })).code).toBe(0);
  expect(
    (await cli(['secret', 'add', 'dbpw', '--allow', 'conn:main'], { env, stdin: 'pw-value' })).code,
  ).toBe(0);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

it('connection add stores postgres rules (--read-only, --block-ddl, --row-limit, --mask-column)', async () => {
  const added = await cli(
    [
      'connection',
      'add',
      'main',
      '--type',
      'postgres',
      '--url',
      'postgres://app@127.0.0.1:5432/appdb',
      '--credential',
      'dbpw',
      '--read-only',
      '--block-ddl',
      '--row-limit',
      '1000',
      '--mask-column',
      '*email*',
      '--mask-column',
      'ssn',
      '--json',
    ],
    { env },
  );
  expect(added.code).toBe(0);
  expect(JSON.parse(added.stdout)).toMatchObject({
    name: 'main',
    type: 'postgres',
    url: 'postgres://app@127.0.0.1:5432/appdb',
    rules: { readOnly: true, blockDdl: true, rowLimit: 1000, maskColumns: ['*email*', 'ssn'] },
  });
});

it('refuses a password in a postgres URL and rules on a non-postgres connection', async () => {
  const withPassword = await cli(
    [
      'connection',
      'add',
      'bad',
      '--type',
      'postgres',
      '--url',
      'postgres://app:secret@127.0.0.1/db',
      '--json',
    ],
    { env },
  );
  expect(withPassword.code).not.toBe(0);
  const shown = withPassword.stdout + withPassword.stderr;
  expect(shown).toContain('CC_ERR_INVALID_ARGUMENT');
  expect(shown).not.toContain('secret@');
  const httpRules = await cli(
    ['connection', 'add', 'web', '--type', 'http', '--url', 'https://example.com', '--read-only', '--json'],
    { env },
  );
  expect(httpRules.code).not.toBe(0);
  expect(httpRules.stdout + httpRules.stderr).toContain('apply to postgres connections only');
});

import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// The bundled CLI keeps a checked copy of the config beside it (src/config/load-config.ts),
// keyed by the text and the build, so a short command skips the YAML parser and the schema.
// What must hold: a changed file is always validated again, the environment is applied on
// every start, a damaged copy is ignored, and only a bundled build writes one.
const BUNDLE = new URL('../../dist/bin/coatcheck.js', import.meta.url).pathname;

function bundled(home: string, argv: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [BUNDLE, ...argv], {
    env: { PATH: process.env.PATH, COATCHECK_HOME: home, ...env },
    encoding: 'utf8',
  });
}

describe.skipIf(!existsSync(BUNDLE))('the checked config (bundled CLI)', () => {
  let t: TestHome;
  let checked: string;
  beforeEach(async () => {
    t = await makeTestHome();
    checked = `${t.home.dir}/.coatcheck.yaml.checked.json`;
  });
  afterEach(() => t.remove());

  it('is written owner-only on the first command and used by the next, with the same result', () => {
    expect(existsSync(checked)).toBe(false);
    const first = bundled(t.home.dir, ['secret', 'list', '--json']);
    expect(first.status).toBe(0);
    expect(statSync(checked).mode & 0o777).toBe(0o600);
    const copy = JSON.parse(readFileSync(checked, 'utf8')) as { key: string; config: { listen: unknown } };
    expect(copy.key).toMatch(/^[0-9a-f]{64}$/);
    expect(copy.config.listen).toMatchObject({ admin: '127.0.0.1:7070' });
    const second = bundled(t.home.dir, ['secret', 'list', '--json']);
    expect(second.status).toBe(0);
    expect(second.stdout).toBe(first.stdout);
  });

  it('a changed file is validated again: an invalid edit is refused, a valid one replaces the copy', () => {
    expect(bundled(t.home.dir, ['secret', 'list']).status).toBe(0);
    const before = JSON.parse(readFileSync(checked, 'utf8')) as { key: string };
    const original = readFileSync(t.home.configFile, 'utf8');
    writeFileSync(t.home.configFile, original.replace('defaultTtl: 1h', 'defaultTtl: soon'));
    const refused = bundled(t.home.dir, ['secret', 'list']);
    expect(refused.status).not.toBe(0);
    expect(refused.stderr).toMatch(/CC_ERR_CONFIG_INVALID: .*tickets\.defaultTtl/);
    writeFileSync(t.home.configFile, original.replace('defaultTtl: 1h', 'defaultTtl: 2h'));
    expect(bundled(t.home.dir, ['secret', 'list']).status).toBe(0);
    const after = JSON.parse(readFileSync(checked, 'utf8')) as { key: string; config: { tickets: unknown } };
    expect(after.key).not.toBe(before.key);
    expect(after.config.tickets).toMatchObject({ defaultTtl: '2h' });
  });

  it('the environment is applied on every start, also when the copy is used', () => {
    expect(bundled(t.home.dir, ['secret', 'list']).status).toBe(0);
    const bad = bundled(t.home.dir, ['secret', 'list'], { COATCHECK_LOG_LEVEL: 'loud' });
    expect(bad.stderr).toMatch(/CC_ERR_CONFIG_INVALID: COATCHECK_LOG_LEVEL: log\.level/);
    const listen = bundled(t.home.dir, ['secret', 'list'], { COATCHECK_LISTEN_HTTP: '0.0.0.0:99999' });
    expect(listen.stderr).toMatch(/CC_ERR_CONFIG_INVALID: COATCHECK_LISTEN_HTTP: listen\.http/);
  });

  it('a damaged, foreign or oversized copy is ignored and replaced', () => {
    for (const damage of [
      '{"key":',
      JSON.stringify({ key: 'f'.repeat(64), config: { store: { driver: 'postgres' } } }),
      JSON.stringify({ key: 'x', config: null }),
      `{"key":"${'a'.repeat(5 * 1024 * 1024)}"}`,
    ]) {
      writeFileSync(checked, damage, { mode: 0o600 });
      const r = bundled(t.home.dir, ['secret', 'list', '--json']);
      expect({ damage: damage.slice(0, 40), status: r.status, stderr: r.stderr }).toMatchObject({
        status: 0,
      });
      const copy = JSON.parse(readFileSync(checked, 'utf8')) as { key: string; config: { store: unknown } };
      expect(copy.config.store).toMatchObject({ driver: 'sqlite' });
    }
  });

  it('the unbundled CLI (tests, tsx) never writes one', async () => {
    const r = await cli(['secret', 'list'], { env: { COATCHECK_HOME: t.home.dir } });
    expect(r.code).toBe(0);
    expect(existsSync(checked)).toBe(false);
  });

  it('a command that names one group still defines it fully: options, help and typos', () => {
    const help = execFileSync(process.execPath, [BUNDLE, 'token', '--help'], { encoding: 'utf8' });
    expect(help).toMatch(/issue \[options\]/);
    const typo = bundled(t.home.dir, ['tokn']);
    expect(typo.stderr).toMatch(/unknown command 'tokn'/);
    const all = execFileSync(process.execPath, [BUNDLE, '--help'], { encoding: 'utf8' });
    for (const command of ['secret', 'token', 'relay', 'scan', 'kubeconfig', 'keys'])
      expect(all).toContain(command);
  });
});

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// Usage errors: one line with a stable code and a hint, exit 2, JSON with --json.
describe('usage errors', () => {
  let t: TestHome;
  beforeEach(async () => {
    t = await makeTestHome();
  });
  afterEach(() => t.remove());

  const cases: Array<[string[], string]> = [
    [['secret', 'add'], "missing required argument 'name'"],
    [['token', 'issue', '--to', 'a'], "required option '--secret <name>' not specified"],
    [['secret', 'list', '--bogus'], "unknown option '--bogus'"],
    [['secret', 'frobnicate'], "unknown command 'frobnicate'"],
  ];

  for (const [argv, message] of cases) {
    it(`${argv.join(' ')}: one line, code, hint, exit 2`, async () => {
      const r = await cli(argv, { env: { COATCHECK_HOME: t.home.dir } });
      expect(r.code).toBe(2);
      const lines = r.stderr.trim().split('\n');
      expect(lines.length).toBeLessThanOrEqual(2);
      expect(lines[0]).toBe(`coatcheck: CC_ERR_INVALID_ARGUMENT: ${message}`);
      expect(lines[1]).toMatch(/^ {2}\(see: coatcheck [a-z ]*--help\)$/);
      expect(r.stderr).not.toContain('Usage:');
    });
  }

  it('with --json the usage error is a JSON error document', async () => {
    const r = await cli(['secret', 'list', '--json', '--bogus'], { env: { COATCHECK_HOME: t.home.dir } });
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toMatchObject({
      error: { code: 'CC_ERR_INVALID_ARGUMENT', message: "unknown option '--bogus'" },
    });
  });

  it('--server that is not an http(s) URL is a usage error, not an internal one', async () => {
    for (const server of ['not-a-url', 'ftp://127.0.0.1:1', 'javascript:alert(1)']) {
      const r = await cli(['--server', server, 'secret', 'list'], { env: { COATCHECK_HOME: t.home.dir } });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('CC_ERR_INVALID_ARGUMENT');
      expect(r.stderr).not.toContain('internal error');
    }
  });

  it('connection add refuses a type no front-end serves', async () => {
    for (const [type, url] of [['mysql', 'mysql://db.internal:3306/app']]) {
      const r = await cli(['connection', 'add', `c-${type}`, '--type', type!, '--url', url!], {
        env: { COATCHECK_HOME: t.home.dir },
      });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`no front-end serves ${type} connections`);
    }
    const ok = await cli(['connection', 'add', 'api', '--type', 'http', '--url', 'https://api.example.com'], {
      env: { COATCHECK_HOME: t.home.dir },
    });
    expect(ok.code).toBe(0);
  });

  it('connection add --type ssh needs the upstream user and a pinned host key', async () => {
    const env = { COATCHECK_HOME: t.home.dir };
    const noKey = await cli(
      ['connection', 'add', 'box', '--type', 'ssh', '--url', 'ssh://deploy@host.internal:22'],
      {
        env,
      },
    );
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain('--host-key');
    const key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8Q2bMF7VDgQw9ED7rXn5nU3D4ANuFiJm2gvOZtg6Fd';
    const noUser = await cli(
      ['connection', 'add', 'box', '--type', 'ssh', '--url', 'ssh://host.internal:22', '--host-key', key],
      { env },
    );
    expect(noUser.code).toBe(2);
    const ok = await cli(
      [
        'connection',
        'add',
        'box',
        '--type',
        'ssh',
        '--url',
        'ssh://deploy@host.internal:22',
        '--host-key',
        `host.internal ${key}`,
      ],
      { env },
    );
    expect(ok.code).toBe(0);
  });

  it('ssh host-key prints the public key and fingerprint; --rotate replaces it, audited', async () => {
    const env = { COATCHECK_HOME: t.home.dir };
    const first = await cli(['ssh', 'host-key'], { env });
    expect(first.code).toBe(0);
    const [line, fingerprint] = first.stdout.trim().split('\n');
    expect(line).toMatch(/^ssh-ed25519 AAAA[0-9A-Za-z+/=]+ coatcheck$/);
    expect(fingerprint).toMatch(/^SHA256:[0-9A-Za-z+/]{43}$/);
    const rotated = await cli(['ssh', 'host-key', '--rotate'], { env });
    expect(rotated.code).toBe(0);
    expect(rotated.stdout.trim().split('\n')[1]).not.toBe(fingerprint);
    const again = await cli(['ssh', 'host-key'], { env });
    expect(again.stdout).toBe(rotated.stdout);
    const audit = await cli(['--json', 'audit', 'tail', '--lines', '5'], { env });
    expect(audit.stdout).toContain('ssh.hostkey.rotated');
    expect(audit.stdout).toContain(fingerprint);
  });

  it('policy check decides a known agent with its stored groups, and says which groups it used', async () => {
    const env = { COATCHECK_HOME: t.home.dir };
    expect((await cli(['agent', 'create', 'ops-bot', '--group', 'sre'], { env })).code).toBe(0);
    const { writeFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const policyFile = join(t.dir, 'sre.cedar');
    writeFileSync(
      policyFile,
      '@id("sre-writes")\npermit (principal in Group::"sre", action == Action::"sql:write", resource);\n',
    );
    const args = ['policy', 'check', '--policy', policyFile, '--principal', 'Agent::"ops-bot"'];
    const r = await cli([...args, '--action', 'sql:write', '--resource', 'Connection::"prod"'], { env });
    expect(r.stdout.split('\n')[0]).toBe('allow');
    expect(r.stdout).toContain('groups: sre');
    const unknown = await cli(
      [
        'policy',
        'check',
        '--policy',
        policyFile,
        '--principal',
        'Agent::"nobody"',
        '--action',
        'sql:write',
        '--resource',
        'Connection::"prod"',
      ],
      { env },
    );
    expect(unknown.stdout.split('\n')[0]).toBe('deny');
  });
});

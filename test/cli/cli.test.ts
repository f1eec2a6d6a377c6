import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-cli-xK9pQ2mW7vR4tY1z';

describe('CLI', () => {
  let t: TestHome;
  let env: NodeJS.ProcessEnv;
  beforeEach(async () => {
    t = await makeTestHome();
    env = { COATCHECK_HOME: t.home.dir };
  });
  afterEach(() => t.remove());

  it('runs the whole contract; the canary never appears in any output, the audit log or the store files', async () => {
    const outputs: string[] = [];
    const run = async (argv: string[], stdin?: string) => {
      const result = await cli(argv, { env, stdin });
      outputs.push(result.stdout, result.stderr);
      return result;
    };
    expect(
      await run(
        ['secret', 'add', 'github', '--allow', 'github', '--allow', '*.github.com', '--kind', 'api-key'],
        `${CANARY}\n`,
      ),
    ).toMatchObject({
      code: 0,
    });
    const agentKey = (
      await run(['agent', 'create', 'builder', '--group', 'ci', '--ttl', '8h'])
    ).stdout.trim();
    expect(agentKey).toMatch(/^cca_[0-9A-Za-z]{43}$/);
    expect(
      (
        await run([
          'connection',
          'add',
          'github',
          '--type',
          'http',
          '--url',
          'https://api.github.com',
          '--credential',
          'github',
        ])
      ).code,
    ).toBe(0);
    const issued = await run([
      'token',
      'issue',
      '--secret',
      'github',
      '--to',
      'builder',
      '--dest',
      'github',
      '--ttl',
      '15m',
      '--uses',
      '5',
    ]);
    expect(issued.code).toBe(0);
    const ticket = issued.stdout.trim();
    expect(issued.stdout).toMatch(/^cct_[0-9A-Za-z]{28}\n$/);
    const child = (await run(['token', 'narrow', ticket, '--uses', '2'])).stdout.trim();
    expect(child).toMatch(/^cct_/);
    const inspected = JSON.parse((await run(['token', 'inspect', child, '--json'])).stdout);
    expect(inspected).toMatchObject({
      status: 'active',
      maxUses: 2,
      destinations: ['conn:github'],
      secret: 'github',
    });
    expect((await run(['secret', 'list', '--json'])).stdout).toContain('"name": "github"');
    expect((await run(['agent', 'list'])).stdout).toContain('builder');
    expect((await run(['connection', 'list'])).stdout).toContain('https://api.github.com');
    expect((await run(['token', 'list', '--json'])).stdout).toContain(inspected.id);
    const revoked = JSON.parse((await run(['token', 'revoke', ticket, '--json'])).stdout);
    expect(revoked.revoked).toHaveLength(2);
    expect((await run(['audit', 'tail', '-n', '50'])).code).toBe(0);
    expect((await run(['audit', 'export', '--json'])).code).toBe(0);
    expect(await run(['audit', 'verify'])).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/^audit log intact: \d+ records\n$/),
    });
    expect((await run(['keys', 'rotate'])).code).toBe(0);
    expect((await run(['connection', 'rm', 'github'])).code).toBe(0);
    expect((await run(['secret', 'rm', 'github'])).code).toBe(0);
    expect((await run(['agent', 'revoke', 'builder'])).code).toBe(0);

    const everything = outputs.join('\n');
    expect(everything).not.toContain(CANARY);
    // Tickets are printed only by `token issue` / `token narrow`.
    expect(outputs.filter((o) => o.includes(ticket))).toEqual([issued.stdout]);
    // Every file of the home, the keys directory's included.
    for (const file of readdirSync(t.home.dir, { recursive: true, encoding: 'utf8' })) {
      if (statSync(join(t.home.dir, file)).isDirectory()) continue;
      const bytes = readFileSync(join(t.home.dir, file));
      expect(bytes.includes(Buffer.from(CANARY)), file).toBe(false);
      expect(bytes.includes(Buffer.from(ticket)), file).toBe(false);
      expect(bytes.includes(Buffer.from(agentKey)), file).toBe(false);
    }
  });

  it('connection list shows the relay each connection goes through (human and --json)', async () => {
    expect((await cli(['relay', 'create', 'site-a'], { env })).stdout).toMatch(/^ccr_/);
    const add = (name: string, extra: string[]) =>
      cli(['connection', 'add', name, '--type', 'http', '--url', `https://${name}.internal`, ...extra], {
        env,
      });
    expect((await add('relayed', ['--via', 'site-a'])).stdout).toContain('via relay site-a');
    expect((await add('direct', [])).code).toBe(0);
    const listed = (await cli(['connection', 'list'], { env })).stdout.split('\n');
    expect(listed[0]).toMatch(/^NAME\s+TYPE\s+URL\s+CREDENTIAL\s+VIA\s+SOURCE$/);
    const viaColumn = listed[0]!.indexOf('VIA');
    const row = (name: string) => listed.find((l) => l.startsWith(`${name} `))!;
    expect(row('relayed').slice(viaColumn).split(/\s+/)[0]).toBe('site-a');
    expect(row('direct').slice(viaColumn).split(/\s+/)[0]).toBe('-');
    const json = JSON.parse((await cli(['connection', 'list', '--json'], { env })).stdout) as Array<{
      name: string;
      via: string | null;
    }>;
    expect(Object.fromEntries(json.map((c) => [c.name, c.via]))).toEqual({ relayed: 'site-a', direct: null });
    // relay list names the replica a relay was last seen on (none yet).
    const relays = (await cli(['relay', 'list'], { env })).stdout.split('\n');
    expect(relays[0]).toMatch(/^NAME\s+ID\s+STATUS\s+SESSIONS\s+LAST SEEN\s+FROM\s+REPLICA$/);
    expect(relays[1]).toMatch(/^site-a\s+rly_\S+\s+never-connected\s+-\s+-\s+-\s+-$/);
    const relayJson = JSON.parse((await cli(['relay', 'list', '--json'], { env })).stdout) as unknown[];
    expect(relayJson).toEqual([expect.objectContaining({ name: 'site-a', lastReplica: null })]);
  });

  it('every command has --json and errors carry a stable code and exit code', async () => {
    const missing = await cli(['token', 'issue', '--secret', 'nope', '--to', 'x', '--json'], { env });
    expect(missing.code).toBe(1);
    expect(JSON.parse(missing.stdout)).toEqual({
      error: { code: 'CC_ERR_AGENT_UNKNOWN', message: 'no agent named x', details: { name: 'x' } },
    });
    const badTtl = await cli(['agent', 'create', 'a', '--ttl', '5 minutes'], { env });
    expect(badTtl).toMatchObject({
      code: 2,
      stderr: 'coatcheck: CC_ERR_INVALID_ARGUMENT: ttl: must look like 90s, 15m, 8h or 7d\n',
    });
    const badTicket = await cli(['token', 'inspect', 'cct_AAAAAAAAAAAAAAAAAAAAAAAAAAAA'], { env });
    expect(badTicket).toMatchObject({ code: 2, stderr: expect.stringContaining('CC_ERR_TICKET_CHECKSUM') });
    const empty = await cli(['secret', 'add', 'e'], { env, stdin: '' });
    expect(empty).toMatchObject({ code: 2, stderr: expect.stringContaining('CC_ERR_SECRET_EMPTY') });
    const badDest = await cli(['secret', 'add', 'd', '--allow', 'bad host!'], { env, stdin: 'v' });
    expect(badDest).toMatchObject({ code: 2, stderr: expect.stringContaining('CC_ERR_DEST_INVALID') });
    const literal = await cli(
      ['connection', 'add', 'c', '--type', 'http', '--url', 'https://u:pw@example.com'],
      { env },
    );
    expect(literal).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('must not contain a user or password'),
    });
    expect(literal.stderr).not.toContain('pw@');
    const noHome = await cli(['secret', 'list'], { env: { COATCHECK_HOME: join(t.dir, 'nowhere') } });
    expect(noHome).toMatchObject({ code: 3, stderr: expect.stringContaining('CC_ERR_HOME_MISSING') });
    const again = await cli(['init'], { env });
    expect(again).toMatchObject({ code: 1, stderr: expect.stringContaining('CC_ERR_HOME_EXISTS') });
    const unknownCommand = await cli(['frobnicate'], { env });
    expect(unknownCommand.code).toBe(2);
  });

  it('reads the secret from a file, and refuses values over 64 KiB', async () => {
    const file = join(t.dir, 'value.txt');
    writeFileSync(file, CANARY);
    expect((await cli(['secret', 'add', 'f', '--file', file], { env })).code).toBe(0);
    const big = await cli(['secret', 'add', 'big'], { env, stdin: Buffer.alloc(65 * 1024, 0x61) });
    expect(big).toMatchObject({ code: 2, stderr: expect.stringContaining('CC_ERR_SECRET_TOO_LARGE') });
  });

  it('audit verify exits 1 and names the first bad record', async () => {
    await cli(['agent', 'create', 'a'], { env });
    await cli(['agent', 'create', 'b'], { env });
    const Database = (await import('better-sqlite3')).default;
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.prepare("UPDATE audit SET actor = 'mallory' WHERE seq = 2").run();
    db.close();
    const result = await cli(['audit', 'verify'], { env });
    expect(result).toEqual({
      code: 1,
      stdout:
        'audit log damaged at record 2 (edited): record 2 was edited (its hash does not match its content)\n',
      stderr: '',
    });
  });

  it('names file, line and field of an invalid config', async () => {
    writeFileSync(t.home.configFile, 'store:\n  driver: sqlite\nlisten:\n  admin: nowhere\n');
    const result = await cli(['secret', 'list'], { env });
    expect(result).toEqual({
      code: 2,
      stdout: '',
      stderr: `coatcheck: CC_ERR_CONFIG_INVALID: ${t.home.configFile}:4: listen.admin: must be HOST:PORT, like 127.0.0.1:7070\n`,
    });
    writeFileSync(t.home.configFile, 'tickets:\n  defaultTtl: 1h\n  colour: blue\n');
    expect((await cli(['secret', 'list'], { env })).stderr).toBe(
      `coatcheck: CC_ERR_CONFIG_INVALID: ${t.home.configFile}:3: tickets.colour: unknown field\n`,
    );
    writeFileSync(
      t.home.configFile,
      'connections:\n  - name: a\n    type: http\n    url: http://x\n  - name: a\n    type: http\n    url: http://y\n',
    );
    expect((await cli(['secret', 'list'], { env })).stderr).toBe(
      `coatcheck: CC_ERR_CONFIG_INVALID: ${t.home.configFile}:5: connections[1].name: duplicate connection name a\n`,
    );
    writeFileSync(t.home.configFile, 'store: [unclosed\n');
    expect((await cli(['secret', 'list'], { env })).stderr).toMatch(
      /^coatcheck: CC_ERR_CONFIG_INVALID: .*coatcheck\.yaml:\d+: YAML syntax error/,
    );
  });

  it('refuses a damaged store file with CC_ERR_STORE_CORRUPT', async () => {
    writeFileSync(join(t.home.dir, 'coatcheck.db'), Buffer.alloc(16384, 7));
    for (const suffix of ['-wal', '-shm']) {
      try {
        (await import('node:fs')).rmSync(join(t.home.dir, `coatcheck.db${suffix}`));
      } catch {}
    }
    const result = await cli(['secret', 'list'], { env });
    expect(result).toMatchObject({ code: 3, stderr: expect.stringContaining('CC_ERR_STORE_CORRUPT') });
  });
});

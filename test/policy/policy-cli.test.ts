import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { makeTestHome } from '../helpers/home.js';

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-policy-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const policyFile = join(dir, 'db.cedar');
writeFileSync(
  policyFile,
  `@id("reads") permit(principal, action == Action::"sql:read", resource);
@id("night-writes") @approval("required") @approvers("ops")
permit(principal in Group::"dba", action == Action::"sql:write", resource == Connection::"db")
  unless { context.hour >= 9 && context.hour < 18 };
@id("day-writes")
permit(principal in Group::"dba", action == Action::"sql:write", resource == Connection::"db")
  when { context.hour >= 9 && context.hour < 18 };
`,
);

describe('policy commands', () => {
  it('policy check prints the decision and the policies behind it', async () => {
    const base = [
      'policy',
      'check',
      '--policy',
      policyFile,
      '--principal',
      'Agent::"a1"',
      '--group',
      'dba',
      '--resource',
      'Connection::"db"',
    ];
    const night = await cli([
      ...base,
      '--action',
      'Action::"sql:write"',
      '--at',
      '2026-11-23T22:00:00Z',
      '--context',
      '{"statement": "UPDATE t SET x = 1"}',
    ]);
    expect(night).toMatchObject({ code: 0, stderr: '' });
    expect(night.stdout).toBe(
      `approval\n  policies: night-writes\n  groups: dba\n  approvers: ops\n  policy set: ${policyFile}\n`,
    );
    const day = await cli([...base, '--action', 'sql:write', '--at', '2026-11-23T10:00:00Z', '--json']);
    expect(JSON.parse(day.stdout)).toMatchObject({
      effect: 'allow',
      policies: ['day-writes'],
      source: 'configured',
    });
    const ddl = await cli([...base, '--action', 'sql:ddl']);
    expect(ddl.stdout).toMatch(/^deny\n {2}policies: \(none permitted it: default deny\)/);
    const wrong = await cli([...base, '--action', 'sql:drop']);
    expect(wrong).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('--action must be one of exchange'),
    });
    const badEntity = await cli([
      'policy',
      'check',
      '--principal',
      'a1',
      '--action',
      'sql:read',
      '--resource',
      'Connection::"db"',
    ]);
    expect(badEntity).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('--principal must look like Agent::"name"'),
    });
  });

  it('without a policy, policy check says the built-in policy is in force', async () => {
    const result = await cli(
      [
        'policy',
        'check',
        '--principal',
        'Agent::"a1"',
        '--action',
        'sql:ddl',
        '--resource',
        'Connection::"db"',
      ],
      {
        env: { COATCHECK_HOME: join(dir, 'no-home') },
      },
    );
    expect(result.stdout).toContain('allow\n  policies: builtin:allow-valid-tickets\n');
    expect(result.stdout).toContain('policy set: built-in (no policy configured)');
  });

  it('policy test runs expected decisions and exits 1 on a mismatch', async () => {
    const cases = join(dir, 'cases.yaml');
    writeFileSync(
      cases,
      `- name: dba writes by day
  principal: Agent::"m"
  groups: [dba]
  action: sql:write
  resource: Connection::"db"
  at: 2026-11-23T10:00:00Z
  expect: allow
- name: interns cannot write
  principal: Agent::"i"
  action: sql:write
  resource: Connection::"db"
  expect: deny
`,
    );
    expect(await cli(['policy', 'test', cases, '--policy', policyFile])).toEqual({
      code: 0,
      stdout:
        'pass  dba writes by day: expected allow, got allow (day-writes)\npass  interns cannot write: expected deny, got deny\n2 passed, 0 failed\n',
      stderr: '',
    });
    writeFileSync(
      cases,
      '- principal: Agent::"i"\n  action: sql:read\n  resource: Connection::"db"\n  expect: deny\n',
    );
    const failing = await cli(['policy', 'test', cases, '--policy', policyFile]);
    expect(failing).toMatchObject({
      code: 1,
      stdout: 'FAIL  case 1: expected deny, got allow (reads)\n0 passed, 1 failed\n',
    });
  });

  it('serve refuses to start with a policy that does not validate, naming file, line and policy', async () => {
    const t = await makeTestHome();
    try {
      const bad = join(dir, 'bad.cedar');
      writeFileSync(
        bad,
        '@id("ok") permit(principal, action, resource);\n@id("oops")\npermit(principal, action, resource) when { context.hours > 1 };\n',
      );
      const result = await cli(['serve', '--listen-admin', '127.0.0.1:0', '--policy', bad], {
        env: { COATCHECK_HOME: t.home.dir },
      });
      expect(result.code).toBe(2);
      expect(result.stderr).toMatch(/^coatcheck: CC_ERR_POLICY_INVALID: .*bad\.cedar:3: policy oops: /);
    } finally {
      t.remove();
    }
  });
});

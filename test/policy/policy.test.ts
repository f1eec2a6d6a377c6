import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { normalizeStatement } from '../../src/frontends/postgres/relay/normalize.js';
import { StatementSplitter } from '../../src/frontends/postgres/relay/statement-facts.js';
import { loadParser, SqlClassifier } from '../../src/frontends/postgres/sql/classify.js';
import { loadPolicies } from '../../src/policy/load-policies.js';
import { clockContext, PolicyEngine } from '../../src/policy/policy-engine.js';

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-policy-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function write(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

const POLICIES = `// Reads are fine for everyone.
@id("reads")
permit(principal, action == Action::"sql:read", resource);

@id("writes-office-hours")
permit(principal in Group::"dba", action == Action::"sql:write", resource)
  when { context.hour >= 9 && context.hour < 18 && context.weekday != "sat" && context.weekday != "sun" };

@id("writes-after-hours")
@approval("required")
@approvers("ops,security")
permit(principal in Group::"dba", action == Action::"sql:write", resource)
  unless { context.hour >= 9 && context.hour < 18 && context.weekday != "sat" && context.weekday != "sun" };

@id("no-drop")
forbid(principal, action, resource)
  when { context has statement && context.statement like "*DROP*" };

@id("crm-masked")
@mask("email, ssn")
permit(principal, action == Action::"sql:read", resource == Connection::"crm");
`;

// 2026-11-23 is a Monday.
const mondayAt = (hour: number) => Date.parse(`2026-11-23T${String(hour).padStart(2, '0')}:30:00Z`);
const dba = { kind: 'agent' as const, name: 'migrator', groups: ['dba'] };
const intern = { kind: 'agent' as const, name: 'intern', groups: ['interns'] };
const db = { type: 'Connection' as const, id: 'orders' };

describe('policy engine', () => {
  const engine = new PolicyEngine(loadPolicies(write('main.cedar', POLICIES), dir), { timeZone: 'UTC' });

  it('time windows: writes in office hours pass, after hours need approval from the named groups', () => {
    expect(
      engine.decide({ principal: dba, action: 'sql:write', resource: db, now: mondayAt(10) }),
    ).toMatchObject({
      effect: 'allow',
      policies: ['writes-office-hours'],
    });
    expect(
      engine.decide({ principal: dba, action: 'sql:write', resource: db, now: mondayAt(22) }),
    ).toMatchObject({
      effect: 'approval',
      policies: ['writes-after-hours'],
      approvers: ['ops', 'security'],
    });
    expect(
      engine.decide({
        principal: dba,
        action: 'sql:write',
        resource: db,
        now: Date.parse('2026-11-22T10:30:00Z'),
      }).effect,
    ).toBe('approval'); // a Sunday
  });

  it('group membership decides; an untrusted write is blocked while its read passes', () => {
    expect(
      engine.decide({ principal: intern, action: 'sql:write', resource: db, now: mondayAt(10) }),
    ).toMatchObject({
      effect: 'deny',
      policies: [],
    });
    expect(
      engine.decide({ principal: intern, action: 'sql:read', resource: db, now: mondayAt(10) }).effect,
    ).toBe('allow');
  });

  it('forbid beats permit, and says which policy forbade', () => {
    expect(
      engine.decide({
        principal: dba,
        action: 'sql:write',
        resource: db,
        context: { statement: 'DROP TABLE orders' },
        now: mondayAt(10),
      }),
    ).toMatchObject({ effect: 'deny', policies: ['no-drop'] });
  });

  it('default deny: an action no policy permits is denied', () => {
    expect(engine.decide({ principal: dba, action: 'http:DELETE', resource: db }).effect).toBe('deny');
    expect(
      engine.decide({ principal: dba, action: 'exchange', resource: { type: 'Secret', id: 'x' } }).effect,
    ).toBe('deny');
  });

  it('masking annotations come back as obligations', () => {
    expect(
      engine.decide({ principal: intern, action: 'sql:read', resource: { type: 'Connection', id: 'crm' } }),
    ).toMatchObject({
      effect: 'allow',
      mask: ['email', 'ssn'],
    });
  });

  it('with no policy configured, the built-in one keeps a valid ticket enough', () => {
    const builtin = new PolicyEngine(null);
    expect(builtin.source).toBe('builtin');
    expect(builtin.decide({ principal: intern, action: 'sql:ddl', resource: db })).toMatchObject({
      effect: 'allow',
      policies: ['builtin:allow-valid-tickets'],
    });
  });

  it('fills hour and weekday in the configured time zone', () => {
    expect(clockContext(Date.parse('2026-11-23T23:30:00Z'), 'Asia/Tokyo')).toEqual({
      hour: 8,
      weekday: 'tue',
    });
    expect(clockContext(Date.parse('2026-11-23T00:15:00Z'), 'UTC')).toEqual({ hour: 0, weekday: 'mon' });
    expect(() => new PolicyEngine(null, { timeZone: 'Mars/Olympus' })).toThrow(
      expect.objectContaining({ code: 'CC_ERR_CONFIG_INVALID' }),
    );
  });
});

describe('policy loading', () => {
  const rejects = (text: string) => {
    const path = write(`bad-${Math.random().toString(36).slice(2)}.cedar`, text);
    try {
      loadPolicies(path, dir);
      return null;
    } catch (error) {
      return error as { code: string; message: string };
    }
  };

  it('names file and line of a syntax error', () => {
    const error = rejects(
      'permit(principal, action, resource);\n\npermit(principal, action, resource) when { context.hour >  };\n',
    );
    expect(error?.code).toBe('CC_ERR_POLICY_INVALID');
    expect(error?.message).toMatch(/^bad-[a-z0-9]+\.cedar:3: failed to parse policies/);
  });

  it('names file, line and policy of a schema violation', () => {
    const error = rejects(
      '@id("ok")\npermit(principal, action, resource);\n\n@id("typo")\npermit(principal, action == Action::"sql:write", resource)\n  when { context.hours > 3 };\n',
    );
    expect(error?.code).toBe('CC_ERR_POLICY_INVALID');
    expect(error?.message).toMatch(/^bad-[a-z0-9]+\.cedar:6: policy typo: .*hours.*(did you mean `hour`\?)/);
  });

  it('refuses unknown actions, duplicate ids, and annotations that cannot apply', () => {
    expect(rejects('permit(principal, action == Action::"sql:drop", resource);')?.message).toMatch(
      /policy .*sql:drop/,
    );
    expect(
      rejects('@id("a") permit(principal, action, resource);\n@id("a") permit(principal, action, resource);')
        ?.message,
    ).toMatch(/:2: policy a: duplicate policy id/);
    expect(rejects('@approval("maybe") permit(principal, action, resource);')?.message).toMatch(
      /@approval must be "required"/,
    );
    expect(rejects('@mask("x") forbid(principal, action, resource);')?.message).toMatch(
      /apply to permit policies only/,
    );
  });

  it('loads a folder of .cedar files in name order, with ids from file and line', () => {
    const folder = mkdtempSync(join(dir, 'set-'));
    writeFileSync(join(folder, 'b.cedar'), 'forbid(principal, action == Action::"sql:ddl", resource);\n');
    writeFileSync(join(folder, 'a.cedar'), '\npermit(principal, action, resource);\n');
    writeFileSync(join(folder, 'notes.txt'), 'not a policy');
    const set = loadPolicies(folder, folder);
    expect(set.policies.map((p) => p.id)).toEqual(['a.cedar:2', 'b.cedar:1']);
    const engine = new PolicyEngine(set);
    expect(engine.decide({ principal: dba, action: 'sql:ddl', resource: db })).toMatchObject({
      effect: 'deny',
      policies: ['b.cedar:1'],
    });
  });

  it('a policy without @id loads from any directory: the default id is the file name and line', () => {
    const folder = mkdtempSync(join(dir, 'deep-'));
    const nested = join(folder, 'etc', 'coatcheck');
    mkdirSync(nested, { recursive: true });
    writeFileSync(join(nested, 'my policy (v2).cedar'), 'permit(principal, action, resource);\n');
    writeFileSync(
      join(nested, '.hidden.cedar'),
      '\nforbid(principal, action == Action::"sql:ddl", resource);\n',
    );
    // Loaded as a folder and as single files, with the working directory elsewhere.
    const fromElsewhere = loadPolicies(nested, dir);
    expect(fromElsewhere.policies.map((p) => p.id)).toEqual(['p.hidden.cedar:2', 'my_policy__v2_.cedar:1']);
    expect(loadPolicies(join(nested, 'my policy (v2).cedar'), '/').policies[0]?.id).toBe(
      'my_policy__v2_.cedar:1',
    );
    expect(loadPolicies(join(nested, 'my policy (v2).cedar'), folder).policies[0]?.file).toContain(
      'etc/coatcheck',
    );
  });
});

describe('docs/policy.md', () => {
  it('its cookbook validates against the schema', () => {
    const doc = readFileSync(new URL('../../docs/policy.md', import.meta.url), 'utf8');
    const cookbook = /## Cookbook\n\n```cedar\n([\s\S]*?)```/.exec(doc)?.[1];
    expect(cookbook).toBeDefined();
    const set = loadPolicies(write('cookbook.cedar', cookbook!), dir);
    expect(set.policies.map((p) => p.id)).toEqual([
      'reads',
      'writes-office-hours',
      'writes-after-hours',
      'no-drop',
      'users-read-only',
      'ci-github',
      'crm-masked',
    ]);
  });

  it('its SQL rules match however a statement is written (normalised text and parse-tree facts)', async () => {
    await loadParser();
    const doc = readFileSync(new URL('../../docs/policy.md', import.meta.url), 'utf8');
    const cookbook = /## Cookbook\n\n```cedar\n([\s\S]*?)```/.exec(doc)![1]!;
    const engine = new PolicyEngine(loadPolicies(write('cookbook2.cedar', cookbook), dir), {
      timeZone: 'UTC',
    });
    const splitter = new StatementSplitter(new SqlClassifier());
    const decide = (sql: string) => {
      const [f] = splitter.split(sql);
      return engine.decide({
        principal: dba,
        action: f!.classification.class === 'write' ? 'sql:write' : 'sql:ddl',
        resource: db,
        now: mondayAt(10),
        context: {
          statement: normalizeStatement(f!.source, true),
          sql_class: f!.classification.class,
          sql_kind: f!.kind,
          tables: [...f!.tables],
          functions: [...f!.functions],
        },
      });
    };
    for (const sql of ['drop table orders', 'DrOp/**/TABLE orders', 'drop -- x\n table orders'])
      expect(decide(sql)).toMatchObject({ effect: 'deny', policies: ['no-drop'] });
    for (const sql of [
      'delete from users',
      'DELETE FROM public.users WHERE id = 1',
      'update "users" set a = 1',
    ])
      expect(decide(sql)).toMatchObject({ effect: 'deny', policies: ['users-read-only'] });
    expect(decide("insert into orders values ('drop table x')")).toMatchObject({ effect: 'allow' });
  });
});

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-wf-cli-Q7w8E9r0T1y2U3i4';

describe('CLI: workflow', () => {
  let t: TestHome;
  let env: NodeJS.ProcessEnv;
  beforeEach(async () => {
    t = await makeTestHome();
    env = { COATCHECK_HOME: t.home.dir };
  });
  afterEach(() => t.remove());

  it('start, spawn (env block), show, end; errors carry codes; no secret in any output', async () => {
    const outputs: string[] = [];
    const run = async (argv: string[], stdin?: string) => {
      const result = await cli(argv, { env, stdin });
      outputs.push(result.stdout, result.stderr);
      return result;
    };
    expect((await run(['secret', 'add', 'users-api', '--allow', 'users'], CANARY)).code).toBe(0);
    expect((await run(['agent', 'create', 'planner', '--group', 'ci'])).code).toBe(0);

    const started = await run([
      'workflow',
      'start',
      'report',
      '--agent',
      'planner',
      '--secret',
      'users-api',
      '--ttl',
      '1h',
    ]);
    expect(started.code).toBe(0);
    const id = started.stdout.trim();
    expect(id).toMatch(/^wfl_[0-9A-Za-z]{16}$/);

    const json = await run([
      '--json',
      'workflow',
      'start',
      'other',
      '--agent',
      'planner',
      '--secret',
      'users-api',
    ]);
    const parsed = JSON.parse(json.stdout) as {
      workflow: { id: string };
      key: string;
      tickets: Array<{ ticket: string; secret: string }>;
    };
    expect(parsed.key).toMatch(/^ccs_/);
    expect(parsed.tickets).toEqual([expect.objectContaining({ secret: 'users-api', envName: 'USERS_API' })]);
    expect(parsed.tickets[0]!.ticket).toMatch(/^cct_/);

    const spawned = await run(['workflow', 'spawn', id, '--name', 'fetch', '--ttl', '10m', '--uses', '2']);
    expect(spawned.code).toBe(0);
    const lines = spawned.stdout.trim().split('\n');
    const vars = Object.fromEntries(
      lines.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    expect(Object.keys(vars).sort()).toEqual([
      'COATCHECK_SUBTASK',
      'COATCHECK_SUBTASK_KEY',
      'COATCHECK_WORKFLOW',
      'USERS_API',
    ]);
    expect(vars.COATCHECK_SUBTASK_KEY).toMatch(/^ccs_[0-9A-Za-z]{43}$/);
    expect(vars.USERS_API).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(vars.COATCHECK_WORKFLOW).toBe(id);

    const widen = await run([
      '--json',
      'workflow',
      'spawn',
      vars.COATCHECK_SUBTASK!,
      '--name',
      'x',
      '--uses',
      '3',
    ]);
    expect(widen.code).toBe(1);
    expect(JSON.parse(widen.stdout).error.code).toBe('CC_ERR_TICKET_WIDENING');
    const notHeld = await run(['workflow', 'spawn', id, '--name', 'x', '--secret', 'nope']);
    expect(notHeld).toMatchObject({ code: 1 });
    expect(notHeld.stderr).toContain('CC_ERR_WORKFLOW_NOT_HELD');

    const show = await run(['workflow', 'show', id]);
    expect(show.code).toBe(0);
    expect(show.stdout).toContain(`workflow report ${id} (active`);
    expect(show.stdout).toContain(`  subtask fetch ${vars.COATCHECK_SUBTASK} (active`);
    expect(show.stdout).toMatch(/ticket tkt_\w+ users-api -> conn:users \(active, 0\/2 uses, from tkt_\w+\)/);

    const ended = await run(['workflow', 'end', id]);
    expect(ended.stdout).toMatch(/^ended 2 node\(s\): /);
    expect((await run(['workflow', 'end', vars.COATCHECK_SUBTASK!])).stdout).toBe(
      `${vars.COATCHECK_SUBTASK} had already ended\n`,
    );
    const showJson = JSON.parse((await run(['--json', 'workflow', 'show', id])).stdout) as {
      nodes: Array<{ status: string; tickets: Array<{ status: string }> }>;
    };
    // The spawn refused for widening stays in the tree, revoked at once (it never got a ticket).
    expect(showJson.nodes.map((n) => n.status)).toEqual(['ended', 'ended', 'revoked']);
    expect(showJson.nodes.flatMap((n) => n.tickets.map((x) => x.status))).toEqual(['expired', 'expired']);
    const missing = await run(['workflow', 'show', 'wfl_nope']);
    expect(missing).toMatchObject({ code: 1 });
    expect(missing.stderr).toContain('CC_ERR_NOT_FOUND');

    for (const out of outputs) expect(out).not.toContain(CANARY);
  });
});

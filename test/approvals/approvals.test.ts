import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Operation } from '../../src/approvals/approvals.js';
import { gate } from '../../src/approvals/gate.js';
import type { Principal } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const POLICY = `@id("reads") permit(principal, action == Action::"sql:read", resource);
@id("writes-need-approval") @approval("required")
permit(principal, action == Action::"sql:write", resource == Connection::"orders");
@id("ddl-needs-two-dbas") @approval("required") @approvers("dba") @quorum("2")
permit(principal, action == Action::"sql:ddl", resource == Connection::"orders");
`;

interface Hook {
  url: string;
  received: Array<{ text: string; approval: { id: string } }>;
  close(): Promise<void>;
}

async function webhookReceiver(): Promise<Hook> {
  const received: Hook['received'] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => {
      body += c.toString();
    });
    req.on('end', () => {
      received.push(JSON.parse(body));
      res.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

const sql = (statement: string, action = 'sql:write'): Operation => ({
  kind: 'sql',
  connection: 'orders',
  action,
  summary: statement,
  detail: { statement },
});

describe('just-in-time approvals', () => {
  let t: TestHome;
  let ctx: Context;
  let hook: Hook;
  let agent: Principal;
  const env = () => ({ COATCHECK_HOME: t.home.dir });

  beforeEach(async () => {
    t = await makeTestHome();
    hook = await webhookReceiver();
    writeFileSync(join(t.home.dir, 'policy.cedar'), POLICY);
    writeFileSync(
      t.home.configFile,
      `policy:\n  path: policy.cedar\napprovals:\n  webhookUrl: ${hook.url}\n  consoleUrl: http://127.0.0.1:7070/console\n  holdTimeout: 10s\n`,
    );
    ctx = await t.open();
    const created = await ctx.agents.create({ name: 'writer' }, 'admin:test');
    agent = await ctx.agents.authenticate(created.key);
  });
  afterEach(async () => {
    await ctx.close();
    await hook.close();
    t.remove();
  });

  const run = (operation: Operation, onHold?: (id: string) => void, holdTimeoutMs?: number) =>
    gate(holdTimeoutMs === undefined ? ctx.gate : { ...ctx.gate, holdTimeoutMs }, {
      principal: agent,
      action: operation.action,
      resource: { type: 'Connection', id: operation.connection },
      context: { statement: String(operation.detail.statement) },
      operation,
      onHold: (a) => onHold?.(a.id),
    });

  it('holds the operation, notifies the webhook, and lets it through once approved via the CLI; single use', async () => {
    let held = '';
    const pending = run(sql('DELETE FROM orders WHERE id = 7'), (id) => {
      held = id;
    });
    await expect.poll(() => hook.received.length, { timeout: 15_000 }).toBe(1);
    // The webhook can arrive before the hold callback runs (the request returns after it is sent).
    await expect.poll(() => held, { timeout: 5_000 }).not.toBe('');
    const note = hook.received[0]!;
    expect(note.approval.id).toBe(held);
    expect(note.text).toContain('writer asks to run sql:write on orders');
    expect(note.text).toContain('DELETE FROM orders WHERE id = 7');
    expect(note.text).toContain(`http://127.0.0.1:7070/console/#/approvals/${held}`);
    const listed = await cli(['approvals', 'list', '--status', 'pending', '--json'], { env: env() });
    expect(JSON.parse(listed.stdout).map((a: { id: string }) => a.id)).toEqual([held]);
    const approved = await cli(['approvals', 'approve', held, '--as', 'ada'], { env: env() });
    expect(approved).toMatchObject({ code: 0, stdout: `approved ${held}\n` });
    const result = await pending;
    expect(result).toMatchObject({
      decision: { effect: 'approval' },
      approval: { id: held, status: 'used' },
    });
    // Single use: the same statement again needs a new approval.
    await expect(run(sql('DELETE FROM orders WHERE id = 7'), undefined, 500)).rejects.toMatchObject({
      code: 'CC_ERR_APPROVAL_REQUIRED',
    });
    const shown = await cli(['approvals', 'show', held], { env: env() });
    expect(shown.stdout).toContain('decision    approve by ada');
    await ctx.audit.flush();
    const types = (await ctx.store.readAudit(0, 1000)).map((r) => r.type);
    expect(types).toEqual(
      expect.arrayContaining(['policy.decision', 'approval.request', 'approval.approve', 'approval.use']),
    );
  });

  it('a denial refuses the held operation with its own code', async () => {
    let held = '';
    const pending = run(sql('UPDATE orders SET total = 0'), (id) => {
      held = id;
    });
    // The refusal can land while the deny command below is still returning: handled now,
    // asserted after (an unhandled rejection in between fails the whole run).
    pending.catch(() => undefined);
    await expect.poll(() => held, { timeout: 15_000 }).not.toBe('');
    expect(await cli(['approvals', 'deny', held, '--reason', 'not today'], { env: env() })).toMatchObject({
      code: 0,
    });
    await expect(pending).rejects.toMatchObject({
      code: 'CC_ERR_APPROVAL_DENIED',
      message: `approval ${held} was denied`,
    });
    expect(await cli(['approvals', 'approve', held], { env: env() })).toMatchObject({
      code: 1,
      stderr: `coatcheck: CC_ERR_APPROVAL_NOT_PENDING: approval ${held} is denied\n`,
    });
  });

  it('times out with the approval id; a later approval lets the same operation through, but never another one', async () => {
    const first = await run(sql('DELETE FROM orders WHERE id = 1'), undefined, 500).catch(
      (e: { code: string; details: { approval: string } }) => e,
    );
    expect(first).toMatchObject({ code: 'CC_ERR_APPROVAL_REQUIRED' });
    const id = (first as { details: { approval: string } }).details.approval;
    await cli(['approvals', 'approve', id], { env: env() });
    // Replay for a different statement: refused (a new request is made and times out).
    await expect(run(sql('DELETE FROM orders WHERE id = 2'), undefined, 500)).rejects.toMatchObject({
      code: 'CC_ERR_APPROVAL_REQUIRED',
    });
    // The approved statement itself passes at once.
    await expect(run(sql('DELETE FROM orders WHERE id = 1'))).resolves.toMatchObject({ approval: { id } });
  }, 20_000);

  it('refuses self-approval, enforces approver groups and quorum, and time-boxed approvals serve repeats', async () => {
    let held = '';
    const pending = run(sql('ALTER TABLE orders ADD COLUMN note text', 'sql:ddl'), (id) => {
      held = id;
    });
    await expect.poll(() => held, { timeout: 15_000 }).not.toBe('');
    await expect(
      ctx.approvals.decide(
        held,
        { approver: { ref: agent.ref, name: agent.name, groups: ['dba'] }, decision: 'approve' },
        agent.ref,
      ),
    ).rejects.toMatchObject({ code: 'CC_ERR_APPROVAL_SELF' });
    expect((await cli(['approvals', 'approve', held, '--as', 'bob'], { env: env() })).stderr).toContain(
      'CC_ERR_APPROVAL_NOT_APPROVER',
    );
    expect(
      await cli(['approvals', 'approve', held, '--as', 'bob', '--group', 'dba'], { env: env() }),
    ).toMatchObject({
      stdout: `recorded approval (1 of 2) ${held}\n`,
    });
    expect(
      (await cli(['approvals', 'approve', held, '--as', 'bob', '--group', 'dba'], { env: env() })).stderr,
    ).toContain('bob already approved');
    expect(
      await cli(['approvals', 'approve', held, '--as', 'cy', '--group', 'dba', '--for', '10m'], {
        env: env(),
      }),
    ).toMatchObject({
      stdout: `approved ${held}\n`,
    });
    await expect(pending).resolves.toMatchObject({
      approval: { id: held, status: 'approved', singleUse: false },
    });
    // Time-boxed: the same operation runs again without a new request.
    await expect(run(sql('ALTER TABLE orders ADD COLUMN note text', 'sql:ddl'))).resolves.toMatchObject({
      approval: { id: held },
    });
  }, 20_000);

  it('policy deny and allow need no human', async () => {
    await expect(run(sql('SELECT 1', 'sql:read'))).resolves.toMatchObject({
      decision: { effect: 'allow' },
      approval: null,
    });
    await expect(run(sql('GRANT ALL ON orders TO x', 'sql:privilege'))).rejects.toMatchObject({
      code: 'CC_ERR_POLICY_DENIED',
      message: 'no policy permits sql:privilege on Connection orders (default deny)',
    });
    expect(hook.received).toEqual([]);
  });
});

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { createLocalClient } from '../../src/admin/client.js';
import { renderEnv, renderTree } from '../../src/cli/workflows.js';
import { manualClock } from '../../src/core/clock.js';
import { GatewaySession, LiveSessions } from '../../src/gateway/session.js';
import { loadPolicies } from '../../src/policy/load-policies.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import type { Context } from '../../src/server/context.js';
import { parseChange } from '../../src/store/change-codec.js';
import { encodeChange } from '../../src/store/postgres-store.js';
import { coveredByAny, parseDestination } from '../../src/vault/destinations.js';
import { envNameFor } from '../../src/workflows/workflows.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-wf-users-5d4c3b2a19080706';
const CANARY2 = 'canary-wf-billing-8a7b6c5d4e3f2a10';
const T0 = Date.parse('2026-01-01T00:00:00Z');

const code = (p: Promise<unknown>) =>
  p.then(
    () => 'resolved',
    (e: { code?: string }) => e.code ?? String(e),
  );

describe('workflows and subtasks', () => {
  let t: TestHome;
  let ctx: Context;
  const clock = manualClock(T0);
  const users = { connection: 'users', host: 'users.corp.example', port: 443 };
  const billing = { connection: 'billing', host: 'billing.other.net', port: 443 };

  beforeEach(async () => {
    clock.set(T0);
    t = await makeTestHome();
    ctx = await t.open({ clock });
    await ctx.vault.addSecret(
      { name: 'users-api', value: Buffer.from(CANARY), allow: ['users', '*.corp.example'] },
      'admin:test',
    );
    await ctx.vault.addSecret(
      { name: 'billing-api', value: Buffer.from(CANARY2), allow: ['billing'] },
      'admin:test',
    );
    await ctx.agents.create({ name: 'planner', groups: ['ci'] }, 'admin:test');
  });

  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  async function start(secrets = ['users-api', 'billing-api'], ttlMs = 3_600_000) {
    const agent = await ctx.agents.get('planner');
    return ctx.workflows.start(
      { name: 'report', principal: `agent:${agent.id}`, groups: agent.groups, secrets, ttlMs },
      'admin:test',
    );
  }

  it('a start that fails half-way is rolled back; a rollback that fails too is counted, reported and surfaced', async () => {
    const reported: string[] = [];
    ctx.workflows.onRollbackFailure = (node) => reported.push(node);
    // Rolled back: the node is revoked, its first ticket with it.
    expect(await code(start(['users-api', 'no-such-secret']))).toBe('CC_ERR_NOT_FOUND');
    const rolledBack = await ctx.workflows.list();
    expect(rolledBack.map((w) => w.status)).toEqual(['revoked']);
    expect(ctx.workflows.rollbackFailures).toBe(0);
    // The revocation cannot be written (the audit store refuses it): not swallowed.
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.exec(
      `CREATE TRIGGER revoke_down BEFORE INSERT ON audit WHEN NEW.type = 'workflow.revoke' BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
    );
    let failure: { code?: string; message?: string; details?: Record<string, unknown> } = {};
    try {
      failure = await start(['users-api', 'no-such-secret']).then(
        () => ({}),
        (e: typeof failure) => e,
      );
    } finally {
      db.exec('DROP TRIGGER revoke_down');
      db.close();
    }
    expect(failure.code).toBe('CC_ERR_NOT_FOUND');
    const node = (await ctx.workflows.list()).find((w) => w.status === 'active')!;
    expect(failure.details).toMatchObject({
      rollback: 'failed',
      node: node.id,
      rollbackCode: 'CC_ERR_AUDIT_UNAVAILABLE',
    });
    expect(failure.message).toContain(`coatcheck workflow revoke ${node.id}`);
    expect(ctx.workflows.rollbackFailures).toBe(1);
    expect(reported).toEqual([node.id]);
    expect(await ctx.metrics.metrics()).toMatch(/^coatcheck_workflow_rollback_failures_total 1$/m);
    // Revoked by hand, as the error says.
    await ctx.workflows.revoke(node.id, 'admin:test');
    expect((await ctx.workflows.get(node.id)).status).toBe('revoked');
  });

  it('gives each node its own key, principal and tickets; a subtask exchanges only its own', async () => {
    const run = await start();
    expect(run.workflow.id).toMatch(/^wfl_/);
    expect(run.key).toMatch(/^ccs_[0-9A-Za-z]{43}$/);
    expect(run.tickets.map((x) => x.secret).sort()).toEqual(['billing-api', 'users-api']);

    const a = await ctx.workflows.spawn(
      { parent: run.workflow.id, name: 'fetch-users', secrets: ['users-api'], maxUses: 3 },
      'admin:test',
    );
    clock.advance(1); // siblings are listed oldest first
    const b = await ctx.workflows.spawn(
      { parent: run.workflow.id, name: 'fetch-billing', secrets: ['billing-api'] },
      'admin:test',
    );
    expect(Object.keys(a.env).sort()).toEqual([
      'COATCHECK_SUBTASK',
      'COATCHECK_SUBTASK_KEY',
      'COATCHECK_WORKFLOW',
      'USERS_API',
    ]);
    expect(a.env.USERS_API).toMatch(/^cct_/);

    const pa = await ctx.identity.authenticate(a.key);
    const pb = await ctx.identity.authenticate(b.key);
    expect(pa).toMatchObject({
      kind: 'subtask',
      ref: `subtask:${a.workflow.id}`,
      name: 'fetch-users',
      groups: ['ci'],
      attributes: { workflow: run.workflow.id, subtask: a.workflow.id },
    });
    const root = await ctx.identity.authenticate(run.key);
    expect(root.ref).toBe(`workflow:${run.workflow.id}`);

    const released = await ctx.vault.exchange(a.env.USERS_API!, {
      principal: pa,
      target: users,
      operation: 'GET /users',
    });
    expect(released.value.revealText()).toBe(CANARY);
    const [record] = await ctx.store.readAudit(released.auditSeq - 1, 1);
    expect(record?.data).toMatchObject({ workflow: run.workflow.id, subtask: a.workflow.id });

    // Another subtask's ticket: refused, and audited against the subtask that tried.
    expect(await code(ctx.vault.exchange(a.env.USERS_API!, { principal: pb, target: users }))).toBe(
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
    // Nor may the parent use its child's ticket, or the child the parent's.
    expect(await code(ctx.vault.exchange(a.env.USERS_API!, { principal: root, target: users }))).toBe(
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
    expect(await code(ctx.vault.exchange(run.env.USERS_API!, { principal: pa, target: users }))).toBe(
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
    // Its ticket goes only where the secret may go.
    expect(await code(ctx.vault.exchange(a.env.USERS_API!, { principal: pa, target: billing }))).toBe(
      'CC_ERR_TICKET_WRONG_DESTINATION',
    );
    // A secret the parent does not hold cannot be asked for.
    expect(
      await code(
        ctx.workflows.spawn({ parent: a.workflow.id, name: 'x', secrets: ['billing-api'] }, 'admin:test'),
      ),
    ).toBe('CC_ERR_WORKFLOW_NOT_HELD');

    // The tree from the audit log.
    const tree = await ctx.workflows.show(run.workflow.id);
    expect(tree.nodes.map((n) => [n.name, n.depth])).toEqual([
      ['report', 0],
      ['fetch-users', 1],
      ['fetch-billing', 1],
    ]);
    const fa = tree.nodes[1]!;
    const fb = tree.nodes[2]!;
    expect(fa.events.map((e) => [e.kind, e.secret, e.code])).toEqual([
      ['exchange', 'users-api', null],
      ['refused', null, 'CC_ERR_TICKET_WRONG_PRINCIPAL'],
      ['refused', null, 'CC_ERR_TICKET_WRONG_DESTINATION'],
    ]);
    // The parent's ticket, tried by the child: refused, and the tree says whose it was.
    expect(fa.events[1]?.ticketOwner).toBe(run.workflow.id);
    expect(fa.events[0]).toMatchObject({
      target: 'connection users, host users.corp.example:443',
      operation: 'GET /users',
    });
    expect(fb.events).toEqual([
      expect.objectContaining({ kind: 'refused', code: 'CC_ERR_TICKET_WRONG_PRINCIPAL', ticketOwner: fa.id }),
    ]);
    expect(tree.nodes[0]!.events.map((e) => e.code)).toEqual(['CC_ERR_TICKET_WRONG_PRINCIPAL']);
    // Someone outside the run presenting a node's ticket: listed under that node, with who it was.
    const outsider = await ctx.agents.authenticate(
      (await ctx.agents.create({ name: 'outsider' }, 'admin:test')).key,
    );
    expect(await code(ctx.vault.exchange(a.env.USERS_API!, { principal: outsider, target: users }))).toBe(
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
    const again = await ctx.workflows.show(a.workflow.id);
    expect(again.nodes.map((n) => n.id)).toEqual([a.workflow.id]);
    expect(again.nodes[0]!.events.map((e) => [e.kind, e.code, e.actor])).toEqual([
      ['exchange', null, pa.ref],
      ['refused', 'CC_ERR_TICKET_WRONG_PRINCIPAL', pa.ref],
      ['refused', 'CC_ERR_TICKET_WRONG_DESTINATION', pa.ref],
      ['refused', 'CC_ERR_TICKET_WRONG_PRINCIPAL', outsider.ref],
    ]);
    expect(renderTree(again)).toContain(
      `refused CC_ERR_TICKET_WRONG_PRINCIPAL (${fa.tickets[0]!.id}) by ${outsider.ref}`,
    );
    expect(fa.tickets[0]).toMatchObject({ secret: 'users-api', uses: 1, maxUses: 3, principal: pa.ref });
    const text = renderTree(tree);
    expect(text).toContain(`subtask fetch-users ${fa.id} (active`);
    expect(text).toContain('exchanged users-api');
    expect(text).toContain(`refused CC_ERR_TICKET_WRONG_PRINCIPAL (${fa.tickets[0]!.id} of ${fa.id})`);

    // No canary anywhere: audit, tree, env block.
    const all = JSON.stringify(await ctx.store.readAudit(0, 10_000));
    for (const out of [all, JSON.stringify(tree), text, renderEnv(a.env)]) {
      expect(out).not.toContain(CANARY);
      expect(out).not.toContain(CANARY2);
    }
  });

  it('revoking a node revokes its whole subtree and nothing else', async () => {
    const run = await start(['users-api']);
    const mid = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'mid' }, 'admin:test');
    const leaf = await ctx.workflows.spawn({ parent: mid.workflow.id, name: 'leaf' }, 'admin:test');
    clock.advance(1);
    const sibling = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'sibling' }, 'admin:test');
    const pLeaf = await ctx.identity.authenticate(leaf.key);
    const pSib = await ctx.identity.authenticate(sibling.key);

    const result = await ctx.workflows.revoke(mid.workflow.id, 'admin:test');
    expect(result.ended.sort()).toEqual([mid.workflow.id, leaf.workflow.id].sort());
    expect(result.tickets.sort()).toEqual([mid.tickets[0]!.id, leaf.tickets[0]!.id].sort());
    expect(await code(ctx.identity.authenticate(mid.key))).toBe('CC_ERR_WORKFLOW_REVOKED');
    expect(await code(ctx.identity.authenticate(leaf.key))).toBe('CC_ERR_WORKFLOW_REVOKED');
    expect(await code(ctx.vault.exchange(leaf.env.USERS_API!, { principal: pLeaf, target: users }))).toBe(
      'CC_ERR_TICKET_REVOKED',
    );
    await expect(
      ctx.vault.exchange(sibling.env.USERS_API!, { principal: pSib, target: users }),
    ).resolves.toBeDefined();
    expect(await code(ctx.workflows.spawn({ parent: leaf.workflow.id, name: 'late' }, 'admin:test'))).toBe(
      'CC_ERR_WORKFLOW_INACTIVE',
    );

    // Ending the workflow ends everything: keys refused, tickets expired.
    const ended = await ctx.workflows.end(run.workflow.id, 'admin:test');
    expect(ended.ended.sort()).toEqual([run.workflow.id, sibling.workflow.id].sort());
    expect(await code(ctx.identity.authenticate(sibling.key))).toBe('CC_ERR_WORKFLOW_ENDED');
    expect(await code(ctx.vault.exchange(sibling.env.USERS_API!, { principal: pSib, target: users }))).toBe(
      'CC_ERR_TICKET_EXPIRED',
    );
    expect((await ctx.workflows.end(run.workflow.id, 'admin:test')).ended).toEqual([]);
    const tree = await ctx.workflows.show(run.workflow.id);
    expect(tree.nodes.map((n) => [n.name, n.status])).toEqual([
      ['report', 'ended'],
      ['mid', 'revoked'],
      ['leaf', 'revoked'],
      ['sibling', 'ended'],
    ]);
  });

  it('ending a node ends the live sessions of its key (and of the keys below it), on every replica', async () => {
    const run = await start(['users-api']);
    const a = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'a' }, 'admin:test');
    const b = await ctx.workflows.spawn({ parent: a.workflow.id, name: 'b' }, 'admin:test');
    const c = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'c' }, 'admin:test');
    const live = new LiveSessions(ctx.store, ctx.vault, ctx.log);
    try {
      const sessions = await Promise.all(
        [a, b, c].map(async (node) => {
          const session = new GatewaySession('test', clock);
          session.principal = await ctx.identity.authenticate(node.key);
          live.add(session);
          return session;
        }),
      );
      await ctx.workflows.end(a.workflow.id, 'admin:test');
      expect(sessions.map((s) => s.terminatedBy)).toEqual([
        'CC_ERR_WORKFLOW_ENDED',
        'CC_ERR_WORKFLOW_ENDED',
        null,
      ]);
      // A replica that missed the notification rechecks on resync.
      await ctx.store.transaction((tx) => tx.endWorkflowTree(c.workflow.id, 'revoked', clock.now()));
      await ctx.store.publish({ type: 'resync' });
      await vi.waitFor(() => expect(sessions[2]!.terminatedBy).toBe('CC_ERR_WORKFLOW_ENDED'), {
        timeout: 10_000,
      });
    } finally {
      live.close();
    }
    const change = { type: 'workflow.ended', ids: [a.workflow.id] } as const;
    expect(encodeChange(change).map((p) => parseChange(p))).toEqual([change]);
  });

  it('deadlines: a subtask past its deadline is refused, its parent is not', async () => {
    const run = await start(['users-api'], 3_600_000);
    expect(
      await code(
        ctx.workflows.spawn({ parent: run.workflow.id, name: 'long', ttlMs: 7_200_000 }, 'admin:test'),
      ),
    ).toBe('CC_ERR_TICKET_WIDENING');
    const short = await ctx.workflows.spawn(
      { parent: run.workflow.id, name: 'short', ttlMs: 60_000 },
      'admin:test',
    );
    expect(short.tickets[0]!.expiresAt).toBe(new Date(T0 + 60_000).toISOString());
    const p = await ctx.identity.authenticate(short.key);
    expect(p.expiresAt).toBe(T0 + 60_000);
    clock.advance(60_001);
    expect(await code(ctx.identity.authenticate(short.key))).toBe('CC_ERR_WORKFLOW_EXPIRED');
    expect(await code(ctx.vault.exchange(short.env.USERS_API!, { principal: p, target: users }))).toBe(
      'CC_ERR_TICKET_EXPIRED',
    );
    expect(await code(ctx.workflows.spawn({ parent: short.workflow.id, name: 'x' }, 'admin:test'))).toBe(
      'CC_ERR_WORKFLOW_INACTIVE',
    );
    await expect(ctx.identity.authenticate(run.key)).resolves.toMatchObject({ kind: 'subtask' });
    // The whole run's deadline passes too.
    clock.advance(3_600_000);
    expect(await code(ctx.identity.authenticate(run.key))).toBe('CC_ERR_WORKFLOW_EXPIRED');
    expect((await ctx.workflows.get(run.workflow.id)).status).toBe('expired');
  });

  it('uses count up the chain, and revoking the starting agent stops every subtask key', async () => {
    const run = await start(['users-api']);
    const a = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'a', maxUses: 2 }, 'admin:test');
    expect(
      await code(ctx.workflows.spawn({ parent: a.workflow.id, name: 'b', maxUses: 3 }, 'admin:test')),
    ).toBe('CC_ERR_TICKET_WIDENING');
    const b = await ctx.workflows.spawn({ parent: a.workflow.id, name: 'b' }, 'admin:test');
    expect(b.tickets[0]!.maxUses).toBe(2);
    const pb = await ctx.identity.authenticate(b.key);
    await ctx.vault.exchange(b.env.USERS_API!, { principal: pb, target: users });
    await ctx.vault.exchange(b.env.USERS_API!, { principal: pb, target: users });
    const pa = await ctx.identity.authenticate(a.key);
    // b's two uses were a's too.
    expect(await code(ctx.vault.exchange(a.env.USERS_API!, { principal: pa, target: users }))).toBe(
      'CC_ERR_TICKET_EXHAUSTED',
    );
    await ctx.agents.revoke('planner', 'admin:test');
    expect(await code(ctx.identity.authenticate(b.key))).toBe('CC_ERR_WORKFLOW_REVOKED');
  });

  it("derives a ticket for another principal only for a node below the ticket's node", async () => {
    const run = await start(['users-api']);
    const other = await start(['users-api']);
    const a = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'a' }, 'admin:test');
    const b = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'b' }, 'admin:test');
    const agentTicket = await ctx.vault.issueTicket(
      { secret: 'users-api', principal: 'agent:agt_x' },
      'admin:test',
    );
    const refused = [
      ctx.vault.narrowForSubtask(a.tickets[0]!.id, b.workflow.id, {}, 'admin:test'), // sibling
      ctx.vault.narrowForSubtask(a.tickets[0]!.id, run.workflow.id, {}, 'admin:test'), // upwards
      ctx.vault.narrowForSubtask(a.tickets[0]!.id, a.workflow.id, {}, 'admin:test'), // itself
      ctx.vault.narrowForSubtask(other.tickets[0]!.id, a.workflow.id, {}, 'admin:test'), // another run
      ctx.vault.narrowForSubtask(agentTicket.view.id, a.workflow.id, {}, 'admin:test'), // not a workflow ticket
      ctx.vault.narrowForSubtask(run.tickets[0]!.id, 'wfl_nope', {}, 'admin:test'),
    ];
    for (const p of refused) expect(await code(p)).toBe('CC_ERR_WORKFLOW_NOT_DESCENDANT');
    // And `token narrow` keeps refusing a principal change.
    expect(
      await code(
        ctx.vault.narrowTicket(
          run.tickets[0]!.ticket,
          { principal: `subtask:${a.workflow.id}` },
          'admin:test',
        ),
      ),
    ).toBe('CC_ERR_TICKET_WIDENING');
    await expect(
      ctx.vault.narrowForSubtask(run.tickets[0]!.id, a.workflow.id, {}, 'admin:test'),
    ).resolves.toBeDefined();
  });

  it('policy sees a subtask as Subtask in its inherited groups', async () => {
    const run = await start(['users-api']);
    const a = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'fetch' }, 'admin:test');
    const p = await ctx.identity.authenticate(a.key);
    const dir = mkdtempSync(join(tmpdir(), 'coatcheck-wf-policy-'));
    try {
      writeFileSync(
        join(dir, 'p.cedar'),
        `permit(principal is Subtask, action == Action::"http:GET", resource == Connection::"users")
when { principal in Group::"ci" && context has workflow && context.workflow == "${run.workflow.id}" };\n`,
      );
      const engine = new PolicyEngine(loadPolicies(join(dir, 'p.cedar'), dir), { timeZone: 'UTC' });
      const decide = (principal: typeof p, workflow: string) =>
        engine.decide({
          principal,
          action: 'http:GET',
          resource: { type: 'Connection', id: 'users', attrs: { type: 'http' } },
          context: { workflow },
        }).effect;
      expect(decide(p, String(p.attributes.workflow))).toBe('allow');
      expect(decide(p, 'wfl_other')).toBe('deny');
      expect(decide({ ...p, groups: ['other'] }, String(p.attributes.workflow))).toBe('deny');
      expect(decide({ ...p, kind: 'agent' }, String(p.attributes.workflow))).toBe('deny');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('tokenizes a prompt for a node: secrets become tickets that node (and only it) can use', async () => {
    const run = await start(['users-api']);
    const a = await ctx.workflows.spawn({ parent: run.workflow.id, name: 'a' }, 'admin:test');
    const client = createLocalClient(ctx, 'admin:test');
    const result = await client.call('workflowTokenize', {
      id: a.workflow.id,
      text: `call the users API with ${CANARY} please`,
    });
    expect(result.text).toMatch(/^call the users API with cct_[0-9A-Za-z]{28} please$/);
    expect(result.tickets).toHaveLength(1);
    const reissued = (await ctx.workflows.show(a.workflow.id)).nodes[0]!.events;
    expect(reissued.map((e) => [e.kind, e.ticket])).toEqual([['reissued', result.tickets[0]!.id]]);
    const ticket = result.text.split(' ')[5]!;
    const pa = await ctx.identity.authenticate(a.key);
    const root = await ctx.identity.authenticate(run.key);
    expect((await ctx.vault.exchange(ticket, { principal: pa, target: users })).value.revealText()).toBe(
      CANARY,
    );
    expect(await code(ctx.vault.exchange(ticket, { principal: root, target: users }))).toBe(
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
    await ctx.workflows.end(a.workflow.id, 'admin:test');
    expect(await code(client.call('workflowTokenize', { id: a.workflow.id, text: `x ${CANARY}` }))).toBe(
      'CC_ERR_WORKFLOW_INACTIVE',
    );
  });

  it('names environment variables safely', () => {
    expect(envNameFor('github-token')).toBe('GITHUB_TOKEN');
    expect(envNameFor('db.password')).toBe('DB_PASSWORD');
    expect(envNameFor('path')).toBe('SECRET_PATH');
    expect(envNameFor('node-options')).toBe('SECRET_NODE_OPTIONS');
    expect(envNameFor('coatcheck-subtask-key')).toBe('SECRET_COATCHECK_SUBTASK_KEY');
    expect(envNameFor('1password')).toBe('_1PASSWORD');
    expect(renderEnv({ A: 'cct_x', B: "it's" })).toBe("A=cct_x\nB='it'\\''s'\n");
  });
});

describe('workflows: narrowing never widens (property)', () => {
  let t: TestHome;
  let ctx: Context;
  const clock = manualClock(T0);
  const hosts = ['a.example.com', 'b.example.com', '*.example.com', 'c.other.org', '*.other.org', 'api'];

  beforeAll(async () => {
    t = await makeTestHome();
    ctx = await t.open({ clock });
    await ctx.vault.addSecret(
      { name: 's1', value: Buffer.from('property-secret-one-0001'), allow: ['*.example.com', 'api'] },
      'admin:test',
    );
    await ctx.vault.addSecret(
      { name: 's2', value: Buffer.from('property-secret-two-0002'), allow: ['*.other.org', 'b.example.com'] },
      'admin:test',
    );
    await ctx.agents.create({ name: 'prop' }, 'admin:test');
  });
  afterAll(async () => {
    await ctx.close();
    t.remove();
  });

  const scope = fc.record({
    secrets: fc.option(fc.subarray(['s1', 's2', 's3']), { nil: undefined }),
    destinations: fc.option(fc.subarray(hosts, { maxLength: 3 }), { nil: undefined }),
    ttlMs: fc.option(fc.integer({ min: 1_000, max: 10_000_000 }), { nil: undefined }),
    maxUses: fc.option(fc.integer({ min: 1, max: 20 }), { nil: undefined }),
  });

  it('every spawned subtask holds a subset of its parent: secrets, destinations, lifetime, uses', async () => {
    const agent = await ctx.agents.get('prop');
    let spawned = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 5_000_000 }),
        fc.array(scope, { minLength: 1, maxLength: 4 }),
        async (rootTtl, scopes) => {
          const run = await ctx.workflows.start(
            { name: 'p', principal: `agent:${agent.id}`, groups: [], secrets: ['s1', 's2'], ttlMs: rootTtl },
            'admin:test',
          );
          let parentId = run.workflow.id;
          for (const s of scopes) {
            const parentTickets = await Promise.all(
              (await ctx.store.listWorkflowTickets(parentId)).map((id) => ctx.vault.inspectTicket(id)),
            );
            const parentNode = await ctx.workflows.get(parentId);
            let child: Awaited<ReturnType<typeof ctx.workflows.spawn>>;
            try {
              child = await ctx.workflows.spawn({ parent: parentId, name: 'c', ...s }, 'admin:test');
            } catch (error) {
              expect([
                'CC_ERR_TICKET_WIDENING',
                'CC_ERR_WORKFLOW_NOT_HELD',
                'CC_ERR_INVALID_ARGUMENT',
              ]).toContain((error as { code: string }).code);
              continue;
            }
            const childNode = child.workflow;
            if (parentNode.expiresAt !== null) {
              expect(Date.parse(childNode.expiresAt!)).toBeLessThanOrEqual(Date.parse(parentNode.expiresAt));
            }
            for (const ct of child.tickets) {
              const pt = parentTickets.find((p) => p.secret === ct.secret);
              expect(pt).toBeDefined();
              const outer = pt!.destinations.map((d) => parseDestination(d));
              for (const d of ct.destinations) expect(coveredByAny(outer, parseDestination(d))).toBe(true);
              expect(Date.parse(ct.expiresAt!)).toBeLessThanOrEqual(Date.parse(pt!.expiresAt!));
              if (pt!.maxUses !== null) expect(ct.maxUses).not.toBeNull();
              if (pt!.maxUses !== null) expect(ct.maxUses!).toBeLessThanOrEqual(pt!.maxUses - pt!.uses);
              const view = await ctx.vault.inspectTicket(ct.id);
              expect(view.principal).toBe(`subtask:${childNode.id}`);
              expect(view.parentId).toBe(pt!.id);
            }
            const childSecrets = new Set(child.tickets.map((x) => x.secret));
            for (const secret of childSecrets) {
              expect(parentTickets.some((p) => p.secret === secret && p.status === 'active')).toBe(true);
            }
            spawned++;
            parentId = childNode.id;
          }
        },
      ),
      { numRuns: 60 },
    );
    // The property is not vacuous: many spawns succeeded (and many were refused).
    expect(spawned).toBeGreaterThan(5);
  });
});

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { manualClock } from '../../src/core/clock.js';
import { CoatcheckError } from '../../src/core/errors.js';
import type { Principal } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-subtask-cache-7f3e9a1c5b2d';
const T0 = Date.parse('2026-01-01T00:00:00Z');
const users = { connection: 'users', host: 'users.corp.example', port: 443 };

/** The refusal's code, and whether it was the check in the audit transaction. */
async function outcome(promise: Promise<unknown>): Promise<{ code: string; atCommit: boolean }> {
  try {
    await promise;
  } catch (error) {
    if (!(error instanceof CoatcheckError)) throw error;
    return { code: error.code, atCommit: error.details?.checkedAt === 'commit' };
  }
  return { code: 'ok', atCommit: false };
}

/**
 * A subtask key's check (its node, every ancestor, the agent that started the run) is
 * served from a cache for a few seconds, since a subtask presents its key on every request.
 * Nothing that ends a key may be served late from it: a revocation or end here or in another
 * process, a deadline, the starting agent's revocation or expiry, a change that lands while
 * the cache is being filled, and a revocation no notice reports (caught where the secret is
 * released).
 */
describe('subtask keys checked from a cache', () => {
  let t: TestHome;
  let ctx: Context;
  const clock = manualClock(T0);
  let reads: number;

  beforeEach(async () => {
    clock.set(T0);
    t = await makeTestHome();
    ctx = await t.open({ clock });
    await ctx.vault.addSecret(
      { name: 'users-api', value: Buffer.from(CANARY), allow: ['users', '*.corp.example'] },
      'admin:test',
    );
    await ctx.agents.create({ name: 'planner', groups: ['ci'], ttlMs: 7_200_000 }, 'admin:test');
    reads = 0;
    for (const method of ['getWorkflowByKeyHash', 'getWorkflow', 'getAgentById'] as const) {
      const read = ctx.store[method].bind(ctx.store) as (id: string) => Promise<unknown>;
      (ctx.store as unknown as Record<string, unknown>)[method] = (id: string) => {
        reads++;
        return read(id);
      };
    }
  });
  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  /** A run started by agent `by` (`ttlMs`: the run's deadline; the workflows' default if unset). */
  async function startRun(by: string, ttlMs?: number) {
    const agent = await ctx.agents.get(by);
    const run = await ctx.workflows.start(
      {
        name: 'run',
        principal: `agent:${agent.id}`,
        groups: agent.groups,
        secrets: ['users-api'],
        ...(ttlMs === undefined ? {} : { ttlMs }),
      },
      'admin:test',
    );
    return { agent, run };
  }

  /** A run and a chain of three subtasks below it; the deepest node's key checked once (cached). */
  async function deepNode() {
    const { agent, run } = await startRun('planner');
    let node = run;
    const nodes = [run];
    for (let depth = 1; depth <= 3; depth++) {
      node = await ctx.workflows.spawn({ parent: node.workflow.id, name: `step${depth}` }, 'admin:test');
      nodes.push(node);
    }
    const principal = await ctx.identity.authenticate(node.key);
    expect(principal).toMatchObject({ kind: 'subtask', attributes: { subtask: node.workflow.id } });
    return { agent, run, node, nodes, principal };
  }

  it('serves a key checked a moment ago without reading the store (the control)', async () => {
    const { node } = await deepNode();
    const before = reads;
    for (let i = 0; i < 5; i++) await ctx.identity.authenticate(node.key);
    expect(reads - before).toBe(0);
    // Older than the cache's window: read again.
    clock.advance(5_001);
    await ctx.identity.authenticate(node.key);
    expect(reads - before).toBe(5); // the node, three ancestors, the agent
  });

  it.each([
    ['the node revoked', 'revoke', 3, 'CC_ERR_WORKFLOW_REVOKED'],
    ['the run (its root) revoked', 'revoke', 0, 'CC_ERR_WORKFLOW_REVOKED'],
    ['the node ended', 'end', 3, 'CC_ERR_WORKFLOW_ENDED'],
    ['a middle ancestor ended', 'end', 2, 'CC_ERR_WORKFLOW_ENDED'],
  ] as const)('%s: the cached key is refused at the very next request', async (_, how, index, expected) => {
    const { node, nodes } = await deepNode();
    await ctx.workflows[how](nodes[index]!.workflow.id, 'admin:test');
    expect(await outcome(ctx.identity.authenticate(node.key))).toEqual({ code: expected, atCommit: false });
  });

  it('the agent that started the run revoked, or past its own expiry: the cached key is refused', async () => {
    const { node } = await deepNode();
    await ctx.agents.revoke('planner', 'admin:test');
    expect(await outcome(ctx.identity.authenticate(node.key))).toMatchObject({
      code: 'CC_ERR_WORKFLOW_REVOKED',
    });

    await ctx.agents.create({ name: 'short', ttlMs: 60_000 }, 'admin:test');
    const { run } = await startRun('short', 30_000);
    await ctx.identity.authenticate(run.key);
    // The run's own deadline is 30 s and the agent's 60 s: past the run's, refused as expired.
    clock.advance(30_001);
    expect(await outcome(ctx.identity.authenticate(run.key))).toMatchObject({
      code: 'CC_ERR_WORKFLOW_EXPIRED',
    });
  });

  it("the agent's expiry is read against the clock on every use, not when the key was cached", async () => {
    await ctx.agents.create({ name: 'brief', ttlMs: 60_000 }, 'admin:test');
    // The run may outlive its agent's key: the agent's expiry still ends it.
    const { run } = await startRun('brief', 3_600_000);
    clock.advance(57_000);
    await ctx.identity.authenticate(run.key); // cached 3 s before the agent's expiry
    const before = reads;
    clock.advance(3_001); // past it, with the entry still within the cache's window
    expect(await outcome(ctx.identity.authenticate(run.key))).toMatchObject({
      code: 'CC_ERR_WORKFLOW_REVOKED',
    });
    expect(reads - before).toBe(0); // refused from the cached rows, by the clock
  });

  it('a deadline that passes while the key is cached is refused at once', async () => {
    const { run } = await startRun('planner', 3_000);
    await ctx.identity.authenticate(run.key);
    clock.advance(3_001);
    expect(await outcome(ctx.identity.authenticate(run.key))).toMatchObject({
      code: 'CC_ERR_WORKFLOW_EXPIRED',
    });
  });

  it('a revocation by another process (the CLI on the same store) is refused at the very next request', async () => {
    const other = await t.open({ clock });
    try {
      const { node, nodes } = await deepNode();
      await other.workflows.revoke(nodes[1]!.workflow.id, 'admin:cli');
      expect(await outcome(ctx.identity.authenticate(node.key))).toEqual({
        code: 'CC_ERR_WORKFLOW_REVOKED',
        atCommit: false,
      });
      const second = await deepNode();
      await other.agents.revoke('planner', 'admin:cli');
      expect(await outcome(ctx.identity.authenticate(second.node.key))).toMatchObject({
        code: 'CC_ERR_WORKFLOW_REVOKED',
      });
    } finally {
      await other.close();
    }
  });

  it('a revocation that lands while the key is being read is not kept: the next request is refused', async () => {
    const { run } = await startRun('planner');
    // The first read returns the node as it was, and the revocation commits before the
    // check finishes: that answer must not fill the cache.
    const read = ctx.store.getWorkflowByKeyHash;
    let raced = false;
    ctx.store.getWorkflowByKeyHash = async (hash) => {
      const row = await read(hash);
      if (!raced) {
        raced = true;
        await ctx.workflows.revoke(run.workflow.id, 'admin:test');
      }
      return row;
    };
    // The request in flight read the node before the revocation; its release is still
    // checked against the store where its audit record is written.
    const principal = await ctx.identity.authenticate(run.key);
    expect(await outcome(ctx.vault.exchange(run.env.USERS_API!, { principal, target: users }))).toMatchObject(
      {
        code: expect.stringMatching(/^CC_ERR_(TICKET_REVOKED|WORKFLOW_ENDED)$/),
      },
    );
    expect(await outcome(ctx.identity.authenticate(run.key))).toEqual({
      code: 'CC_ERR_WORKFLOW_REVOKED',
      atCommit: false,
    });
  });

  it.each([
    ['the starting agent', 'CC_ERR_WORKFLOW_REVOKED'],
    ['the node', 'CC_ERR_WORKFLOW_ENDED'],
  ] as const)(
    '%s revoked with no notice (a missed change): the release is refused where it is audited',
    async (what, expected) => {
      const { agent, node, principal } = await deepNode();
      const exchange = (p: Principal) =>
        ctx.vault.exchange(node.env.USERS_API!, { principal: p, target: users });
      expect((await exchange(principal)).value.revealText()).toBe(CANARY); // the control
      // Written on the server's own connection with no change notice: the cache still holds
      // the live rows and keeps serving the key.
      if (what === 'the starting agent') await ctx.store.revokeAgent(agent.id, clock.now());
      else await ctx.store.endWorkflowTree(node.workflow.id, 'revoked', clock.now());
      const served = await ctx.identity.authenticate(node.key);
      expect(await outcome(exchange(served))).toEqual({ code: expected, atCommit: true });
      const released = (await ctx.audit.tail(50)).filter(
        (r) => r.type === 'token.exchange' && r.actor === served.ref,
      );
      expect(released.length).toBe(1); // the control only
      expect(JSON.stringify(await ctx.audit.tail(50))).not.toContain(CANARY);
    },
  );
});

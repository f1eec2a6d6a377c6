import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { GateServices } from '../../src/approvals/gate.js';
import type { Principal } from '../../src/core/principal.js';
import {
  createStatementPolicy,
  type StatementRequest,
  type StatementVerdict,
} from '../../src/frontends/postgres/statement-policy.js';
import { loadPolicies } from '../../src/policy/load-policies.js';
import { PolicyEngine, type PolicyRequest } from '../../src/policy/policy-engine.js';
import type { PolicyHolder } from '../../src/policy/policy-holder.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * A statement the policy did not allow outright goes through the gate, which decides again.
 * When that second decision is an allow (the policy was reloaded in between), the gate does
 * not wait for its `policy.decision` record: the statement policy must, before the
 * statement runs; a record that cannot be written refuses the statement.
 */
const HELD = `@id("held") @approval("required") permit(principal, action == Action::"sql:write", resource);
permit(principal, action == Action::"sql:read", resource);`;
const FORBIDDEN = `@id("no-writes") forbid(principal, action == Action::"sql:write", resource);
permit(principal, action, resource);`;
const OPEN = '@id("open") permit(principal, action, resource);';

const principal: Principal = {
  kind: 'agent',
  ref: 'agent:agt_statement',
  name: 'statement',
  groups: [],
  attributes: {},
  expiresAt: null,
};

function request(text: string): StatementRequest {
  return {
    principal,
    connection: 'orders',
    cls: 'write',
    kind: 'insert',
    tables: ['deploys'],
    functions: [],
    text,
    shown: text,
    parameters: null,
    shownParameters: null,
    tickets: [],
    preparation: false,
    onHold: () => undefined,
  };
}

/** Refusals come back as a verdict or a rejection (the relay ends the session on one): one shape here. */
async function settled(verdict: StatementVerdict | Promise<StatementVerdict>) {
  return Promise.resolve(verdict).then(
    (v) => v,
    (error: { code?: string }) => ({ allow: false as const, code: error.code ?? 'thrown' }),
  );
}

describe('statement policy: an allow from the gate waits for its policy.decision record', () => {
  let t: TestHome;
  let ctx: Context;

  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
  });
  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  /** The gate's services with a policy that is reloaded (to OPEN) right after the statement's own decision. */
  function reloadedAfterFirstDecision(first: string): GateServices {
    const file = (name: string, text: string) => {
      const path = join(t.dir, name);
      writeFileSync(path, text);
      return loadPolicies(path, t.dir);
    };
    let reloaded = false;
    class ReloadedAfter extends PolicyEngine {
      override decide(r: PolicyRequest) {
        const decision = super.decide(r);
        reloaded = true;
        return decision;
      }
    }
    const before = new ReloadedAfter(file('first.cedar', first), { timeZone: 'UTC' });
    const after = new PolicyEngine(file('open.cedar', OPEN), { timeZone: 'UTC' });
    const policy = {
      path: join(t.dir, 'first.cedar'),
      get engine() {
        return reloaded ? after : before;
      },
    } as unknown as PolicyHolder;
    return { policy, approvals: ctx.approvals, audit: ctx.audit, holdTimeoutMs: 1000 };
  }

  const decisions = async () =>
    (await ctx.store.readAudit(0, 10_000)).filter((r) => r.type === 'policy.decision');

  for (const [name, first] of [
    ['held for approval', HELD],
    ['forbidden', FORBIDDEN],
  ] as const) {
    it(`${name}, then allowed by the reloaded policy: allowed only once its record is durable`, async () => {
      const policy = createStatementPolicy(reloadedAfterFirstDecision(first))!;
      const verdict = await settled(policy(request('INSERT INTO deploys VALUES (1)')));
      expect(verdict).toEqual({ allow: true });
      // Durable when the verdict came: nothing more was flushed in between.
      const recorded = await decisions();
      expect(recorded.map((r) => (r.data as { effect: string }).effect)).toEqual(['allow']);
    });

    it(`${name}, then allowed by the reloaded policy, with the record failing: refused`, async () => {
      const policy = createStatementPolicy(reloadedAfterFirstDecision(first))!;
      const db = new Database(join(t.home.dir, 'coatcheck.db'));
      db.exec(
        `CREATE TRIGGER decisions_down BEFORE INSERT ON audit WHEN NEW.type = 'policy.decision' BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
      );
      try {
        const verdict = await settled(policy(request('INSERT INTO deploys VALUES (2)')));
        expect(verdict).toMatchObject({ allow: false, code: 'CC_ERR_AUDIT_UNAVAILABLE' });
      } finally {
        db.exec('DROP TRIGGER decisions_down');
        db.close();
      }
      expect(await decisions()).toEqual([]);
    });
  }
});

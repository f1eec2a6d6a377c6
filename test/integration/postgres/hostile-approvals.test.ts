import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { BackendMessage } from '../../../src/frontends/postgres/protocol/messages.js';
import { errorField, type RawClient } from './raw-client.js';
import {
  B,
  CANARY,
  D,
  E,
  login,
  P,
  type RelayFixture,
  readies,
  S,
  scalar,
  startRelayFixture,
} from './relay-fixture.js';

let f: RelayFixture;

beforeAll(async () => {
  f = await startRelayFixture();
}, 120_000);

afterAll(async () => {
  await f?.close();
});

beforeEach(async () => {
  await scalar(f, 'TRUNCATE people');
  await scalar(
    f,
    "INSERT INTO people SELECT i, 'name-' || i, 'SECRET-' || i, 'SSN-' || i FROM generate_series(1, 10) i",
  );
});

const approver = { ref: 'human:approver@example.com', name: 'approver', groups: [] as string[] };

/** The approval a held statement waits for, from the client's notice. */
function heldFor(messages: readonly BackendMessage[]): string | null {
  for (const m of messages) {
    if (m.type !== 'NoticeResponse') continue;
    const text = m.fields.find(([k]) => k === 'M')?.[1] ?? '';
    const id = /waits for approval (apr_[0-9A-Za-z]+)/.exec(text)?.[1];
    if (id !== undefined) return id;
  }
  return null;
}

async function approve(id: string): Promise<void> {
  await f.gw.ctx.approvals.decide(id, { approver, decision: 'approve' }, 'admin:test');
}

/** Run a statement that needs approval: it is held (times out), approved, and retried. */
async function approvedOnce(c: RawClient, send: () => void): Promise<BackendMessage[]> {
  send();
  const held = await readies(c, 1);
  const id = heldFor(held);
  expect(id).not.toBeNull();
  expect(errorField(held, 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
  await approve(id!);
  send();
  return readies(c, 1);
}

const people = () => scalar(f, 'SELECT count(*)::int FROM people');

describe('an approval binds the whole statement, its parameters and its tickets', () => {
  it('an approval for a padded INSERT is not spent by a padded DELETE', async () => {
    const pad = `/*${'z'.repeat(9000)}*/`;
    const c = await login(f);
    const ran = await approvedOnce(c, () => c.query(`${pad} INSERT INTO people (id) VALUES (11)`));
    expect(errorField(ran, 'D')).toBeNull();
    // A second approval for the INSERT, left unused.
    c.query(`${pad} INSERT INTO people (id) VALUES (11)`);
    const id = heldFor(await readies(c, 1));
    await approve(id!);
    c.query(`${pad} DELETE FROM people`);
    const got = await readies(c, 1);
    expect(errorField(got, 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    expect(await people()).toBe(11);
    c.close();
  });

  it('an approval for a statement with ticket A is not spent with ticket B', async () => {
    const a = await f.gw.issue('canary', f.ref, ['conn:main']);
    const b = await f.gw.issue('canary', f.ref, ['conn:main']);
    const c = await login(f);
    c.query(`UPDATE people SET name = '${a}' WHERE id = 1`);
    await approve(heldFor(await readies(c, 1))!);
    c.query(`UPDATE people SET name = '${b}' WHERE id = 1`);
    const got = await readies(c, 1);
    expect(errorField(got, 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    expect(await scalar(f, 'SELECT name FROM people WHERE id = 1')).toBe('name-1');
    c.close();
  });

  it('an approval for one literal is not spent by another (variant: differences past 500 characters)', async () => {
    const c = await login(f);
    const long = 'w'.repeat(600);
    c.query(`UPDATE people SET name = '${long}a' WHERE id = 2`);
    const id = heldFor(await readies(c, 1));
    const view = await f.gw.ctx.approvals.get(id!);
    // The approver sees the whole statement, and so does the decision's audit record.
    expect(view.operation.summary).toContain(`'${long}a' WHERE ID = 2`);
    await f.gw.ctx.audit.flush();
    const decisions = (await f.gw.ctx.store.readAudit(0, 100_000)).filter(
      (r) => r.type === 'policy.decision',
    );
    expect(
      decisions.some((r) =>
        String((r.data as { summary?: string }).summary).includes(`'${long}a' WHERE ID = 2`),
      ),
    ).toBe(true);
    await approve(id!);
    c.query(`UPDATE people SET name = '${long}b' WHERE id = 2`);
    expect(errorField(await readies(c, 1), 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    c.close();
  });

  it('an approver is shown no secret typed into the statement (variant)', async () => {
    const c = await login(f);
    c.query(`UPDATE people SET name = '${CANARY}' WHERE id = 3`);
    const id = heldFor(await readies(c, 1));
    const view = await f.gw.ctx.approvals.get(id!);
    expect(JSON.stringify(view)).not.toContain(CANARY);
    expect(view.operation.summary).toContain('[secret:');
    c.close();
  });

  it('the approval keeps no plain hash of the statement, its parameters or tickets (a guessable secret stays unguessable)', async () => {
    const { createHash } = await import('node:crypto');
    const c = await login(f);
    const statement = "UPDATE people SET name = 'hunter22' WHERE id = 3";
    c.query(statement);
    const id = heldFor(await readies(c, 1));
    const view = await f.gw.ctx.approvals.get(id!);
    const stored = JSON.stringify(view);
    // The normalised text is what was hashed; try it and the raw text, as a guesser would.
    for (const text of [
      statement,
      statement.toUpperCase(),
      "UPDATE PEOPLE SET NAME = 'hunter22' WHERE ID = 3",
    ]) {
      expect(stored).not.toContain(createHash('sha256').update(text).digest('hex'));
    }
    expect(stored).toMatch(/"statement_hash":"[0-9a-f]{64}"/);
    // And the decision record keeps the whole (scrubbed) summary of a long statement.
    c.close();
  });
});

describe('each execution is decided', () => {
  it('PREPARE approved once does not let EXECUTE run unheld', async () => {
    const c = await login(f);
    c.query('PREPARE del(int) AS DELETE FROM people WHERE id = $1');
    let got = await readies(c, 1);
    const prepareHeld = heldFor(got);
    if (prepareHeld !== null) {
      await approve(prepareHeld);
      c.query('PREPARE del(int) AS DELETE FROM people WHERE id = $1');
      got = await readies(c, 1);
    }
    expect(errorField(got, 'D')).toBeNull();
    for (const n of [1, 2, 3]) {
      c.query(`EXECUTE del(${n})`);
      expect(errorField(await readies(c, 1), 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    }
    expect(await people()).toBe(10);
    // Approved with its argument, it runs once.
    const ran = await approvedOnce(c, () => c.query('EXECUTE del(4)'));
    expect(errorField(ran, 'D')).toBeNull();
    expect(await people()).toBe(9);
    c.query('EXECUTE del(5)');
    expect(errorField(await readies(c, 1), 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    c.close();
  });

  it('a protocol Parse approved once is not bound with other parameters', async () => {
    const c = await login(f);
    const batch = (n: string) =>
      Buffer.concat([P('', 'DELETE FROM people WHERE id > $1'), B('', '', [n]), D('P', ''), E(''), S]);
    const ran = await approvedOnce(c, () => c.write(batch('1000')));
    expect(errorField(ran, 'D')).toBeNull();
    expect(await people()).toBe(10);
    c.write(batch('0'));
    expect(errorField(await readies(c, 1), 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    // Nor a named statement rebound without a new Parse (variant).
    c.write(Buffer.concat([P('named', 'DELETE FROM people WHERE id > $1'), S]));
    await readies(c, 1);
    c.write(Buffer.concat([B('', 'named', ['0']), E(''), S]));
    expect(errorField(await readies(c, 1), 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    expect(await people()).toBe(10);
    c.close();
  });

  it('EXECUTE of a prepared write is a write: a read-only connection refuses it (variant)', async () => {
    const c = await login(f, 'ro');
    c.query('PREPARE rodel AS DELETE FROM people');
    const prepared = await readies(c, 1);
    expect(errorField(prepared, 'D')).toBe('CC_ERR_PG_STATEMENT_DENIED');
    c.close();
    const d = await login(f, 'ro');
    // Prepared by a function the classifier lets through? No: any EXECUTE of an unknown name is refused.
    d.query('EXECUTE rodel');
    expect(errorField(await readies(d, 1), 'D')).toBe('CC_ERR_PG_STATEMENT_DENIED');
    expect(await people()).toBe(10);
    d.close();
  });

  it('EXECUTE hidden after a SELECT in one Query is held too (variant)', async () => {
    const c = await login(f);
    c.query('PREPARE del2(int) AS DELETE FROM people WHERE id = $1');
    await readies(c, 1);
    c.query('SELECT 1; EXECUTE del2(7)');
    expect(errorField(await readies(c, 1), 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    expect(await people()).toBe(10);
    c.close();
  });

  it('a named Parse over an existing name does not change what the name runs (variant)', async () => {
    const c = await login(f);
    c.write(Buffer.concat([P('dup', 'DELETE FROM people'), S]));
    await readies(c, 1);
    // PostgreSQL refuses the second Parse and keeps the DELETE; the gateway must not think it is a SELECT.
    c.write(Buffer.concat([P('dup', 'SELECT 1'), S]));
    await readies(c, 1);
    c.write(Buffer.concat([B('', 'dup'), E(''), S]));
    expect(errorField(await readies(c, 1), 'D')).toBe('CC_ERR_APPROVAL_REQUIRED');
    expect(await people()).toBe(10);
    c.close();
  });
});

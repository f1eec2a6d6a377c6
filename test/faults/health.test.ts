import { existsSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import type { Context } from '../../src/server/context.js';
import { untypedEvent } from '../helpers/audit.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// Health must say what the data path will do: a replica whose store does not answer or
// whose audit writes fail refuses every exchange, so it is not healthy.
describe('health under faults', () => {
  let t: TestHome;
  let ctx: Context;
  let admin: AdminServer;
  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'silent' }));
  });
  afterEach(async () => {
    await admin.close();
    await ctx.close().catch(() => undefined);
    t.remove();
  });

  const probe = async (path: string) => {
    const res = await fetch(`${admin.url}${path}`);
    return {
      status: res.status,
      body: (await res.json()) as { ok: boolean; checks: Record<string, string> },
    };
  };

  function tamper(sql: string) {
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.exec(sql);
    db.close();
  }

  it('/readyz answers 200 with its checks when all is well; /healthz says the process is live', async () => {
    void ctx.policy.engine;
    expect(await probe('/readyz')).toEqual({
      status: 200,
      body: { ok: true, checks: { store: 'ok', audit: 'ok', policy: 'ok' } },
    });
    expect(await probe('/healthz')).toEqual({ status: 200, body: { ok: true } });
  });

  it('/readyz is 503 until the policy set is loaded', async () => {
    expect(await probe('/readyz')).toMatchObject({
      status: 503,
      body: { ok: false, checks: { store: 'ok', audit: 'ok', policy: 'not-loaded' } },
    });
    void ctx.policy.engine;
    expect((await probe('/readyz')).status).toBe(200);
  });

  it('/readyz is 503 while the process drains; /healthz stays 200 (liveness is not readiness)', async () => {
    void ctx.policy.engine;
    let draining = false;
    const second = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'silent' }), {
      draining: () => draining,
    });
    try {
      expect((await fetch(`${second.url}/readyz`)).status).toBe(200);
      draining = true;
      const res = await fetch(`${second.url}/readyz`);
      expect(res.status).toBe(503);
      expect(await res.json()).toMatchObject({ ok: false, draining: true, checks: { store: 'ok' } });
      expect((await fetch(`${second.url}/healthz`)).status).toBe(200);
    } finally {
      await second.close();
    }
  });

  it('a failing audit write (disk full) makes /readyz 503 until a write succeeds again; /healthz stays 200', async () => {
    void ctx.policy.engine;
    tamper(`CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END`);
    await expect(
      ctx.audit.append(untypedEvent({ type: 'test', actor: 'admin:test', data: {} })),
    ).rejects.toMatchObject({
      code: 'CC_ERR_AUDIT_UNAVAILABLE',
    });
    expect(await probe('/readyz')).toMatchObject({
      status: 503,
      body: { ok: false, checks: { audit: 'failing' } },
    });
    expect((await probe('/healthz')).status).toBe(200);
    tamper('DROP TRIGGER audit_down');
    await ctx.audit.append(untypedEvent({ type: 'test', actor: 'admin:test', data: {} }));
    expect((await probe('/readyz')).status).toBe(200);
  });

  it('a store that no longer answers makes /readyz 503; /healthz stays 200', async () => {
    void ctx.policy.engine;
    await ctx.store.close();
    expect(await probe('/readyz')).toMatchObject({
      status: 503,
      body: { ok: false, checks: { store: 'unavailable' } },
    });
    expect((await probe('/healthz')).status).toBe(200);
  });

  it('every failed audit write reaches the failure hook (the server logs it) with its cause and no value from the batch', async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const canary = 'canary-health-Pw3Kd8Qz1';
    const previous = ctx.audit.onFailure;
    const log = pino({ level: 'info' }, sink);
    ctx.audit.onFailure = (cause) =>
      log.error({ code: 'CC_ERR_AUDIT_UNAVAILABLE', errName: (cause as Error).name }, 'audit write failed');
    tamper(`CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END`);
    await expect(
      ctx.audit.append(untypedEvent({ type: 'test', actor: 'admin:test', data: { value: canary } })),
    ).rejects.toBeDefined();
    ctx.audit.onFailure = previous;
    expect(lines.join('')).toContain('CC_ERR_AUDIT_UNAVAILABLE');
    expect(lines.join('')).not.toContain(canary);
  });
});

describe('a missing SQLite store', () => {
  let t: TestHome;
  afterEach(() => t.remove());

  it('is refused with CC_ERR_STORE_MISSING, and no empty database is left in its place', async () => {
    t = await makeTestHome();
    const db = join(t.home.dir, 'coatcheck.db');
    renameSync(db, join(t.dir, 'moved.db'));
    await expect(t.open()).rejects.toMatchObject({ code: 'CC_ERR_STORE_MISSING' });
    expect(existsSync(db)).toBe(false);
    // Restored, it opens as before.
    renameSync(join(t.dir, 'moved.db'), db);
    const ctx = await t.open();
    await ctx.close();
  });
});

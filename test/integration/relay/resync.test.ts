import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { type RelayListener, startRelayListener } from '../../../src/relay/listener.js';
import { type RunningRelay, runRelay } from '../../../src/relay/run-relay.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { openProxyCa } from '../../../src/vault/proxy-ca.js';

/**
 * A resync means change notices may have been missed, a relay's revocation among them. If
 * the hub then cannot read whether a relay is still live (the store fails), it cannot rule
 * the revocation out: the relay's sessions are dropped (fail closed), and the relay is let
 * back in only once the store answers again.
 */
let dir: string;
let ctx: Context;
let listener: RelayListener;
let relay: RunningRelay;
let relayKey: string;
let logText = '';

const startRelay = () =>
  runRelay({
    gateway: `https://127.0.0.1:${listener.port}`,
    key: relayKey,
    ca: listener.ca.cert,
    allow: [],
    log: createLogger({ level: 'silent' }),
    backoff: { minMs: 50, maxMs: 100 },
  });

const database = () => new Database(join(dir, 'coatcheck.db'));
async function until(check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-relay-resync-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
  ctx = await openContext(home, { env: {} });
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk: Buffer, _e, cb) {
        logText += chunk.toString('utf8');
        cb();
      },
    }),
  });
  listener = await startRelayListener({
    address: { host: '127.0.0.1', port: 0 },
    ca: await openProxyCa(ctx.store, ctx.keys.masters),
    serverNames: [],
    relays: ctx.relays,
    hub: ctx.relayHub,
    audit: ctx.audit,
    log,
  });
  relayKey = (await ctx.relays.create('edge', 'admin:test')).key;
  relay = startRelay();
  await until(() => ctx.relayHub.sessions('edge') === 1);
}, 60_000);

afterAll(async () => {
  await relay?.stop();
  await listener?.close();
  await ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('relay hub: liveness that cannot be read after a resync', () => {
  it('drops the relay (a revocation may have been missed); it comes back once the store answers', async () => {
    const disconnects = async () =>
      (await ctx.store.readAudit(0, 10_000)).filter((r) => r.type === 'relay.disconnect');
    const before = (await disconnects()).length;
    // The store cannot answer whether the relay is live: its table is gone for now.
    const db = database();
    db.exec('ALTER TABLE relays RENAME TO relays_away');
    try {
      await ctx.store.publish({ type: 'resync' });
      await until(() => ctx.relayHub.sessions('edge') === 0);
    } finally {
      db.exec('ALTER TABLE relays_away RENAME TO relays');
      db.close();
    }
    await ctx.audit.flush();
    // While the store could not answer, the relay's reconnection was refused too (its key
    // could not be looked up) and it gave up; started again, it is let back in.
    await relay.stop();
    relay = startRelay();
    await until(() => ctx.relayHub.sessions('edge') === 1);
    const dropped = (await disconnects()).slice(before);
    expect(dropped.map((r) => (r.data as { reason: string }).reason)).toContain('unverified');
    expect(logText).not.toContain(relayKey);
  });
});

import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { createLogger } from '../../src/core/logger.js';
import { type RelayListener, startRelayListener } from '../../src/relay/listener.js';
import { type RunningRelay, runRelay } from '../../src/relay/run-relay.js';
import type { Context } from '../../src/server/context.js';
import { openProxyCa } from '../../src/vault/proxy-ca.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * Relays in the web console (docs/relay.md), in a real headless Chromium: each relay with
 * its status (connected, disconnected, never connected, revoked), the sessions on the
 * replica that answered, when and from where it was last seen and on which replica, and a
 * Revoke button that drops a live relay's session. Connections show the relay they go
 * through. Text a store can hold is rendered as text (a hostile record does not run).
 */
const CHROMIUM = process.env.COATCHECK_CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = mkdtempSync(join(tmpdir(), 'coatcheck-console-shots-'));
const HOSTILE_NAME = '<img src=x onerror="window.__xss=1">';
const HOSTILE_ADDRESS = '<script>window.__xss=2</script>';
const HOSTILE_REPLICA = '"><svg onload="window.__xss=3">';

describe('console: relays', { timeout: 120_000 }, () => {
  let t: TestHome;
  let ctx: Context;
  let admin: AdminServer;
  let listener: RelayListener;
  let browser: Browser;
  let running: RunningRelay;
  let relayKey: string;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`chromium is not installed at ${CHROMIUM}`);
    t = await makeTestHome();
    ctx = await t.open();
    const log = createLogger({ level: 'silent' });
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, log);
    listener = await startRelayListener({
      address: { host: '127.0.0.1', port: 0 },
      ca: await openProxyCa(ctx.store, ctx.keys.masters),
      serverNames: [],
      relays: ctx.relays,
      hub: ctx.relayHub,
      audit: ctx.audit,
      log,
    });
    // A live relay, connected now.
    relayKey = (await ctx.relays.create('site-a', 'admin:test')).key;
    running = runRelay({
      gateway: `https://127.0.0.1:${listener.port}`,
      key: relayKey,
      ca: listener.ca.cert,
      allow: [],
      log,
      backoff: { minMs: 50, maxMs: 200 },
    });
    for (let i = 0; i < 400 && ctx.relayHub.sessions('site-a') !== 1; i++)
      await new Promise((r) => setTimeout(r, 50));
    if (ctx.relayHub.sessions('site-a') !== 1) throw new Error('the relay did not connect');
    // One last seen an hour ago (disconnected), one never connected, one revoked.
    const now = Date.now();
    await ctx.relays.create('site-b', 'admin:test');
    const b = (await ctx.store.listRelays()).find((r) => r.name === 'site-b')!;
    await ctx.store.touchRelay(b.id, now - 3600_000, '10.9.8.7:41000', 'gw-old/7');
    await ctx.relays.create('site-c', 'admin:test');
    await ctx.relays.create('site-d', 'admin:test');
    await ctx.relays.revoke('site-d', 'admin:test');
    // A record with text no API would accept (as a store written elsewhere may hold).
    await ctx.store.insertRelay({
      id: 'rly_hostile0000000000001',
      name: HOSTILE_NAME,
      keyHash: 'not-a-real-key-hash',
      createdAt: now,
      revokedAt: null,
      lastSeenAt: now - 7200_000,
      lastAddress: HOSTILE_ADDRESS,
      lastReplica: HOSTILE_REPLICA,
    });
    await ctx.connections.add(
      { name: 'orders', type: 'http', url: 'https://orders.internal', via: 'site-a' },
      'admin:test',
    );
    await ctx.connections.add({ name: 'public', type: 'http', url: 'https://api.example.com' }, 'admin:test');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
  });

  afterAll(async () => {
    await running?.stop();
    await browser?.close();
    await listener?.close();
    await admin?.close();
    await ctx?.close();
    t?.remove();
  });

  async function open(hash: string): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('dialog', (d) => void d.accept());
    await page.goto(`${admin.url}/console/`);
    await page.getByLabel('Admin key').fill(t.adminKey);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForSelector('#logout');
    await page.goto(`${admin.url}/console/${hash}`);
    await page.waitForSelector('table');
    return page;
  }

  /** The cells of the row whose header is `name`, by column label. */
  async function row(page: Page, name: string): Promise<Record<string, string>> {
    const labels = await page.$$eval('thead th', (ths) => ths.map((th) => th.textContent ?? ''));
    const cells = await page
      .locator('tbody tr', { has: page.locator('th', { hasText: name }) })
      .first()
      .locator('th, td')
      .allInnerTexts();
    return Object.fromEntries(labels.map((l, i) => [l, (cells[i] ?? '').trim()]));
  }

  it('lists relays with status, sessions here, last seen, from where and on which replica', async () => {
    const page = await open('#/relays');
    expect(await page.locator('h1').textContent()).toBe('Relays');
    const a = await row(page, 'site-a');
    expect(a).toMatchObject({ Status: 'connected', 'Sessions here': '1', Replica: ctx.relays.replica });
    expect(a.From).toContain('127.0.0.1');
    expect(a['Last seen']).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/);
    expect(a.Actions).toBe('Revoke');
    const siteA = (await ctx.relays.list()).find((r) => r.name === 'site-a')!;
    expect(await page.locator('tbody th span', { hasText: 'site-a' }).getAttribute('title')).toBe(siteA.id);
    const b = await row(page, 'site-b');
    expect(b).toMatchObject({
      Status: 'disconnected',
      'Sessions here': '0',
      From: '10.9.8.7:41000',
      Replica: 'gw-old/7',
    });
    const c = await row(page, 'site-c');
    expect(c).toMatchObject({ Status: 'never connected', 'Last seen': '—', Replica: '—' });
    const d = await row(page, 'site-d');
    expect(d).toMatchObject({ Status: 'revoked', Actions: '—' });
    expect(d.Revoked).toMatch(/^\d{4}-/);
    // The table fits a 1280 px window, the Revoke buttons in view.
    const box = await page.getByRole('button', { name: 'Revoke relay site-a' }).boundingBox();
    expect(box!.x + box!.width).toBeLessThanOrEqual(1280);
    const scrolled = await page.$$eval('.table-wrap', (wraps) =>
      wraps.some((w) => w.scrollWidth > w.clientWidth + 1),
    );
    expect(scrolled).toBe(false);
    await page.screenshot({ path: join(SHOTS, 'relays-1280.png'), fullPage: true });
    await page.context().close();
  });

  it('renders stored text as text: a hostile relay record runs nothing', async () => {
    const page = await open('#/relays');
    const hostile = await row(page, HOSTILE_NAME);
    expect(hostile).toMatchObject({ Name: HOSTILE_NAME, From: HOSTILE_ADDRESS, Replica: HOSTILE_REPLICA });
    expect(await page.evaluate(() => (globalThis as unknown as { __xss?: number }).__xss)).toBeUndefined();
    expect(await page.locator('tbody img, tbody script, tbody svg').count()).toBe(0);
    // The Revoke button's label names the relay as text too.
    expect(await page.getByRole('button', { name: `Revoke relay ${HOSTILE_NAME}` }).count()).toBe(1);
    await page.context().close();
  });

  it('connections show the relay they go through', async () => {
    const page = await open('#/connections');
    expect((await row(page, 'orders'))['Via relay']).toBe('site-a');
    expect((await row(page, 'public'))['Via relay']).toBe('direct');
    await page.context().close();
  });

  it('Revoke drops the live session and shows the relay revoked', async () => {
    const page = await open('#/relays');
    await page.getByRole('button', { name: 'Revoke relay site-a' }).click();
    await expect.poll(async () => (await row(page, 'site-a')).Status, { timeout: 10_000 }).toBe('revoked');
    expect(await page.locator('#status').textContent()).toBe('Revoked relay site-a.');
    expect(ctx.relayHub.sessions('site-a')).toBe(0);
    const audit = await ctx.store.readAudit(0, 10_000);
    expect(audit.some((r) => r.type === 'relay.revoke' && r.data.name === 'site-a')).toBe(true);
    // The relay's key is refused from then on: it does not come back.
    await new Promise((r) => setTimeout(r, 500));
    expect(ctx.relayHub.sessions('site-a')).toBe(0);
    expect(await page.content()).not.toContain(relayKey);
    await page.context().close();
  });
});

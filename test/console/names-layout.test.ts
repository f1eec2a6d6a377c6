import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { createLogger } from '../../src/core/logger.js';
import { agentRef } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { untypedEvent } from '../helpers/audit.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * Issue 19, item 11, in a real headless Chromium: agents appear by name (the id on hover) in
 * tickets, audit and sessions, the audit filter finds an agent by name, and the tickets and
 * audit tables fit a 1280 px window (the Revoke button within the viewport). Screenshots at
 * 1280 px and 390 px are written to a temporary directory.
 */
const CHROMIUM = process.env.COATCHECK_CHROMIUM ?? '/usr/bin/chromium';
const SHOTS = mkdtempSync(join(tmpdir(), 'coatcheck-console-shots-'));
const NAME = 'nightly-report-builder';

describe('console: agent names and tables that fit', { timeout: 120_000 }, () => {
  let t: TestHome;
  let ctx: Context;
  let admin: AdminServer;
  let browser: Browser;
  let agentId: string;

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`chromium is not installed at ${CHROMIUM}`);
    mkdirSync(SHOTS, { recursive: true });
    t = await makeTestHome();
    ctx = await t.open();
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, createLogger({ level: 'silent' }));
    const created = await ctx.agents.create({ name: NAME, groups: ['etl'] }, 'admin:test');
    agentId = created.agent.id;
    await ctx.vault.addSecret(
      {
        name: 'a-rather-long-secret-name-for-the-orders-database',
        value: Buffer.from('x'.repeat(24)),
        allow: ['db.internal:5432', 'replica-eu-west-1.db.internal:5432'],
      },
      'admin:test',
    );
    const parent = await ctx.vault.issueTicket(
      {
        secret: 'a-rather-long-secret-name-for-the-orders-database',
        principal: agentRef(agentId),
        maxUses: 10,
      },
      'admin:test',
    );
    // A record as bare as an older version might have left: the console must still link it.
    await ctx.audit.append(
      untypedEvent({
        type: 'token.exchange',
        actor: agentRef(agentId),
        data: { ticket: parent.view.id },
      }),
    );
    await ctx.audit.flush();
    const now = Date.now();
    await ctx.store.insertSession({
      id: 'ses_names0layout00000001',
      frontend: 'http',
      principal: agentRef(agentId),
      connection: 'orders',
      startedAt: now - 2000,
      endedAt: now - 1500,
      outcome: 'ok',
      summary: { tickets: [], secrets: [], events: [], droppedEvents: 0 },
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await admin?.close();
    await ctx?.close();
    t?.remove();
  });

  async function open(width: number, hash: string): Promise<Page> {
    const context = await browser.newContext({ viewport: { width, height: 900 } });
    const page = await context.newPage();
    await page.goto(`${admin.url}/console/`);
    await page.getByLabel('Admin key').fill(t.adminKey);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForSelector('#logout');
    await page.goto(`${admin.url}/console/${hash}`);
    await page.waitForSelector('table');
    return page;
  }

  /** The element lies inside the window horizontally, with nothing to scroll. */
  async function withinViewport(page: Page, selector: string, width: number) {
    const box = await page.locator(selector).first().boundingBox();
    expect(box).not.toBeNull();
    expect(box!.x).toBeGreaterThanOrEqual(0);
    expect(box!.x + box!.width).toBeLessThanOrEqual(width);
    const scrolled = await page.$$eval('.table-wrap', (wraps) =>
      wraps.some((w) => w.scrollWidth > w.clientWidth + 1),
    );
    expect(scrolled).toBe(false);
  }

  it('tickets: the agent by name with its id on hover, the Revoke button in view at 1280 px', async () => {
    const page = await open(1280, '#/tickets');
    const who = page.locator('td .who').first();
    await expect.poll(() => who.textContent()).toBe(`agent:${NAME}`);
    expect(await who.getAttribute('title')).toBe(agentRef(agentId));
    // The rendered text (a Playwright locator's innerText), not the DOM's textContent.
    // biome-ignore lint/performance/useDomNodeTextContent: a locator method, not a DOM node's property
    expect(await page.locator('table').innerText()).not.toContain(agentId);
    await withinViewport(page, 'button:text("Revoke")', 1280);
    await page.screenshot({ path: join(SHOTS, 'tickets-1280.png'), fullPage: true });
    await page.context().close();
    const phone = await open(390, '#/tickets');
    await phone.screenshot({ path: join(SHOTS, 'tickets-390.png'), fullPage: true });
    await phone.context().close();
  });

  it('audit: actors by name, filtered by name, the table fits at 1280 px', async () => {
    const page = await open(1280, `#/audit?actor=${NAME}`);
    const who = page.locator('td .who').first();
    await expect.poll(() => who.textContent()).toBe(`agent:${NAME}`);
    expect(await who.getAttribute('title')).toBe(agentRef(agentId));
    await withinViewport(page, 'tbody tr:first-child td:last-child', 1280);
    await page.screenshot({ path: join(SHOTS, 'audit-1280.png'), fullPage: true });
    await page.context().close();
    const phone = await open(390, '#/audit');
    await phone.screenshot({ path: join(SHOTS, 'audit-390.png'), fullPage: true });
    await phone.context().close();
  });

  it('sessions: the principal by name', async () => {
    const page = await open(1280, '#/sessions');
    const who = page.locator('td .who').first();
    await expect.poll(() => who.textContent()).toBe(`agent:${NAME}`);
    expect(await who.getAttribute('title')).toBe(agentRef(agentId));
    await page.screenshot({ path: join(SHOTS, 'sessions-1280.png'), fullPage: true });
    await page.context().close();
  });
});

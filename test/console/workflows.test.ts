import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { createLogger } from '../../src/core/logger.js';
import type { Context } from '../../src/server/context.js';
import type { StartedNode } from '../../src/workflows/workflows.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * Issue 19, item 12, in a real headless Chromium: the workflows page lists runs, and a
 * run's page shows the tree `coatcheck workflow show` prints — subtasks, their tickets,
 * exchanges and refusals — and updates on its own when a subtask is spawned or refused.
 * Screenshots at 1280 px and 390 px go to test-artifacts/console/.
 */
const CHROMIUM = process.env.COATCHECK_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/console/', import.meta.url));
const CANARY = `canary-wf-console-${Math.random().toString(36).slice(2)}`;
const HOSTILE = '<img src=x onerror="window.__xss=1">';

describe('console: workflows page', { timeout: 120_000 }, () => {
  let t: TestHome;
  let ctx: Context;
  let admin: AdminServer;
  let browser: Browser;
  let run: StartedNode;
  let fetchUsers: StartedNode;
  const users = { connection: 'users', host: 'users.corp.example', port: 443 };

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`chromium is not installed at ${CHROMIUM}`);
    mkdirSync(ARTIFACTS, { recursive: true });
    t = await makeTestHome();
    ctx = await t.open();
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, createLogger({ level: 'silent' }));
    await ctx.vault.addSecret(
      { name: 'users-api', value: Buffer.from(CANARY), allow: ['users', '*.corp.example'] },
      'admin:test',
    );
    const planner = await ctx.agents.create({ name: 'planner', groups: ['ci'] }, 'admin:test');
    run = await ctx.workflows.start(
      {
        name: 'monthly-report',
        principal: `agent:${planner.agent.id}`,
        groups: ['ci'],
        secrets: ['users-api'],
        ttlMs: 3_600_000,
      },
      'admin:test',
    );
    fetchUsers = await ctx.workflows.spawn(
      { parent: run.workflow.id, name: 'fetch-users', maxUses: 3 },
      'admin:test',
    );
    const pa = await ctx.identity.authenticate(fetchUsers.key);
    await ctx.vault.exchange(fetchUsers.env.USERS_API!, {
      principal: pa,
      target: users,
      operation: 'GET /users',
    });
    // The run's own ticket, presented by the subtask: refused, and shown as a refusal.
    await ctx.vault.exchange(run.env.USERS_API!, { principal: pa, target: users }).catch(() => undefined);
    await ctx.audit.flush();
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

  async function newPage(width: number): Promise<Page> {
    const context = await browser.newContext({ viewport: { width, height: 900 } });
    const page = await context.newPage();
    page.on('dialog', () => {
      throw new Error('a dialog opened');
    });
    await page.goto(`${admin.url}/console/`);
    await page.getByLabel('Admin key').fill(t.adminKey);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForURL(/#\/approvals$/);
    return page;
  }

  async function shoot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    const html = await page.content();
    for (const leak of [CANARY, run.key, fetchUsers.key, run.env.USERS_API!, fetchUsers.env.USERS_API!])
      expect(html).not.toContain(leak);
    expect(await page.evaluate('window.__xss')).toBeUndefined();
    expect(await page.locator('main img').count()).toBe(0);
  }

  it('shows the run tree with a subtask, its tickets, an exchange and a refusal, and updates live', async () => {
    const page = await newPage(1280);
    await page.getByRole('link', { name: 'Workflows' }).click();
    await page.getByRole('heading', { level: 1, name: 'Workflows' }).waitFor();
    const row = page.getByRole('row', { name: /monthly-report/ });
    expect(await row.textContent()).toContain(run.workflow.id);
    expect(await row.textContent()).toContain('planner'); // started by, by name
    await shoot(page, 'workflows');

    await page.getByRole('link', { name: 'monthly-report' }).click();
    await page.getByRole('heading', { level: 1, name: 'Workflow monthly-report' }).waitFor();
    const tree = page.getByRole('list', { name: 'Tree of monthly-report' });
    const subtask = tree.getByRole('region', { name: 'subtask fetch-users' });
    await subtask.waitFor();
    const ticketId = fetchUsers.tickets[0]!.id;
    expect(await subtask.getByRole('table', { name: 'Tickets of fetch-users' }).textContent()).toContain(
      ticketId,
    );
    const events = await subtask.getByRole('list', { name: 'Events of fetch-users' }).textContent();
    expect(events).toContain(`exchanged users-api (${ticketId})`);
    expect(events).toContain(
      `refused CC_ERR_TICKET_WRONG_PRINCIPAL (${run.tickets[0]!.id} of ${run.workflow.id})`,
    );
    expect(await subtask.textContent()).toContain('1 refused');
    expect(await page.locator('#wf-count').textContent()).toContain('1 subtask below monthly-report');
    await shoot(page, 'workflow-tree');

    // A new subtask appears without reloading, nested under its parent.
    const nested = await ctx.workflows.spawn(
      { parent: fetchUsers.workflow.id, name: 'retry-users', maxUses: 1 },
      'admin:test',
    );
    const added = tree.getByRole('region', { name: 'subtask retry-users' });
    await added.waitFor({ timeout: 15_000 });
    expect(await page.locator('#wf-count').textContent()).toContain('2 subtasks below monthly-report');
    // Nested: inside fetch-users' list item.
    expect(
      await page
        .locator(`li[data-node="${fetchUsers.workflow.id}"] li[data-node="${nested.workflow.id}"]`)
        .count(),
    ).toBe(1);
    // …and a refusal by it appears too.
    const pn = await ctx.identity.authenticate(nested.key);
    await ctx.vault
      .exchange(nested.env.USERS_API!, {
        principal: pn,
        target: { connection: 'billing', host: 'b.other.net', port: 443 },
        // Attacker-influenced text (a request path) reaches the tree: shown as text.
        operation: `GET /users/${HOSTILE}`,
      })
      .catch(() => undefined);
    await ctx.audit.flush();
    await expect
      .poll(() => added.textContent(), { timeout: 15_000 })
      .toContain('refused CC_ERR_TICKET_WRONG_DESTINATION');
    expect(await added.textContent()).toContain(HOSTILE);
    await shoot(page, 'workflow-tree-live');

    const phone = await newPage(390);
    await phone.goto(`${admin.url}/console/#/workflows/${run.workflow.id}`);
    await phone.getByRole('region', { name: 'subtask retry-users' }).waitFor();
    expect(await phone.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
    await shoot(phone, 'workflow-tree-390');
    await phone.goto(`${admin.url}/console/#/workflows`);
    await phone.getByRole('row', { name: /monthly-report/ }).waitFor();
    await shoot(phone, 'workflows-390');

    // Ending the run shows at once on the page that is open.
    await ctx.workflows.end(run.workflow.id, 'admin:test');
    await expect
      .poll(() => page.getByRole('region', { name: 'workflow monthly-report' }).textContent(), {
        timeout: 15_000,
      })
      .toContain('ended');
  });
});

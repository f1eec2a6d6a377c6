import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { CONSOLE_CSP } from '../../src/admin/console-assets.js';
import type { Operation } from '../../src/approvals/approvals.js';
import { type GateResult, gate } from '../../src/approvals/gate.js';
import { createLogger } from '../../src/core/logger.js';
import { agentRef, type Principal } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * The web console in a real headless Chromium (Debian's, driven by playwright-core,
 * which downloads no browser). CI installs chromium; without it this test fails.
 */
const CHROMIUM = process.env.COATCHECK_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/console/', import.meta.url));

const POLICY = `@id("reads") permit(principal, action == Action::"sql:read", resource);
@id("writes-need-approval") @approval("required")
permit(principal, action == Action::"sql:write", resource == Connection::"orders");
`;

const CANARY = `canary-console-${Math.random().toString(36).slice(2)}-value`;
// Attacker-influenced text, as it can reach the audit log and the approvals queue.
const HOSTILE = `DELETE FROM orders WHERE note = '<img src=x onerror="window.__xss=1">'`;

const sql = (statement: string): Operation => ({
  kind: 'sql',
  connection: 'orders',
  action: 'sql:write',
  summary: statement,
  detail: { statement },
});

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A request with the path sent exactly as written (no client-side `..` normalisation). */
function raw(base: string, path: string, method = 'GET'): Promise<RawResponse> {
  const url = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: url.hostname, port: url.port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('web console (headless Chromium)', { timeout: 120_000 }, () => {
  let t: TestHome;
  let ctx: Context;
  let admin: AdminServer;
  let browser: Browser;
  let writer: Principal;
  let ticket: string;
  let ticketId: string;
  let sessionId: string;
  const dialogs: string[] = [];
  const opened: BrowserContext[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(
        `chromium is not installed at ${CHROMIUM} (apt-get install -y chromium, or set COATCHECK_CHROMIUM)`,
      );
    }
    mkdirSync(ARTIFACTS, { recursive: true });
    t = await makeTestHome();
    writeFileSync(join(t.home.dir, 'policy.cedar'), POLICY);
    writeFileSync(t.home.configFile, 'policy:\n  path: policy.cedar\napprovals:\n  holdTimeout: 90s\n');
    ctx = await t.open();
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, createLogger({ level: 'silent' }));

    const created = await ctx.agents.create({ name: 'writer', groups: ['etl'] }, 'admin:test');
    writer = await ctx.agents.authenticate(created.key);
    await ctx.agents.create({ name: 'intruder' }, 'admin:test');
    const secret = await ctx.vault.addSecret(
      {
        name: 'orders-db-password',
        value: Buffer.from(CANARY),
        kind: 'password',
        allow: ['db.internal:5432'],
      },
      'admin:test',
    );
    const issued = await ctx.vault.issueTicket(
      { secret: 'orders-db-password', principal: agentRef(created.agent.id), maxUses: 10 },
      'admin:test',
    );
    ticket = issued.ticket;
    ticketId = issued.view.id;
    await ctx.connections.add(
      {
        name: 'orders',
        type: 'postgres',
        url: 'postgres://app@db.internal:5432/orders',
        credential: 'orders-db-password',
      },
      'admin:test',
    );
    sessionId = 'ses_console0test0000001';
    const now = Date.now();
    await ctx.store.insertSession({
      id: sessionId,
      frontend: 'postgres',
      principal: agentRef(created.agent.id),
      connection: 'orders',
      startedAt: now - 2000,
      endedAt: now - 1500,
      outcome: 'ok',
      summary: {
        tickets: [ticketId],
        secrets: [secret.id],
        events: [
          { at: 0, type: 'postgres.startup', data: { user: 'app', database: 'orders' } },
          {
            at: 12,
            type: 'postgres.query',
            data: { statement: 'SELECT id, total FROM orders LIMIT 10', rows: 10 },
          },
          { at: 40, type: 'postgres.query', data: { statement: HOSTILE, code: 'CC_ERR_APPROVAL_REQUIRED' } },
        ],
        droppedEvents: 0,
      },
    });

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-quic',
        '--no-first-run',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });

  afterAll(async () => {
    for (const c of opened) await c.close().catch(() => {});
    await browser?.close();
    await admin?.close();
    await ctx?.close();
    t?.remove();
  });

  async function newPage(): Promise<Page> {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    opened.push(context);
    const page = await context.newPage();
    page.on('dialog', (dialog) => {
      // Revoking asks for confirmation; any other dialog (an alert) would be injected script.
      if (dialog.type() === 'confirm') void dialog.accept();
      else {
        dialogs.push(dialog.message());
        void dialog.dismiss();
      }
    });
    return page;
  }

  async function logIn(page: Page, key = t.adminKey): Promise<void> {
    await page.goto(`${admin.url}/console/`);
    await page.getByLabel('Admin key').fill(key);
    await page.getByRole('button', { name: 'Log in' }).click();
  }

  async function shoot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    const html = await page.content();
    expect(html).not.toContain(CANARY);
    expect(html).not.toContain(ticket);
    expect(html).not.toContain(t.adminKey);
  }

  it('serves the console with a strict CSP, redirects / and refuses traversal', async () => {
    const index = await raw(admin.url, '/console/');
    expect(index.status).toBe(200);
    expect(index.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(index.headers['content-security-policy']).toBe(CONSOLE_CSP);
    expect(index.headers['x-frame-options']).toBe('DENY');
    expect(index.headers['referrer-policy']).toBe('no-referrer');
    expect(index.headers['cache-control']).toBe('no-store');
    expect(index.body).toContain('<script type="module" src="console.js"></script>');
    expect((await raw(admin.url, '/console/console.js')).headers['content-type']).toBe(
      'text/javascript; charset=utf-8',
    );
    expect((await raw(admin.url, '/console/console.css')).headers['content-type']).toBe(
      'text/css; charset=utf-8',
    );
    expect(await raw(admin.url, '/')).toMatchObject({ status: 302, headers: { location: '/console/' } });
    expect(await raw(admin.url, '/console')).toMatchObject({
      status: 302,
      headers: { location: '/console/' },
    });
    for (const path of [
      '/console/../package.json',
      '/console/..%2fpackage.json',
      '/console/%2e%2e/package.json',
      '/console/./console.js',
      '/console//etc/passwd',
      '/console/console.js/',
      '/console/toString',
      '/console/__proto__',
    ]) {
      const response = await raw(admin.url, path);
      expect({ path, status: response.status }).toEqual({ path, status: 404 });
      expect(response.headers['content-security-policy']).toBe(CONSOLE_CSP);
      expect(response.body).not.toContain('coatcheck');
    }
    // The API stays behind the admin key.
    expect((await raw(admin.url, '/v1/secrets')).status).toBe(401);
  });

  it('refuses a wrong admin key with a clear message and keeps nothing', async () => {
    const page = await newPage();
    await logIn(page, 'not-the-admin-key');
    await expect
      .poll(() => page.getByRole('alert').textContent())
      .toBe('That admin key was not accepted. Check it and try again.');
    expect(await page.evaluate('sessionStorage.length')).toBe(0);
    expect(await page.evaluate('localStorage.length')).toBe(0);
    expect(await page.context().cookies()).toEqual([]);
    await expect.poll(() => page.getByRole('navigation', { name: 'Main' }).isVisible()).toBe(false);
    expect(await page.getByRole('button', { name: 'Log out' }).isVisible()).toBe(false);
    await shoot(page, 'login-error');
  });

  it('logs in, approves a held operation, and shows the audit record', async () => {
    let held = '';
    const pending: Promise<GateResult> = gate(ctx.gate, {
      principal: writer,
      action: 'sql:write',
      resource: { type: 'Connection', id: 'orders' },
      context: { statement: HOSTILE },
      operation: sql(HOSTILE),
      onHold: (a) => {
        held = a.id;
      },
    });
    pending.catch(() => {}); // awaited below; keep a failure from going unhandled meanwhile
    await expect.poll(() => held, { timeout: 10_000 }).not.toBe('');

    const page = await newPage();
    await page.goto(`${admin.url}/console/`);
    await shoot(page, 'login');
    await page.getByLabel('Admin key').fill(t.adminKey);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForURL(/#\/approvals$/);
    const row = page.getByRole('row', { name: new RegExp(held) });
    await row.waitFor();
    expect(await row.textContent()).toContain(HOSTILE); // shown as text…
    expect(await page.locator('main img').count()).toBe(0); // …never as markup
    expect(await page.evaluate("sessionStorage.getItem('coatcheck.adminKey')")).toBe(t.adminKey);
    expect(await page.evaluate('localStorage.length')).toBe(0);
    await shoot(page, 'approvals');

    await page.getByRole('link', { name: held }).click();
    await page.getByRole('heading', { level: 1, name: `Approval ${held}` }).waitFor();
    await shoot(page, 'approval-detail');
    await page.getByRole('link', { name: '← Approvals' }).click();

    await page.getByRole('button', { name: `Approve ${held}` }).click();
    await expect.poll(() => page.getByRole('status').textContent()).toBe(`Approved ${held}.`);
    await page.getByText('No operation is waiting for approval.').waitFor();
    const result = await pending;
    expect(result).toMatchObject({
      decision: { effect: 'approval' },
      approval: { id: held, status: 'used' },
    });
    expect(await page.getByRole('row', { name: new RegExp(held) }).textContent()).toContain(
      'admin:api (approve)',
    );
    await shoot(page, 'approvals-decided');

    await ctx.audit.flush();
    await page.getByRole('link', { name: 'Audit' }).click();
    await page.getByRole('heading', { level: 1, name: 'Audit log' }).waitFor();
    const approveRow = page.getByRole('row').filter({ hasText: 'approval.approve' });
    await approveRow.first().waitFor();
    expect(await approveRow.first().textContent()).toContain(held);
    await shoot(page, 'audit');

    await page.getByLabel('Type starts with').fill('approval.');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.waitForURL(/#\/audit\?type=approval\.$/);
    await page.getByRole('heading', { level: 1, name: 'Audit log' }).waitFor();
    // The URL changes before the filtered rows arrive: wait for the table, not the address.
    await expect
      .poll(() => page.locator('tbody tr td:nth-child(3)').allTextContents())
      .toEqual(['approval.use', 'approval.approve', 'approval.request']);
    await shoot(page, 'audit-filtered');
    expect(dialogs).toEqual([]);
    expect(await page.evaluate('window.__xss')).toBeUndefined();
  });

  it('denies with a reason, and reports a request decided elsewhere meanwhile', async () => {
    const held: string[] = [];
    const hold = (statement: string) => {
      const call = gate(ctx.gate, {
        principal: writer,
        action: 'sql:write',
        resource: { type: 'Connection', id: 'orders' },
        context: { statement },
        operation: sql(statement),
        onHold: (a) => {
          held.push(a.id);
        },
      });
      call.catch(() => {});
      return call;
    };
    const denied = hold('UPDATE orders SET total = 0');
    await expect.poll(() => held.length, { timeout: 10_000 }).toBe(1);
    const other = hold('DROP TABLE orders_archive');
    await expect.poll(() => held.length, { timeout: 10_000 }).toBe(2);
    const [first, second] = held as [string, string];

    const page = await newPage();
    await logIn(page);
    await page.getByRole('row', { name: new RegExp(second) }).waitFor();
    await page.getByLabel(`Reason for denying ${first} (optional)`).fill('not during business hours');
    await page.getByRole('button', { name: `Deny ${first}` }).click();
    await expect.poll(() => page.getByRole('status').textContent()).toBe(`Denied ${first}.`);
    await expect(denied).rejects.toMatchObject({ code: 'CC_ERR_APPROVAL_DENIED' });

    // Typing keeps the queue from refreshing on its own; meanwhile someone else decides.
    await page.getByLabel(`Reason for denying ${second} (optional)`).fill('typing…');
    await ctx.approvals.decide(
      second,
      { approver: { ref: 'human:bob', name: 'bob', groups: [] }, decision: 'deny' },
      'admin:test',
    );
    await page.getByRole('button', { name: `Approve ${second}` }).click();
    await expect
      .poll(() => page.getByRole('status').textContent())
      .toBe(`CC_ERR_APPROVAL_NOT_PENDING: approval ${second} is denied`);
    await page.getByText('No operation is waiting for approval.').waitFor();
    await expect(other).rejects.toMatchObject({ code: 'CC_ERR_APPROVAL_DENIED' });

    await page.getByRole('link', { name: first }).click();
    const decisions = page.getByRole('table', { name: `Decisions on ${first}` });
    await decisions.waitFor();
    expect(await decisions.textContent()).toContain('not during business hours');
    await shoot(page, 'approval-denied');
  });

  it('shows every page (metadata only), revokes a ticket and an agent, and logs out', async () => {
    const page = await newPage();
    await logIn(page);
    await page.waitForURL(/#\/approvals$/);

    const visit = async (hash: string, title: string, name: string) => {
      await page.goto(`${admin.url}/console/${hash}`);
      await page.getByRole('heading', { level: 1, name: title }).waitFor();
      await shoot(page, name);
    };
    await visit('#/sessions', 'Sessions', 'sessions');
    expect(await page.getByRole('row', { name: new RegExp(sessionId) }).textContent()).toContain('orders');
    await visit(`#/sessions/${sessionId}`, `Session ${sessionId}`, 'session-detail');
    expect(await page.getByRole('table', { name: `Events of ${sessionId}` }).textContent()).toContain(
      'SELECT id, total FROM orders LIMIT 10',
    );
    await visit('#/secrets', 'Secrets', 'secrets');
    expect(await page.getByRole('row', { name: /orders-db-password/ }).textContent()).toContain(
      'db.internal:5432',
    );
    await visit('#/connections', 'Connections', 'connections');
    await visit('#/tickets', 'Tickets', 'tickets');

    await page.getByRole('button', { name: `Revoke ticket ${ticketId}` }).click();
    await expect.poll(() => page.getByRole('status').textContent()).toBe(`Revoked ticket ${ticketId}.`);
    await page.getByText('No active tickets.').waitFor();
    expect((await ctx.vault.inspectTicket(ticketId)).status).toBe('revoked');

    await visit('#/agents', 'Agents', 'agents');
    await page.getByRole('button', { name: 'Revoke agent intruder' }).click();
    await expect.poll(() => page.getByRole('status').textContent()).toBe('Revoked agent intruder.');
    await expect.poll(() => page.getByRole('row', { name: /intruder/ }).textContent()).toContain('revoked');
    expect((await ctx.agents.list()).find((a) => a.name === 'intruder')?.status).toBe('revoked');

    // Keyboard: after a page change focus sits on its heading, and Tab reaches its first control.
    const focused = () =>
      page.evaluate(
        "(e => e.tagName + ' ' + (e.getAttribute('aria-label') ?? e.textContent))(document.activeElement)",
      );
    await expect.poll(focused).toBe('H1 Agents');
    await page.keyboard.press('Tab');
    expect(await focused()).toBe('BUTTON Revoke agent writer');
    expect(await page.getByRole('link', { name: 'Skip to content' }).getAttribute('href')).toBe('#main');

    // A key that stops working sends the user back to the login page with a message.
    await page.evaluate("sessionStorage.setItem('coatcheck.adminKey', 'rotated-away')");
    await page.goto(`${admin.url}/console/#/secrets`);
    await expect
      .poll(() => page.getByRole('alert').textContent())
      .toBe('Your admin key was not accepted (it may have been changed). Log in again.');

    await page.getByLabel('Admin key').fill(t.adminKey);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { level: 1, name: 'Secrets' }).waitFor();
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByLabel('Admin key').waitFor();
    expect(await page.evaluate("sessionStorage.getItem('coatcheck.adminKey')")).toBeNull();
    expect(dialogs).toEqual([]);
  });
});

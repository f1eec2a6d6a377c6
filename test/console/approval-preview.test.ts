import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type Browser, chromium, type Page } from 'playwright-core';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { createLogger } from '../../src/core/logger.js';
import { type PostgresFrontend, startPostgresFrontend } from '../../src/frontends/postgres/start.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from '../integration/http/harness.js';

/**
 * Issue 19, item 10, in a real headless Chromium against a real gateway: an HTTP POST held
 * by the HTTP front-end and an INSERT with bound parameters held by the PostgreSQL
 * front-end (in front of the PostgreSQL on 127.0.0.1:5432). The approver reads a cleaned
 * preview of each: tickets by id, the planted canary secret masked everywhere (page, API,
 * store file), hostile markup as text. Screenshots at 1280 px and 390 px go to
 * test-artifacts/console/ beside the other console tests'.
 */
const CHROMIUM = process.env.COATCHECK_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/console/', import.meta.url));
const CANARY = `canary-preview-${Math.random().toString(36).slice(2)}-Qw7`;
const TABLE = `preview_probe_${Math.random().toString(36).slice(2, 10)}`;
const HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>';

const POLICY = `@id("sessions") permit(principal, action == Action::"sql:session", resource);
@id("posts-need-approval") @approval("required")
permit(principal, action == Action::"http:POST", resource == Connection::"svc");
@id("sql-writes-need-approval") @approval("required")
permit(principal, action == Action::"sql:write", resource == Connection::"shared");
`;

describe('console: the approver reads the exact held operation, cleaned', { timeout: 180_000 }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-preview-'));
  let gw: Gateway;
  let up: Upstream;
  let pgfe: PostgresFrontend;
  let admin: AdminServer;
  let browser: Browser;
  let adminKey: string;
  let agent: { key: string; ref: string };
  let ticket: string;
  let ticketId: string;
  let secretId: string;
  const dialogs: string[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`chromium is not installed at ${CHROMIUM}`);
    mkdirSync(ARTIFACTS, { recursive: true });
    up = await startUpstream();
    const policyFile = join(dir, 'policy.cedar');
    writeFileSync(policyFile, POLICY);
    gw = await startGateway({
      extraConfig: `policy:\n  path: ${policyFile}\napprovals:\n  holdTimeout: 120s\n`,
    });
    adminKey = readFileSync(gw.ctx.home.adminKeyFile, 'utf8').trim();
    agent = await gw.createAgent('writer');
    await gw.ctx.vault.addSecret(
      {
        name: 'api-token',
        value: Buffer.from(CANARY),
        allow: ['svc', 'shared'],
        placements: ['credential', 'body'],
      },
      'admin:test',
    );
    secretId = (await gw.ctx.vault.listSecrets()).find((s) => s.name === 'api-token')!.id;
    await gw.addConnection('svc', up.url);
    // The PostgreSQL here trusts local connections: the credential is released, never asked for.
    await gw.ctx.vault.addSecret(
      { name: 'shared-pw', value: Buffer.from('unused-password-8k2'), allow: ['shared'] },
      'admin:test',
    );
    await gw.ctx.connections.add(
      {
        name: 'shared',
        type: 'postgres',
        url: 'postgres://postgres@127.0.0.1:5432/postgres',
        credential: 'shared-pw',
      },
      'admin:test',
    );
    const issued = await gw.ctx.vault.issueTicket(
      { secret: 'api-token', principal: agent.ref, maxUses: 10 },
      'admin:test',
    );
    ticket = issued.ticket;
    ticketId = issued.view.id;
    await direct((c) => c.query(`CREATE TABLE ${TABLE} (note text, token text, pasted text)`));
    pgfe = await startPostgresFrontend(
      gw.ctx,
      { host: '127.0.0.1', port: 0 },
      createLogger({ level: 'silent' }),
    );
    admin = await startAdminServer(gw.ctx, { host: '127.0.0.1', port: 0 }, createLogger({ level: 'silent' }));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
  });

  /** The PostgreSQL on 127.0.0.1:5432 itself, not through the gateway. */
  async function direct<T>(work: (c: pg.Client) => Promise<T>): Promise<T> {
    const c = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' });
    await c.connect();
    try {
      return await work(c);
    } finally {
      await c.end();
    }
  }

  afterAll(async () => {
    await browser?.close();
    await admin?.close();
    await pgfe?.close();
    await gw?.close();
    await up?.close();
    await direct((c) => c.query(`DROP TABLE IF EXISTS ${TABLE}`)).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  async function newPage(width: number): Promise<Page> {
    const context = await browser.newContext({ viewport: { width, height: 900 } });
    const page = await context.newPage();
    page.on('dialog', (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    await page.goto(`${admin.url}/console/`);
    await page.getByLabel('Admin key').fill(adminKey);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForURL(/#\/approvals$/);
    return page;
  }

  /** Nothing secret in the page: not the canary, not the ticket, not a key. */
  async function clean(page: Page): Promise<void> {
    const html = await page.content();
    for (const leak of [CANARY, ticket, agent.key, adminKey]) expect(html).not.toContain(leak);
    expect(await page.evaluate('window.__xss')).toBeUndefined();
    expect(await page.locator('main img, main script').count()).toBe(0);
  }

  async function shoot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    await clean(page);
  }

  async function api(path: string): Promise<string> {
    const res = await request(`${admin.url}${path}`, { headers: { authorization: `Bearer ${adminKey}` } });
    expect(res.statusCode).toBe(200);
    return res.body.text();
  }

  it('shows a held HTTP body and a held SQL statement with its parameters; approving lets the exact request through', async () => {
    // The body: a ticket where the secret goes, the secret itself typed in (raw and
    // JSON-escaped), hostile markup, and enough text that the list shows only its start.
    const escaped = JSON.stringify(CANARY).slice(1, -1).replace('c', '\\u0063');
    const body = `{"title":"Quarterly report","token":"${ticket}","pasted":"${CANARY}","escaped":"${escaped}","note":${JSON.stringify(HOSTILE)},"filler":"${'lorem ipsum '.repeat(60)}"}`;
    const held = request(`${gw.url}/c/svc/reports?draft=1`, {
      method: 'POST',
      headers: {
        'proxy-authorization': `Bearer ${agent.key}`,
        'content-type': 'application/json',
      },
      body,
    });
    const heldResult = held.then(async (r) => ({ status: r.statusCode, text: await r.body.text() }));
    heldResult.catch(() => undefined);

    const client = new pg.Client({
      host: '127.0.0.1',
      port: pgfe.port,
      user: 'writer',
      password: agent.key,
      database: 'shared',
    });
    client.on('error', () => undefined);
    await client.connect();
    const insert = client
      .query(`INSERT INTO ${TABLE} (note, token, pasted) VALUES ($1, $2, $3)`, [HOSTILE, ticket, CANARY])
      .then(
        () => 'ran',
        (e: { message?: string }) => e.message ?? String(e),
      );

    const pending = async () =>
      (await gw.ctx.approvals.list('pending')).map((a) => ({ id: a.id, action: a.operation.action }));
    await expect.poll(async () => (await pending()).length, { timeout: 20_000 }).toBe(2);
    const httpId = (await pending()).find((a) => a.action === 'http:POST')!.id;
    const sqlId = (await pending()).find((a) => a.action === 'sql:write')!.id;

    const page = await newPage(1280);
    const httpRow = page.getByRole('row', { name: new RegExp(httpId) });
    const sqlRow = page.getByRole('row', { name: new RegExp(sqlId) });
    await httpRow.waitFor();
    await sqlRow.waitFor();
    const httpShort = await page.getByLabel(`Preview of ${httpId}`).textContent();
    expect(httpShort).toContain(`POST ${up.url}/reports?draft=1`);
    expect(httpShort).toContain('content-type: application/json');
    expect(httpShort).toContain(`"token":"[ticket ${ticketId} for api-token]"`);
    expect(httpShort).toContain(`"pasted":"[secret:${secretId}]"`);
    expect(httpShort).toContain(`"escaped":"[secret:${secretId}]"`);
    expect(httpShort).toContain(HOSTILE.replace(/"/g, '\\"')); // as text, JSON-escaped as sent
    expect(httpShort).not.toContain('Proxy-Authorization');
    expect(httpShort?.endsWith('…')).toBe(true);
    const sqlText = await page.getByLabel(`Preview of ${sqlId}`).textContent();
    expect(sqlText).toBe(
      [
        // The statement as the approval binds it: normalised (keywords and names folded).
        `INSERT INTO ${TABLE.toUpperCase()} (NOTE, TOKEN, PASTED) VALUES ($1, $2, $3)`,
        '-- parameters:',
        `--   $1 = '${HOSTILE}'`,
        `--   $2 = '[ticket ${ticketId} for api-token]'`,
        `--   $3 = '[secret:${secretId}]'`,
      ].join('\n'),
    );
    await shoot(page, 'approvals-preview');

    // The whole operation on demand, in the list.
    await httpRow.getByText('Whole operation').click();
    await expect
      .poll(() => httpRow.locator('details pre').textContent())
      .toContain(`"filler":"${'lorem ipsum '.repeat(60)}"}`);
    await shoot(page, 'approvals-preview-expanded');

    // The detail page: the whole preview and what the approval is bound to.
    await page.getByRole('link', { name: httpId }).click();
    await page.getByRole('heading', { level: 1, name: `Approval ${httpId}` }).waitFor();
    const full = await page.getByLabel(`Preview of ${httpId}`).textContent();
    expect(full).toContain(`"pasted":"[secret:${secretId}]"`);
    expect(full).toContain('lorem ipsum '.repeat(60));
    expect(await page.locator('.facts').textContent()).toContain('bodySha256');
    await shoot(page, 'approval-preview-detail');

    const phone = await newPage(390);
    await phone.getByLabel(`Preview of ${sqlId}`).waitFor();
    // The queue scrolls sideways inside its frame; the page itself fits the phone.
    expect(await phone.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
    await shoot(phone, 'approvals-preview-390');
    await phone.goto(`${admin.url}/console/#/approvals/${httpId}`);
    await phone.getByRole('heading', { level: 1, name: `Approval ${httpId}` }).waitFor();
    expect(await phone.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
    await shoot(phone, 'approval-preview-detail-390');

    // The API carries the same cleaned text, and nothing raw.
    for (const path of ['/v1/approvals', `/v1/approvals/${httpId}`, `/v1/approvals/${sqlId}`]) {
      const text = await api(path);
      for (const leak of [CANARY, ticket, agent.key, escaped]) expect(text).not.toContain(leak);
      expect(text).toContain(`[secret:${secretId}]`);
    }

    // Approving the HTTP request from the page lets exactly that request through; denying the SQL one refuses it.
    await page.getByRole('link', { name: '← Approvals' }).click();
    await page.getByRole('button', { name: `Approve ${httpId}` }).click();
    await expect.poll(() => page.getByRole('status').textContent()).toBe(`Approved ${httpId}.`);
    const done = await heldResult;
    expect(done.status).toBe(200);
    // The request approved is the request sent: the ticket swapped for the secret, nothing else changed.
    expect(up.received.at(-1)?.body.toString()).toBe(body.replace(ticket, CANARY));
    expect((await gw.ctx.approvals.get(httpId)).status).toBe('used');
    await page.getByRole('button', { name: `Deny ${sqlId}` }).click();
    await expect.poll(() => page.getByRole('status').textContent()).toBe(`Denied ${sqlId}.`);
    expect(await insert).toContain('denied');
    expect((await direct((c) => c.query(`SELECT count(*)::int AS n FROM ${TABLE}`))).rows[0].n).toBe(0);
    await client.end().catch(() => undefined);

    // The store file holds neither the canary nor the ticket.
    await gw.ctx.audit.flush();
    const files = readdirSync(gw.dir).filter((name) => /\.db(-wal)?$/.test(name));
    expect(files).toContain('coatcheck.db');
    for (const name of files) {
      const bytes = readFileSync(join(gw.dir, name));
      expect(bytes.includes(Buffer.from(CANARY))).toBe(false);
      expect(bytes.includes(Buffer.from(ticket))).toBe(false);
    }
    // The preview really was stored (the search above looked where it lives).
    const stored = await gw.ctx.store.getApproval(httpId);
    expect(stored?.preview).toContain(`[ticket ${ticketId} for api-token]`);
    expect(dialogs).toEqual([]);
  });
});

import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { type Browser, chromium, type Page } from 'playwright-core';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { agentRef } from '../../src/core/principal.js';
import { GatewayDriver } from '../../src/gateway/driver.js';
import type { Context } from '../../src/server/context.js';
import { type HttpFrontend, httpGateway } from '../../src/server/frontends.js';
import { sessionRecordings } from '../../src/server/recordings.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';

const CHROMIUM = process.env.COATCHECK_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/console/', import.meta.url));
const CANARY = `canary-player-${Math.random().toString(36).slice(2)}-value`;
/** What a hostile upstream answers: markup, a script handler, terminal controls. */
const HOSTILE = '<img src=x onerror="window.__xss=1"> \u001b]52;c;ZXZpbA==\u0007 done';

describe('console session player (headless Chromium)', { timeout: 120_000 }, () => {
  let t: TestHome;
  let ctx: Context;
  let driver: GatewayDriver;
  let http: HttpFrontend;
  let admin: AdminServer;
  let up: Upstream;
  let browser: Browser;
  let agentKey: string;
  let ticket: string;
  let session = '';
  const dialogs: string[] = [];

  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`chromium is not installed at ${CHROMIUM}`);
    mkdirSync(ARTIFACTS, { recursive: true });
    t = await makeTestHome();
    ctx = await t.open();
    up = await startUpstream();
    up.handle('/echo', (req, res) => {
      res.setHeader('content-type', 'text/plain');
      res.end(`auth=${req.headers.authorization}\n${HOSTILE}`);
    });
    driver = new GatewayDriver({
      registry: ctx.metrics,
      log: pino({ level: 'silent' }),
      store: ctx.store,
      clock: ctx.clock,
      recordings: sessionRecordings(ctx),
    });
    http = await driver.start(httpGateway(ctx, { host: '127.0.0.1', port: 0 }));
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'silent' }));
    const { key, agent } = await ctx.agents.create({ name: 'player-agent' }, 'admin:test');
    agentKey = key;
    await ctx.vault.addSecret(
      { name: 'api-token', value: Buffer.from(CANARY), allow: ['api'] },
      'admin:test',
    );
    await ctx.connections.add(
      { name: 'api', type: 'http', url: up.url, rules: { recording: 'full' } },
      'admin:test',
    );
    ticket = (
      await ctx.vault.issueTicket({ secret: 'api-token', principal: agentRef(agent.id) }, 'admin:test')
    ).ticket;
    const res = await request(`${http.url}/c/api/echo`, {
      method: 'POST',
      headers: { 'proxy-authorization': `Bearer ${agentKey}`, authorization: `Bearer ${ticket}` },
      body: 'find-me-in-the-player',
    });
    await res.body.text();
    await driver.recordings!.flush();
    session = (await ctx.store.listRecordings({ limit: 1 }))[0]!.id;
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  });

  afterAll(async () => {
    await browser?.close();
    await admin?.close();
    await driver?.stop();
    await ctx?.close();
    await up?.close();
    t?.remove();
  });

  async function shoot(page: Page, name: string): Promise<void> {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    const html = await page.content();
    expect(html).not.toContain(CANARY);
    expect(html).not.toContain(agentKey);
    expect(html).not.toContain(t.adminKey);
  }

  it('filters the list, plays, pauses, steps and searches a recording, all as text', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on('dialog', (dialog) => {
      dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    await page.goto(`${admin.url}/console/`);
    await page.getByLabel('Admin key').fill(t.adminKey);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.waitForURL(/#\/approvals$/);

    await page.goto(`${admin.url}/console/#/sessions`);
    await page.getByLabel('Connection').fill('api');
    await page.getByLabel('Statement or URL contains').fill('find-me');
    await page.getByRole('button', { name: 'Filter' }).click();
    await page.waitForURL(/#\/sessions\?connection=api&text=find-me$/);
    const row = page.getByRole('row', { name: new RegExp(session) });
    await row.waitFor();
    expect(await row.textContent()).toContain('full');
    await shoot(page, 'sessions-filtered');
    // A filter that matches nothing lists nothing.
    await page.goto(`${admin.url}/console/#/sessions?connection=api&text=not-in-any-recording`);
    await page.getByText('No recorded sessions.').waitFor();

    await page.goto(`${admin.url}/console/#/sessions/${session}`);
    const playerRegion = page.getByRole('region', { name: 'Session player' });
    await playerRegion.waitFor();
    const status = playerRegion.getByRole('status');
    expect(await status.textContent()).toMatch(/^Event 0 of \d+$/);
    const total = Number((await status.textContent())!.split(' of ')[1]);
    expect(total).toBeGreaterThanOrEqual(4);

    await playerRegion.getByRole('button', { name: 'Step' }).click();
    expect(await status.textContent()).toBe(`Event 1 of ${total}`);
    const current = playerRegion.locator('li[aria-current="step"]');
    expect(await current.textContent()).toContain('> POST /c/api/echo');
    expect(await current.textContent()).toContain('> proxy-authorization: [agent key]');

    await playerRegion.getByLabel('Speed').selectOption('100');
    await playerRegion.getByRole('button', { name: 'Play' }).click();
    await expect.poll(() => status.textContent(), { timeout: 10_000 }).toBe(`Event ${total} of ${total}`);
    // At the end: paused, and Play starts over.
    expect(await playerRegion.getByRole('button', { name: 'Pause' }).isDisabled()).toBe(true);
    await playerRegion.getByRole('button', { name: 'Play' }).click();
    await expect.poll(() => status.textContent(), { timeout: 10_000 }).toBe(`Event ${total} of ${total}`);

    await playerRegion.getByLabel('Search').fill('onerror');
    expect(await status.textContent()).toBe('1 matching events');
    const match = playerRegion.locator('li.match');
    // The upstream's markup is text, its controls visible escapes; no script ran.
    expect(await match.textContent()).toContain(
      '<img src=x onerror="window.__xss=1"> \\x1b]52;c;ZXZpbA==\\x07 done',
    );
    expect(await match.textContent()).toMatch(/auth=Bearer cct_[0-9A-Za-z]{28}/);
    expect(await page.locator('.timeline img').count()).toBe(0);
    expect(await page.evaluate('window.__xss')).toBeUndefined();
    expect(dialogs).toEqual([]);
    await shoot(page, 'session-player');
    await context.close();
  });
});

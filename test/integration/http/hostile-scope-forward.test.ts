import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Proxied, startProxy } from './forward-harness.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);

/**
 * Item 2 through the forward proxy (HTTP_PROXY, plain http://, curl): a host no connection
 * serves. The ticket for the echoed secret is a child of the presented ticket, bound to that
 * host and port only.
 */
const SECRET = 'fwd-scope-canary-K8jH3gF6dS1aQ0wE';
const TICKET_RE = /cct_[0-9A-Za-z]{28}/;

let gw: Gateway;
let up: Upstream;
let other: Upstream;
let px: Proxied;
let agent: { key: string; ref: string };
const seen: string[] = [];

async function viaProxy(url: string, ticket: string): Promise<string> {
  const { stdout } = await run(
    'curl',
    [
      '-sS',
      '--max-time',
      '20',
      '--proxy',
      `http://${px.address}`,
      '--proxy-user',
      `a:${agent.key}`,
      '-H',
      `Authorization: Bearer ${ticket}`,
      url,
    ],
    { env: { PATH: process.env.PATH } },
  );
  seen.push(stdout);
  return stdout;
}

beforeAll(async () => {
  up = await startUpstream();
  other = await startUpstream();
  for (const u of [up, other]) {
    u.handle('/whoami', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`you sent ${req.headers.authorization}`);
    });
  }
  gw = await startGateway();
  agent = await gw.createAgent('fwd-scope');
  const hostOf = (u: Upstream) => u.url.replace(/^http:\/\//, '');
  await gw.addSecret('api', SECRET, [`http://${hostOf(up)}`, `http://${hostOf(other)}`]);
  px = await startProxy(gw);
}, 60_000);

afterAll(async () => {
  await px?.close();
  await gw?.close();
  await up?.close();
  await other?.close();
});

describe('forward proxy: tickets for echoed secrets stay within their parent', () => {
  it('a child of the presented ticket, for this host and port only, with the uses the parent has left', async () => {
    const upHost = up.url.replace(/^http:\/\//, '');
    const root = await gw.issue('api', agent.ref);
    const parent = await gw.ctx.vault.narrowTicket(
      root,
      { destinations: [`http://${upHost}`], ttlMs: 60_000, maxUses: 2 },
      'admin:test',
    );
    const out = await viaProxy(`${up.url}/whoami`, parent.ticket);
    expect(out).not.toContain(SECRET);
    const child = out.match(TICKET_RE)![0];
    const view = await gw.ctx.vault.inspectTicket(child);
    expect(view).toMatchObject({
      parentId: parent.view.id,
      principal: agent.ref,
      maxUses: 1,
      destinations: [`host:http://${upHost}`],
    });
    expect(Date.parse(view.expiresAt!)).toBeLessThanOrEqual(Date.parse(parent.view.expiresAt!));
    // Another upstream the secret may go to: not the child.
    const elsewhere = await viaProxy(`${other.url}/whoami`, child);
    expect(elsewhere).toContain('CC_ERR_TICKET_WRONG_DESTINATION');
    expect(other.received).toHaveLength(0);
    await gw.ctx.vault.revokeTicket(parent.view.id, 'admin:test');
    expect((await gw.ctx.vault.inspectTicket(child)).status).toBe('revoked');
  });

  it('no canary in client output, logs or audit', async () => {
    await gw.ctx.audit.flush();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const place of [seen.join('\n'), gw.logs(), px.logs(), audit]) expect(place).not.toContain(SECRET);
  });
});

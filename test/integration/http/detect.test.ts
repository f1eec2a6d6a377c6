import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

// Built at run time: no secret-shaped literal in the repository.
const FOUND = ['AKIA', 'W4PLM7XQ', 'Z2RTN6BV'].join('');

describe('HTTP responses: secrets the vault does not know become tickets too', () => {
  let gw: Gateway;
  let up: Upstream;
  let agent: { key: string; ref: string };

  beforeAll(async () => {
    up = await startUpstream();
    // The upstream leaks a credential the vault has never seen, split across chunks.
    up.handle('/leak', (_req, res) => {
      const text = JSON.stringify({ config: { aws_access_key_id: FOUND, region: 'eu-west-1' } });
      res.writeHead(200, { 'content-type': 'application/json' });
      const middle = text.indexOf(FOUND) + 7;
      res.write(text.slice(0, middle));
      setTimeout(() => res.end(text.slice(middle)), 20);
    });
    gw = await startGateway();
    agent = await gw.createAgent('reader');
    await gw.addConnection('svc', up.url);
  });
  afterAll(async () => {
    await gw?.close();
    await up?.close();
  });

  it('tokenizes the finding for the caller, bound to the connection it came from; the ticket works there', async () => {
    const res = await request(`${gw.url}/c/svc/leak`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}` },
    });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(text).not.toContain(FOUND);
    const ticket = (JSON.parse(text) as { config: { aws_access_key_id: string } }).config.aws_access_key_id;
    expect(ticket).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    const view = await gw.ctx.vault.inspectTicket(ticket);
    expect(view).toMatchObject({
      principal: agent.ref,
      status: 'active',
      secret: expect.stringMatching(/^found-aws-access-key-/),
    });
    expect(view.destinations).toContain('conn:svc');
    // A found secret is bound to the credential placement only: a custom header is refused…
    const elsewhere = await request(`${gw.url}/c/svc/echo`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, 'x-aws-key': ticket },
    });
    expect(elsewhere.headers['x-coatcheck-error']).toBe('CC_ERR_TICKET_PLACEMENT');
    await elsewhere.body.text();
    // …and sending it back to the same connection as a credential releases the real value upstream.
    const back = await request(`${gw.url}/c/svc/echo`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
    });
    expect(back.statusCode).toBe(200);
    await back.body.text();
    expect(up.received.at(-1)?.headers.authorization).toBe(`Bearer ${FOUND}`);
    // Nothing of it in logs or audit.
    expect(gw.logs()).not.toContain(FOUND);
    await gw.ctx.audit.flush();
    expect(JSON.stringify(await gw.ctx.store.readAudit(0, 10_000))).not.toContain(FOUND);
  });
});

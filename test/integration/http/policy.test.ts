import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli } from '../../helpers/cli.js';
import { idToken, type SigningKey, startIssuer } from '../../helpers/oidc-issuer.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const SECRET = 'policy-canary-5d4c3b2a1f0e';

const POLICY = `@id("reads") permit(principal, action == Action::"http:GET", resource == Connection::"svc");
@id("posts-need-approval") @approval("required")
permit(principal, action == Action::"http:POST", resource == Connection::"svc");
@id("ops-may-put") permit(principal in Group::"ops", action == Action::"http:PUT", resource == Connection::"svc");
@id("users-masked") @mask("email,*token*")
permit(principal, action == Action::"http:GET", resource == Connection::"svc") when { context has path && context.path like "/users*" };
`;

describe('HTTP front-end under policy, approvals and OIDC identities', () => {
  let gw: Gateway;
  let up: Upstream;
  let idp: Awaited<ReturnType<typeof startIssuer>>;
  let signing: { kid: string; privateKey: SigningKey };
  let hookServer: Server;
  const hooks: Array<{ approval: { id: string } }> = [];
  let agent: { key: string; ref: string };
  let ticket: string;
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-policy-http-'));

  beforeAll(async () => {
    up = await startUpstream();
    idp = await startIssuer();
    signing = await idp.addKey('k1');
    hookServer = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => {
        body += c.toString();
      });
      req.on('end', () => {
        hooks.push(JSON.parse(body));
        res.end();
      });
    });
    await new Promise<void>((resolve) => hookServer.listen(0, '127.0.0.1', resolve));
    const hookUrl = `http://127.0.0.1:${(hookServer.address() as AddressInfo).port}/hook`;
    const policyFile = join(dir, 'http.cedar');
    writeFileSync(policyFile, POLICY);
    gw = await startGateway({
      extraConfig: `policy:\n  path: ${policyFile}\napprovals:\n  webhookUrl: ${hookUrl}\n  holdTimeout: 15s\nidentity:\n  oidc:\n    - issuer: ${idp.issuer}\n      audience: coatcheck\n`,
    });
    agent = await gw.createAgent('worker');
    await gw.addSecret('api', SECRET, ['svc']);
    await gw.addConnection('svc', up.url);
    ticket = await gw.issue('api', agent.ref);
  });

  afterAll(async () => {
    await gw?.close();
    await up?.close();
    await idp?.close();
    await new Promise<void>((resolve) => hookServer.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  const call = async (method: string, path: string, auth: string, body?: string) => {
    const res = await request(`${gw.url}/c/svc${path}`, {
      method: method as 'GET',
      headers: {
        'proxy-authorization': `Bearer ${auth}`,
        authorization: `Bearer ${ticket}`,
        'content-type': 'text/plain',
      },
      body,
    });
    return { status: res.statusCode, text: await res.body.text() };
  };

  it('a permitted read goes through; an action no policy permits is refused before any release', async () => {
    expect((await call('GET', '/items', agent.key)).status).toBe(200);
    expect(up.received.at(-1)?.headers.authorization).toBe(`Bearer ${SECRET}`);
    const before = up.received.length;
    const exchanges = (await gw.ctx.store.readAudit(0, 100_000)).filter(
      (r) => r.type === 'token.exchange',
    ).length;
    const denied = await call('DELETE', '/items/1', agent.key);
    expect(denied.status).toBe(403);
    expect(JSON.parse(denied.text).error).toMatchObject({
      code: 'CC_ERR_POLICY_DENIED',
      message: 'no policy permits http:DELETE on Connection svc (default deny)',
    });
    expect(up.received.length).toBe(before);
    await gw.ctx.audit.flush();
    const records = await gw.ctx.store.readAudit(0, 100_000);
    expect(records.filter((r) => r.type === 'token.exchange').length).toBe(exchanges);
    expect(records.filter((r) => r.type === 'policy.decision').map((r) => r.data.effect)).toEqual([
      'allow',
      'deny',
    ]);
  });

  it('holds a POST until it is approved through the CLI, and never lets that approval serve another body', async () => {
    const env = { COATCHECK_HOME: gw.dir };
    const held = call('POST', '/items', agent.key, 'create item 1');
    await expect.poll(() => hooks.length, { timeout: 15_000 }).toBe(1);
    const id = hooks[0]!.approval.id;
    expect(await cli(['approvals', 'approve', id, '--as', 'ada'], { env })).toMatchObject({ code: 0 });
    const done = await held;
    expect(done.status).toBe(200);
    expect(up.received.at(-1)?.body.toString()).toBe('create item 1');

    // Another body is another operation: a new request, which the approver denies.
    const other = call('POST', '/items', agent.key, 'create item 2');
    await expect.poll(() => hooks.length, { timeout: 15_000 }).toBe(2);
    expect(hooks[1]!.approval.id).not.toBe(id);
    await cli(['approvals', 'deny', hooks[1]!.approval.id, '--reason', 'no'], { env });
    const refused = await other;
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.text).error.code).toBe('CC_ERR_APPROVAL_DENIED');
    expect(up.received.some((r) => r.body.toString() === 'create item 2')).toBe(false);
  }, 60_000);

  it('accepts an OIDC JWT wherever an agent key is accepted; groups from the token decide', async () => {
    const ops = await idToken(idp.issuer, signing, {
      sub: 'u-ops',
      email: 'ops@example.com',
      groups: ['ops'],
    });
    const dev = await idToken(idp.issuer, signing, { sub: 'u-dev', groups: ['dev'] });
    const put = (auth: string) =>
      request(`${gw.url}/c/svc/items/9`, {
        method: 'PUT',
        headers: { 'proxy-authorization': `Bearer ${auth}` },
        body: 'x',
      }).then(async (r) => ({
        status: r.statusCode,
        text: await r.body.text(),
      }));
    const tokens = async (outcome: 'verified' | 'reused') =>
      (await gw.ctx.metrics.getSingleMetric('coatcheck_oidc_tokens_total')?.get())?.values.find(
        (v) => v.labels.outcome === outcome,
      )?.value ?? 0;
    const before = { verified: await tokens('verified'), reused: await tokens('reused') };
    for (let i = 0; i < 3; i++) expect((await put(ops)).status).toBe(200);
    // The first two calls checked the signature (the first fetched the issuer's key set while
    // it checked, so its answer is not kept); the third was served from the reuse window.
    expect(await tokens('verified')).toBe(before.verified + 2);
    expect(await tokens('reused')).toBe(before.reused + 1);
    const refused = await put(dev);
    expect(refused.status).toBe(403);
    expect(JSON.parse(refused.text).error.code).toBe('CC_ERR_POLICY_DENIED');
    const bad = await put(await idToken(idp.issuer, signing, { sub: 'x', groups: ['ops'] }, 'someone-else'));
    expect(bad.status).toBe(401);
    expect(JSON.parse(bad.text).error.code).toBe('CC_ERR_OIDC_AUDIENCE');
    // An agent ticket is bound to the agent: an OIDC principal presenting it is refused.
    const stolen = await call('GET', '/items', ops);
    expect(stolen.status).toBe(403);
    expect(JSON.parse(stolen.text).error.code).toBe('CC_ERR_TICKET_WRONG_PRINCIPAL');
    expect(gw.logs()).not.toContain(SECRET);
  });

  it('ends a long stream when the OIDC token behind it expires', async () => {
    let timer: NodeJS.Timeout | undefined;
    up.handle('/ticks', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      timer = setInterval(() => res.write('data: tick\n\n'), 50);
      res.on('close', () => clearInterval(timer));
    });
    const { SignJWT } = await import('jose');
    const shortLived = await new SignJWT({ groups: ['ops'] })
      .setProtectedHeader({ alg: 'ES256', kid: signing.kid })
      .setIssuer(idp.issuer)
      .setAudience('coatcheck')
      .setSubject('u-short')
      .setExpirationTime(Math.floor(Date.now() / 1000) + 2)
      .sign(signing.privateKey);
    const res = await request(`${gw.url}/c/svc/ticks`, {
      headers: { 'proxy-authorization': `Bearer ${shortLived}` },
    });
    expect(res.statusCode).toBe(200);
    const reading = (async () => {
      let text = '';
      for await (const chunk of res.body) text += chunk.toString();
      return text;
    })();
    await expect(reading).rejects.toThrow();
    clearInterval(timer);
    await gw.http.recorder.flush();
    const [latest] = await gw.ctx.store.listSessions({ limit: 1 });
    expect(latest?.outcome).toBe('CC_ERR_OIDC_EXPIRED');
  }, 30_000);

  it("applies a policy's @mask to JSON response fields, and withholds a body it cannot mask", async () => {
    up.handle('/users', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify([
          { id: 1, name: 'Ada', email: 'ada@example.com', profile: { api_token: 'abc', theme: 'dark' } },
        ]),
      );
    });
    up.handle('/users.txt', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ada@example.com');
    });
    const masked = await call('GET', '/users', agent.key);
    expect(masked.status).toBe(200);
    expect(JSON.parse(masked.text)).toEqual([
      { id: 1, name: 'Ada', email: '***', profile: { api_token: '***', theme: 'dark' } },
    ]);
    const text = await call('GET', '/users.txt', agent.key);
    expect(text.status).toBe(502);
    expect(JSON.parse(text.text).error.code).toBe('CC_ERR_GATEWAY_MASK_UNSUPPORTED');
    expect(text.text).not.toContain('ada@example.com');
    // Paths the masking policy does not name are untouched.
    up.handle('/items', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ email: 'kept@example.com' }));
    });
    expect(JSON.parse((await call('GET', '/items', agent.key)).text)).toEqual({ email: 'kept@example.com' });
  });
});

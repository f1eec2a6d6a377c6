import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/** A real (small) OIDC provider: discovery, JWKS, /authorize that signs the user in at once, /token with PKCE. */
async function startProvider(user: () => { sub: string; email: string; groups: string[] }) {
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  const codes = new Map<string, { challenge: string; nonce: string; redirect: string }>();
  let n = 0;
  const server: Server = createServer((req, res) => {
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const url = new URL(req.url ?? '/', base);
    if (url.pathname === '/.well-known/openid-configuration') {
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          issuer: base,
          authorization_endpoint: `${base}/authorize`,
          token_endpoint: `${base}/token`,
          jwks_uri: `${base}/jwks`,
        }),
      );
    } else if (url.pathname === '/jwks') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: [jwk] }));
    } else if (url.pathname === '/authorize') {
      const code = `code-${++n}`;
      codes.set(code, {
        challenge: url.searchParams.get('code_challenge') ?? '',
        nonce: url.searchParams.get('nonce') ?? '',
        redirect: url.searchParams.get('redirect_uri') ?? '',
      });
      const back = new URL(url.searchParams.get('redirect_uri')!);
      back.searchParams.set('code', code);
      back.searchParams.set('state', url.searchParams.get('state') ?? '');
      res.writeHead(302, { location: back.toString() });
      res.end();
    } else if (url.pathname === '/token' && req.method === 'POST') {
      let body = '';
      req.on('data', (c: Buffer) => {
        body += c.toString();
      });
      req.on('end', async () => {
        const form = new URLSearchParams(body);
        const grant = codes.get(form.get('code') ?? '');
        codes.delete(form.get('code') ?? '');
        const verifier = form.get('code_verifier') ?? '';
        if (
          grant === undefined ||
          createHash('sha256').update(verifier).digest('base64url') !== grant.challenge
        ) {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'invalid_grant' }));
          return;
        }
        const who = user();
        const idToken = await new SignJWT({ email: who.email, groups: who.groups, nonce: grant.nonce })
          .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
          .setIssuer(base)
          .setAudience('coatcheck-console')
          .setSubject(who.sub)
          .setIssuedAt()
          .setExpirationTime('10m')
          .sign(privateKey);
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ id_token: idToken, token_type: 'Bearer' }));
      });
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    issuer: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

describe('console single sign-on (OIDC, authorization code with PKCE)', () => {
  let t: TestHome;
  let ctx: Context;
  let admin: AdminServer;
  let idp: Awaited<ReturnType<typeof startProvider>>;
  let current = { sub: 'u-ada', email: 'ada@example.com', groups: ['ops'] };

  beforeAll(async () => {
    idp = await startProvider(() => current);
    t = await makeTestHome();
    const port = await freePort();
    writeFileSync(
      t.home.configFile,
      `console:\n  oidc:\n    issuer: ${idp.issuer}\n    clientId: coatcheck-console\n    redirectUrl: http://127.0.0.1:${port}/console/oidc/callback\n    adminGroups: [ops]\n`,
    );
    ctx = await t.open();
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port }, pino({ level: 'silent' }));
  });
  afterAll(async () => {
    await admin?.close();
    await ctx?.close();
    await idp?.close();
    t?.remove();
  });

  /** Follow the redirects by hand, as a browser would, up to the console. */
  async function signIn(): Promise<{ status: number; location: string | null; body: string }> {
    let url = `${admin.url}/console/oidc/login`;
    for (let hop = 0; hop < 5; hop++) {
      const res = await fetch(url, { redirect: 'manual' });
      const location = res.headers.get('location');
      if (res.status !== 302 || location === null)
        return { status: res.status, location, body: await res.text() };
      if (location.startsWith('/console/')) return { status: 302, location, body: '' };
      url = new URL(location, url).toString();
    }
    throw new Error('too many redirects');
  }

  it('advertises itself to the console, signs a member of an admin group in, and acts as that human', async () => {
    expect(await (await fetch(`${admin.url}/console/oidc/config`)).json()).toEqual({ enabled: true });
    const done = await signIn();
    expect(done.location).toMatch(/^\/console\/#\/login\?session=ccu_[A-Za-z0-9_-]{43}$/);
    const token = done.location!.split('session=')[1]!;
    const status = await fetch(`${admin.url}/v1/status`, { headers: { authorization: `Bearer ${token}` } });
    expect(status.status).toBe(200);
    // An approval decided through this session names the human and their groups.
    const principal = await ctx.agents.authenticate(
      (await ctx.agents.create({ name: 'w2' }, 'admin:test')).key,
    );
    const pending = await ctx.approvals.request(
      principal,
      {
        kind: 'sql',
        connection: 'db',
        action: 'sql:write',
        summary: 'DELETE FROM t',
        detail: { statement: 'DELETE FROM t' },
      },
      { approvers: ['ops'], quorum: 1 },
    );
    const approved = await fetch(`${admin.url}/v1/approvals/${pending.id}/approve`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: '{}',
    });
    expect(approved.status).toBe(200);
    expect(
      ((await approved.json()) as { decisions: { by: string; name: string }[] }).decisions[0],
    ).toMatchObject({
      by: `oidc:${idp.issuer}#u-ada`,
      name: 'ada@example.com',
    });
    await ctx.audit.flush();
    const last = (await ctx.store.tailAudit(5)).find((r) => r.type === 'approval.approve');
    expect(last?.actor).toBe(`oidc:${idp.issuer}#u-ada`);
  });

  it('refuses someone outside the admin groups, a replayed callback, and a made-up session token', async () => {
    current = { sub: 'u-bob', email: 'bob@example.com', groups: ['dev'] };
    const refused = await signIn();
    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body).error).toMatchObject({
      code: 'CC_ERR_ADMIN_UNAUTHORIZED',
      message: 'bob@example.com is not in a console group (ops)',
    });
    const replay = await fetch(`${admin.url}/console/oidc/callback?code=code-1&state=never-issued`, {
      redirect: 'manual',
    });
    expect(replay.status).toBe(401);
    const fake = await fetch(`${admin.url}/v1/status`, {
      headers: { authorization: `Bearer ccu_${'A'.repeat(43)}` },
    });
    expect(fake.status).toBe(401);
  });
});

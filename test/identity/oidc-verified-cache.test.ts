import { SignJWT } from 'jose';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { OidcVerifier } from '../../src/identity/oidc.js';
import { type SigningKey, startIssuer } from '../helpers/oidc-issuer.js';

const T0 = Date.parse('2026-06-01T12:00:00Z');

/**
 * A client presents the same bearer token on every request, so a verified token is reused
 * for up to a minute instead of checking its signature again. Reuse must never accept what
 * a fresh check would refuse: past `exp`, after the issuer's keys changed, a token that
 * differs in any byte, or for longer than the minute.
 */
describe('OIDC: verified tokens reused', () => {
  let idp: Awaited<ReturnType<typeof startIssuer>>;
  let key: { kid: string; privateKey: SigningKey };
  let now: number;
  let verifier: OidcVerifier;

  beforeEach(async () => {
    idp = await startIssuer();
    key = await idp.addKey('k1');
    now = T0;
    verifier = new OidcVerifier(
      [{ issuer: idp.issuer, audience: 'coatcheck', clockSkewSeconds: 30, jwksCooldownMs: 0 }],
      { now: () => now },
    );
  });
  afterEach(() => idp.close());

  const token = (options: { exp?: number; sub?: string; signer?: typeof key; groups?: string[] } = {}) =>
    new SignJWT({ groups: options.groups ?? ['ops'], email: 'ada@example.com' })
      .setProtectedHeader({ alg: 'ES256', kid: (options.signer ?? key).kid })
      .setIssuer(idp.issuer)
      .setAudience('coatcheck')
      .setSubject(options.sub ?? 'user-1')
      .setIssuedAt(Math.floor(T0 / 1000))
      .setExpirationTime(options.exp ?? Math.floor(T0 / 1000) + 3600)
      .sign((options.signer ?? key).privateKey);

  const code = (p: Promise<unknown>) =>
    p.then(
      () => 'accepted',
      (e: { code?: string }) => e.code ?? String(e),
    );

  it('reuses a verified token (the control): the same principal, no signature checked', async () => {
    const t = await token();
    const first = await verifier.verify(t);
    await verifier.verify(t); // the key set is known from here on
    const checked = verifier.counts.verified;
    for (let i = 0; i < 5; i++) expect(await verifier.verify(t)).toEqual(first);
    expect(verifier.counts.verified).toBe(checked);
    expect(verifier.counts.reused).toBe(5);
  });

  it('a changed copy cannot reach the next request', async () => {
    const t = await token({ groups: ['ops'] });
    await verifier.verify(t);
    await verifier.verify(t);
    const served = await verifier.verify(t); // from the cache
    expect(verifier.counts.reused).toBe(1);
    (served.groups as string[]).push('admin');
    (served.attributes as Record<string, unknown>).email = 'mallory@example.com';
    const next = await verifier.verify(t);
    expect(next.groups).toEqual(['ops']);
    expect(next.attributes.email).toBe('ada@example.com');
  });

  it('never past exp, even within the clock skew a fresh check allows', async () => {
    const exp = Math.floor(T0 / 1000) + 20;
    const t = await token({ exp });
    await verifier.verify(t);
    await verifier.verify(t);
    const reused = verifier.counts.reused;
    now = exp * 1000; // at exp: the fresh check decides (30 s of skew still accepts it)
    expect(await code(verifier.verify(t))).toBe('accepted');
    expect(verifier.counts.reused).toBe(reused);
    now = exp * 1000 + 31_000; // past the skew: refused, not served
    expect(await code(verifier.verify(t))).toBe('CC_ERR_OIDC_EXPIRED');
  });

  it('checks the signature again after a minute', async () => {
    const t = await token();
    await verifier.verify(t);
    await verifier.verify(t);
    const checked = verifier.counts.verified;
    now += 59_000;
    await verifier.verify(t);
    expect(verifier.counts.verified).toBe(checked);
    now += 1_000;
    await verifier.verify(t);
    expect(verifier.counts.verified).toBe(checked + 1);
  });

  it("the issuer's keys reloaded (a key withdrawn): a token signed with the old key is refused, not served", async () => {
    const t = await token();
    await verifier.verify(t);
    await verifier.verify(t);
    expect(await code(verifier.verify(t))).toBe('accepted');
    // The issuer withdraws k1 and signs with k2; the first k2 token makes the verifier
    // fetch the key set again.
    idp.dropKeys();
    const k2 = await idp.addKey('k2');
    expect(await code(verifier.verify(await token({ signer: k2, sub: 'user-2' })))).toBe('accepted');
    expect(await code(verifier.verify(t))).toBe('CC_ERR_OIDC_UNKNOWN_KEY');
  });

  it('a token that differs in one byte of its signature, payload or header is checked, and refused', async () => {
    const t = await token();
    await verifier.verify(t);
    await verifier.verify(t);
    const [header, payload, signature] = t.split('.') as [string, string, string];
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
    for (const forged of [
      `${header}.${payload}.${flip(signature, 10)}`,
      `${header}.${flip(payload, 12)}.${signature}`,
      `${flip(header, 5)}.${payload}.${signature}`,
      `${header}.${payload}.`,
    ]) {
      expect(await code(verifier.verify(forged))).not.toBe('accepted');
    }
    expect(await code(verifier.verify(t))).toBe('accepted');
  });

  it('another subject or audience is never served from a neighbour entry', async () => {
    const a = await token({ sub: 'alice' });
    const b = await token({ sub: 'bob' });
    for (const t of [a, b, a, b]) await verifier.verify(t);
    expect((await verifier.verify(a)).ref).toBe(`oidc:${idp.issuer}#alice`);
    expect((await verifier.verify(b)).ref).toBe(`oidc:${idp.issuer}#bob`);
    const other = new OidcVerifier([{ issuer: idp.issuer, audience: 'someone-else', clockSkewSeconds: 30 }], {
      now: () => now,
    });
    expect(await code(other.verify(a))).toBe('CC_ERR_OIDC_AUDIENCE');
  });
});

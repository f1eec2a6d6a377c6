import { generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OidcVerifier } from '../../src/identity/oidc.js';
import { type SigningKey, startIssuer } from '../helpers/oidc-issuer.js';

describe('OIDC identities', () => {
  let idp: Awaited<ReturnType<typeof startIssuer>>;
  let signingKey: { kid: string; privateKey: SigningKey };
  let verifier: OidcVerifier;

  beforeAll(async () => {
    idp = await startIssuer();
    signingKey = await idp.addKey('k1');
    verifier = new OidcVerifier([
      {
        issuer: idp.issuer,
        audience: 'coatcheck',
        groupsClaim: 'groups',
        clockSkewSeconds: 5,
        jwksCooldownMs: 0,
      },
    ]);
  });
  afterAll(() => idp.close());

  const token = (
    claims: Record<string, unknown> = {},
    options: { key?: { kid: string; privateKey: SigningKey }; exp?: string | number } = {},
  ) => {
    const key = options.key ?? signingKey;
    return new SignJWT({ groups: ['ops', 'dba'], email: 'ada@example.com', ...claims })
      .setProtectedHeader({ alg: 'ES256', kid: key.kid })
      .setIssuer((claims.iss as string | undefined) ?? idp.issuer)
      .setAudience((claims.aud as string | undefined) ?? 'coatcheck')
      .setSubject('user-1')
      .setIssuedAt()
      .setExpirationTime(options.exp ?? '5m')
      .sign(key.privateKey);
  };

  it('turns a valid token into a principal with groups and claims', async () => {
    const principal = await verifier.verify(await token());
    expect(principal).toMatchObject({
      kind: 'oidc',
      ref: `oidc:${idp.issuer}#user-1`,
      name: 'ada@example.com',
      groups: ['ops', 'dba'],
      attributes: expect.objectContaining({ sub: 'user-1', email: 'ada@example.com' }),
    });
    expect(principal.expiresAt).toBeGreaterThan(Date.now());
  });

  it('refuses expired, wrong-audience, wrong-issuer, unknown-key, tampered and malformed tokens with distinct codes', async () => {
    const code = (p: Promise<unknown>) =>
      p.then(
        () => 'accepted',
        (e: { code: string }) => e.code,
      );
    expect(await code(verifier.verify(await token({}, { exp: Math.floor(Date.now() / 1000) - 60 })))).toBe(
      'CC_ERR_OIDC_EXPIRED',
    );
    expect(await code(verifier.verify(await token({ aud: 'someone-else' })))).toBe('CC_ERR_OIDC_AUDIENCE');
    expect(await code(verifier.verify(await token({ iss: 'https://evil.example.com' })))).toBe(
      'CC_ERR_OIDC_ISSUER',
    );
    const stranger = await generateKeyPair('ES256');
    expect(
      await code(
        verifier.verify(
          await token({}, { key: { kid: 'never-published', privateKey: stranger.privateKey } }),
        ),
      ),
    ).toBe('CC_ERR_OIDC_UNKNOWN_KEY');
    // A published kid, but signed by another key: the signature fails.
    expect(
      await code(verifier.verify(await token({}, { key: { kid: 'k1', privateKey: stranger.privateKey } }))),
    ).toBe('CC_ERR_OIDC_SIGNATURE');
    const good = await token();
    const [header, payload, signature] = good.split('.');
    const forged = Buffer.from(
      JSON.stringify({ ...JSON.parse(Buffer.from(payload!, 'base64url').toString()), groups: ['admins'] }),
    ).toString('base64url');
    expect(await code(verifier.verify(`${header}.${forged}.${signature}`))).toBe('CC_ERR_OIDC_SIGNATURE');
    expect(await code(verifier.verify('not.a-jwt'))).toBe('CC_ERR_OIDC_MALFORMED');
    expect(await code(verifier.verify('a'.repeat(20_000)))).toBe('CC_ERR_OIDC_MALFORMED');
  });

  it('picks up key rotation at the issuer', async () => {
    await verifier.verify(await token());
    const before = idp.fetches();
    const rotated = await idp.addKey('k2');
    const principal = await verifier.verify(await token({}, { key: rotated }));
    expect(principal.ref).toBe(`oidc:${idp.issuer}#user-1`);
    expect(idp.fetches()).toBeGreaterThan(before);
  });

  it('says the issuer is unavailable when its discovery document cannot be fetched', async () => {
    const offline = new OidcVerifier([{ issuer: 'http://127.0.0.1:1', audience: 'coatcheck' }]);
    const t = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer('http://127.0.0.1:1')
      .setAudience('coatcheck')
      .setSubject('x')
      .setExpirationTime('5m')
      .sign(signingKey.privateKey);
    await expect(offline.verify(t)).rejects.toMatchObject({ code: 'CC_ERR_OIDC_UNAVAILABLE' });
  });
});

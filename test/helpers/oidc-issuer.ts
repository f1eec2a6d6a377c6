import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';

export type SigningKey = Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];

/** A real OIDC issuer on loopback: discovery + JWKS, keys made here, rotatable. */
export async function startIssuer() {
  let keys: { kid: string; privateKey: SigningKey; jwk: JWK }[] = [];
  const addKey = async (kid: string) => {
    const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
    keys.push({ kid, privateKey, jwk });
    return { kid, privateKey };
  };
  let jwksFetches = 0;
  const server: Server = createServer((req, res) => {
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    if (req.url === '/.well-known/openid-configuration') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ issuer: base, jwks_uri: `${base}/jwks` }));
    } else if (req.url === '/jwks') {
      jwksFetches++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: keys.map((k) => k.jwk) }));
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    addKey,
    dropKeys: () => {
      keys = [];
    },
    fetches: () => jwksFetches,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** A signed ID token from `issuer` for `audience`. */
export function idToken(
  issuer: string,
  key: { kid: string; privateKey: SigningKey },
  claims: Record<string, unknown>,
  audience = 'coatcheck',
): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', kid: key.kid })
    .setIssuer(issuer)
    .setAudience(audience)
    .setSubject(String(claims.sub ?? 'user-1'))
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(key.privateKey);
}

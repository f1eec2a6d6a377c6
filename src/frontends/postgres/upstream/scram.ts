import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { CoatcheckError } from '../../../core/errors.js';

/**
 * The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it: no
 * channel binding ('n,,'), the user name left empty (the server takes it from the
 * startup packet). The server signature is verified, so a server that does not know
 * the password cannot pretend it accepted it.
 */

const MAX_ITERATIONS = 1_000_000;

function fail(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_PG_UPSTREAM_AUTH', `upstream SCRAM-SHA-256: ${message}`);
}

function hmac(key: Buffer, text: string | Buffer): Buffer {
  return createHmac('sha256', key).update(text).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

function attributes(message: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of message.split(',')) {
    const eq = part.indexOf('=');
    if (eq !== 1) throw fail('malformed server message');
    out.set(part[0]!, part.slice(2));
  }
  return out;
}

/** SASLprep is not applied: PostgreSQL itself accepts the raw bytes when SASLprep fails, and so do we. */
export class ScramClient {
  readonly #password: Buffer;
  readonly #clientNonce = randomBytes(18).toString('base64');
  #clientFirstBare = '';
  #serverSignature: Buffer | null = null;

  constructor(password: Buffer) {
    this.#password = password;
  }

  /** SASLInitialResponse data: mechanism name, then the client-first-message. */
  initialResponse(): Buffer {
    this.#clientFirstBare = `n=,r=${this.#clientNonce}`;
    const first = Buffer.from(`n,,${this.#clientFirstBare}`);
    const mechanism = Buffer.from('SCRAM-SHA-256\0');
    const length = Buffer.alloc(4);
    length.writeInt32BE(first.length);
    return Buffer.concat([mechanism, length, first]);
  }

  /** Given server-first-message (AuthenticationSASLContinue data), the client-final-message. */
  continue(serverFirst: Buffer): Buffer {
    const text = serverFirst.toString('utf8');
    const attrs = attributes(text);
    const nonce = attrs.get('r');
    const salt = attrs.get('s');
    const iterations = Number(attrs.get('i'));
    if (
      nonce === undefined ||
      !nonce.startsWith(this.#clientNonce) ||
      nonce.length === this.#clientNonce.length
    )
      throw fail('server nonce does not extend the client nonce');
    if (salt === undefined || salt === '') throw fail('no salt');
    if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS)
      throw fail('iteration count out of range');
    const salted = pbkdf2Sync(this.#password, Buffer.from(salt, 'base64'), iterations, 32, 'sha256');
    const clientKey = hmac(salted, 'Client Key');
    const storedKey = createHash('sha256').update(clientKey).digest();
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.#clientFirstBare},${text},${withoutProof}`;
    const proof = xor(clientKey, hmac(storedKey, authMessage));
    this.#serverSignature = hmac(hmac(salted, 'Server Key'), authMessage);
    salted.fill(0);
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`);
  }

  /** Verify server-final-message (AuthenticationSASLFinal data). */
  final(serverFinal: Buffer): void {
    const attrs = attributes(serverFinal.toString('utf8'));
    if (attrs.has('e')) throw fail('server reported an error');
    const v = Buffer.from(attrs.get('v') ?? '', 'base64');
    if (this.#serverSignature === null || v.length !== 32 || !timingSafeEqual(v, this.#serverSignature))
      throw fail('server signature does not verify');
  }
}

/** PostgreSQL's md5 password hash: 'md5' + md5(md5(password + user) + salt). */
export function md5Password(user: string, password: Buffer, salt: Buffer): Buffer {
  const inner = createHash('md5')
    .update(Buffer.concat([password, Buffer.from(user)]))
    .digest('hex');
  const outer = createHash('md5')
    .update(Buffer.concat([Buffer.from(inner), salt]))
    .digest('hex');
  return Buffer.from(`md5${outer}\0`);
}

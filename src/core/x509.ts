import { createHash, type KeyObject, randomBytes, sign } from 'node:crypto';
import { isIP } from 'node:net';

/**
 * A minimal X.509 v3 certificate writer (RFC 5280) for the forward proxy's local CA:
 * ECDSA P-256 with SHA-256, the extensions a TLS server and a CA need, DER by hand.
 * Deliberately small: it writes only what it is told (no parsing; Node's
 * `X509Certificate` and OpenSSL read the output in the tests).
 */

function length(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), length(body.length), body]);
}

const seq = (...items: Buffer[]) => tlv(0x30, ...items);
const set = (...items: Buffer[]) => tlv(0x31, ...items);
const octets = (data: Buffer) => tlv(0x04, data);
const bool = (value: boolean) => tlv(0x01, Buffer.from([value ? 0xff : 0x00]));
const explicit = (n: number, inner: Buffer) => tlv(0xa0 | n, inner);

function integer(data: Buffer): Buffer {
  let i = 0;
  while (i < data.length - 1 && data[i] === 0 && (data[i + 1]! & 0x80) === 0) i++;
  const trimmed = data.subarray(i);
  return tlv(0x02, (trimmed[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
}

function oid(text: string): Buffer {
  const parts = text.split('.').map(Number);
  const out: number[] = [40 * parts[0]! + parts[1]!];
  for (const part of parts.slice(2)) {
    const stack: number[] = [part & 0x7f];
    for (let v = Math.floor(part / 128); v > 0; v = Math.floor(v / 128)) stack.unshift((v & 0x7f) | 0x80);
    out.push(...stack);
  }
  return tlv(0x06, Buffer.from(out));
}

function time(date: Date): Buffer {
  const iso = date.toISOString(); // 2026-01-02T03:04:05.678Z
  const digits = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
  return date.getUTCFullYear() < 2050
    ? tlv(0x17, Buffer.from(digits.slice(2)))
    : tlv(0x18, Buffer.from(digits));
}

function name(commonName: string, organization: string | undefined): Buffer {
  const rdns = [];
  if (organization !== undefined) rdns.push(set(seq(oid('2.5.4.10'), tlv(0x0c, Buffer.from(organization)))));
  rdns.push(set(seq(oid('2.5.4.3'), tlv(0x0c, Buffer.from(commonName)))));
  return seq(...rdns);
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid(id), bool(true), octets(value)) : seq(oid(id), octets(value));
}

function ipBytes(ip: string): Buffer {
  if (isIP(ip) === 4) return Buffer.from(ip.split('.').map(Number));
  // IPv6: expand `::` and write eight 16-bit groups.
  const [head = '', tail = ''] = ip.split('::');
  const h = head === '' ? [] : head.split(':');
  const t = tail === '' ? [] : tail.split(':');
  const groups = ip.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
  const out = Buffer.alloc(16);
  for (const [i, g] of groups.entries()) out.writeUInt16BE(Number.parseInt(g, 16), i * 2);
  return out;
}

/** Key identifier (RFC 5280 §4.2.1.2 method 1): SHA-1 of the subjectPublicKey bits. */
function keyId(spki: Buffer): Buffer {
  // For a P-256 SPKI the BIT STRING is the last 66 bytes: 0x03 0x42 0x00 + 65-byte point.
  return createHash('sha1')
    .update(spki.subarray(spki.length - 65))
    .digest();
}

export interface CertificateRequest {
  readonly subject: string;
  readonly organization?: string;
  readonly issuer: {
    readonly subject: string;
    readonly organization?: string;
    readonly key: KeyObject;
    readonly publicKey: KeyObject;
  };
  readonly publicKey: KeyObject;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** A CA certificate (basicConstraints CA, pathlen 0, keyCertSign), or a TLS server leaf. */
  readonly ca: boolean;
  /** Leaf only: DNS names and IP addresses for subjectAltName. */
  readonly hosts?: readonly string[];
}

const ECDSA_SHA256 = seq(oid('1.2.840.10045.4.3.2'));

/** Write and sign one certificate; returns PEM. */
export function createCertificate(request: CertificateRequest): string {
  const spki = request.publicKey.export({ type: 'spki', format: 'der' });
  const issuerSpki = request.issuer.publicKey.export({ type: 'spki', format: 'der' });
  const extensions = [
    request.ca
      ? extension('2.5.29.19', true, seq(bool(true), integer(Buffer.from([0]))))
      : extension('2.5.29.19', true, seq()),
    // keyUsage: CA digitalSignature|keyCertSign|cRLSign; leaf digitalSignature.
    extension(
      '2.5.29.15',
      true,
      request.ca ? tlv(0x03, Buffer.from([0x01, 0x86])) : tlv(0x03, Buffer.from([0x07, 0x80])),
    ),
    extension('2.5.29.14', false, octets(keyId(spki))),
    extension('2.5.29.35', false, seq(tlv(0x80, keyId(issuerSpki)))),
  ];
  if (!request.ca) {
    extensions.push(extension('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.1'))));
    const names = (request.hosts ?? []).map((host) =>
      isIP(host) !== 0 ? tlv(0x87, ipBytes(host)) : tlv(0x82, Buffer.from(host, 'ascii')),
    );
    extensions.push(extension('2.5.29.17', false, seq(...names)));
  }
  const serial = randomBytes(16);
  serial[0] = serial[0]! & 0x7f;
  const tbs = seq(
    explicit(0, integer(Buffer.from([2]))),
    integer(serial),
    ECDSA_SHA256,
    name(request.issuer.subject, request.issuer.organization),
    seq(time(request.notBefore), time(request.notAfter)),
    name(request.subject, request.organization),
    spki,
    explicit(3, seq(...extensions)),
  );
  const signature = sign('sha256', tbs, request.issuer.key);
  const der = seq(tbs, ECDSA_SHA256, tlv(0x03, Buffer.from([0]), signature));
  const b64 = der.toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN CERTIFICATE-----\n${b64.endsWith('\n') ? b64 : `${b64}\n`}-----END CERTIFICATE-----\n`;
}

import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { createCertificate } from './x509.js';

describe('createCertificate', () => {
  const ca = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const issuer = {
    subject: 'test CA',
    organization: 'coatcheck',
    key: ca.privateKey,
    publicKey: ca.publicKey,
  };
  const caPem = createCertificate({
    subject: 'test CA',
    organization: 'coatcheck',
    issuer,
    publicKey: ca.publicKey,
    notBefore: new Date('2026-01-01T00:00:00Z'),
    notAfter: new Date('2060-01-01T00:00:00Z'),
    ca: true,
  });

  it('writes a self-signed CA certificate that verifies, with GeneralizedTime past 2049', () => {
    const cert = new X509Certificate(caPem);
    expect(cert.ca).toBe(true);
    expect(cert.subject).toBe('O=coatcheck\nCN=test CA');
    expect(cert.issuer).toBe(cert.subject);
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(new Date(cert.validFrom).toISOString()).toBe('2026-01-01T00:00:00.000Z');
    expect(new Date(cert.validTo).toISOString()).toBe('2060-01-01T00:00:00.000Z');
    expect(cert.keyUsage).toBeUndefined(); // Node reports extended key usage only; none on a CA
  });

  it('writes leaves for DNS names and IPv4/IPv6 addresses, signed by the CA', () => {
    const leafKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = createCertificate({
      subject: 'api.example.com',
      issuer,
      publicKey: leafKey.publicKey,
      notBefore: new Date('2026-01-01T00:00:00Z'),
      notAfter: new Date('2026-01-08T00:00:00Z'),
      ca: false,
      hosts: ['api.example.com', '127.0.0.1', '::1', '2001:db8::5'],
    });
    const leaf = new X509Certificate(pem);
    expect(leaf.ca).toBe(false);
    expect(leaf.verify(ca.publicKey)).toBe(true);
    expect(leaf.checkIssued(new X509Certificate(caPem))).toBe(true);
    expect(leaf.checkPrivateKey(leafKey.privateKey)).toBe(true);
    expect(leaf.checkHost('api.example.com')).toBe('api.example.com');
    expect(leaf.checkHost('other.example.com')).toBeUndefined();
    expect(leaf.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(leaf.checkIP('::1')).toBe('::1');
    expect(leaf.checkIP('2001:db8::5')).toBe('2001:db8::5');
    expect(leaf.checkIP('10.0.0.1')).toBeUndefined();
    expect(leaf.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
    expect(leaf.subjectAltName).toBe(
      'DNS:api.example.com, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:2001:DB8:0:0:0:0:0:5',
    );
  });

  it('gives every certificate its own serial number', () => {
    const serials = new Set(
      Array.from(
        { length: 20 },
        () =>
          new X509Certificate(
            createCertificate({
              subject: 'x.example',
              issuer,
              publicKey: ca.publicKey,
              notBefore: new Date(),
              notAfter: new Date(Date.now() + 1000),
              ca: false,
              hosts: ['x.example'],
            }),
          ).serialNumber,
      ),
    );
    expect(serials.size).toBe(20);
  });
});

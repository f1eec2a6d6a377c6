import { B64 } from '../synth.js';
import type { Rng, Rule, RuleSample } from '../types.js';
import { custom, samplePositives } from './builders.js';

/** Body of a PEM block: base64, headers (Proc-Type, DEK-Info), line breaks, JSON `\n` escapes. */
const PEM_BODY = '(?:[A-Za-z0-9+/=:,. \\t\\r\\n\\\\]|-(?!----)){64,8000}';

function pemBlock(rng: Rng, label: string, lines = 12): string {
  const body = Array.from({ length: lines }, () => rng.chars(B64, 64)).join('\n');
  return `-----BEGIN ${label}-----\n${body}\n-----END ${label}-----`;
}

function pem(id: string, label: string, title: string, keyword: string): Rule {
  const sample = (rng: Rng): RuleSample => {
    const v = pemBlock(rng, label);
    return { key: 'private_key', value: v, secret: v, standalone: true };
  };
  return custom({
    id,
    family: 'private-key',
    title,
    pattern: new RegExp(`(-----BEGIN ${label}-----${PEM_BODY}-----END ${label}-----)`),
    keywords: [keyword],
    maxLength: 8200,
    allowPlaceholders: true,
    minEntropy: 4,
    sample,
    positives: [
      ...samplePositives(id, sample),
      ...samplePositives(`${id}:json`, sample, (v) => `{"key": ${JSON.stringify(v)}}`).map((p) => ({
        text: p.text,
        secret: JSON.stringify(p.secret).slice(1, -1),
      })),
    ],
    negatives: [
      `-----BEGIN ${label}-----\n...\n-----END ${label}-----`,
      `-----BEGIN ${label}-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC\n`,
      `-----BEGIN ${label}-----`.repeat(3),
    ],
  });
}

export const PRIVATE_KEY_RULES: readonly Rule[] = [
  pem('private-key-rsa', 'RSA PRIVATE KEY', 'RSA private key (PKCS#1 PEM)', 'begin rsa private key'),
  pem('private-key-ec', 'EC PRIVATE KEY', 'Elliptic-curve private key (SEC1 PEM)', 'begin ec private key'),
  pem('private-key-dsa', 'DSA PRIVATE KEY', 'DSA private key (PEM)', 'begin dsa private key'),
  pem('private-key-openssh', 'OPENSSH PRIVATE KEY', 'OpenSSH private key', 'begin openssh private key'),
  pem('private-key-pkcs8', 'PRIVATE KEY', 'Private key (PKCS#8 PEM)', 'begin private key'),
  pem(
    'private-key-pkcs8-encrypted',
    'ENCRYPTED PRIVATE KEY',
    'Encrypted private key (PKCS#8 PEM)',
    'begin encrypted private key',
  ),
  pem(
    'pgp-private-key-block',
    'PGP PRIVATE KEY BLOCK',
    'PGP / GPG private key block',
    'begin pgp private key block',
  ),
  pem(
    'ssh2-encrypted-private-key',
    'SSH2 ENCRYPTED PRIVATE KEY',
    'SSH2 (RFC 4716 style) encrypted private key',
    'begin ssh2 encrypted private key',
  ),
  custom({
    id: 'putty-private-key',
    family: 'private-key',
    title: 'PuTTY private key file (PPK)',
    pattern:
      /PuTTY-User-Key-File-[23]: [^\r\n\\]{1,64}(?:\r?\n|(?:\\r)?\\n)[\s\S]{0,2000}?Private-Lines: \d{1,3}(?:\r?\n|(?:\\r)?\\n)((?:[A-Za-z0-9+/=]{1,64}(?:\r?\n|(?:\\r)?\\n)){1,60})/,
    keywords: ['putty-user-key-file-'],
    maxLength: 8000,
    allowPlaceholders: true,
    sample: (rng) => {
      const priv = `${Array.from({ length: 14 }, () => rng.chars(B64, 64)).join('\n')}\n`;
      return {
        key: 'ppk',
        value: `PuTTY-User-Key-File-3: ssh-rsa\nEncryption: none\nComment: deploy\nPublic-Lines: 1\n${rng.chars(B64, 64)}\nPrivate-Lines: 14\n${priv}Private-MAC: ${rng.chars('0123456789abcdef', 64)}`,
        secret: priv,
        standalone: true,
      };
    },
    positives: samplePositives('putty-private-key', (rng) => {
      const priv = `${Array.from({ length: 4 }, () => rng.chars(B64, 64)).join('\n')}\n`;
      return {
        key: 'ppk',
        value: `PuTTY-User-Key-File-2: ssh-ed25519\nEncryption: none\nPrivate-Lines: 4\n${priv}Private-MAC: 00`,
        secret: priv,
        standalone: true,
      };
    }),
    negatives: ['PuTTY-User-Key-File-3: ssh-rsa\nEncryption: none\n'],
  }),
];

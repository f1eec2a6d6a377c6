import { isIPv6 } from 'node:net';
import { DIGITS, LOWER } from '../synth.js';
import type { Rng, Rule, RuleSample } from '../types.js';
import { ibanValid, luhnValid, makeIban, makeLuhn } from '../validators.js';
import { custom, samplePositives } from './builders.js';

function standalone(make: (rng: Rng) => string, key: string) {
  return (rng: Rng): RuleSample => {
    const v = make(rng);
    return { key, value: v, secret: v, standalone: true };
  };
}

const email = standalone(
  (rng) => `${rng.chars(LOWER, 6)}.${rng.chars(LOWER, 5)}@${rng.chars(LOWER, 7)}.com`,
  'email',
);
const card = standalone((rng) => {
  const d = makeLuhn(`4${rng.chars(DIGITS, 14)}`);
  return `${d.slice(0, 4)} ${d.slice(4, 8)} ${d.slice(8, 12)} ${d.slice(12)}`;
}, 'card_number');
const iban = standalone((rng) => makeIban('DE', rng.chars(DIGITS, 18)), 'iban');
const ssn = standalone((rng) => `${100 + rng.int(500)}-${10 + rng.int(89)}-${1000 + rng.int(8999)}`, 'ssn');
const phone = standalone(
  (rng) => `+1 ${200 + rng.int(700)}-${200 + rng.int(700)}-${1000 + rng.int(8999)}`,
  'phone',
);
const ipv4 = standalone(
  (rng) => `${11 + rng.int(150)}.${rng.int(255)}.${rng.int(255)}.${1 + rng.int(250)}`,
  'client_ip',
);
const ipv6 = standalone(
  (rng) =>
    `2001:db8:${rng.chars('0123456789abcdef', 4)}:${rng.chars('0123456789abcdef', 4)}::${rng.chars('123456789abcdef', 3)}`,
  'client_ip',
);

function cardValid(value: string): boolean {
  const digits = value.replace(/[ -]/g, '');
  if (digits.length < 13 || digits.length > 19) return false;
  if (!/^(?:4|5[1-5]|2[2-7]|3[47]|6(?:011|5)|35|30[0-5]|36|38)/.test(digits)) return false;
  return luhnValid(digits);
}

function ipv4Reportable(value: string): boolean {
  return !/^(?:0\.0\.0\.0|127\.|255\.255\.)/.test(value);
}

export const PII_RULES: readonly Rule[] = [
  custom({
    id: 'email-address',
    family: 'pii',
    title: 'Email address',
    pattern:
      /(?<![A-Za-z0-9._%+-])([A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24})(?![A-Za-z0-9-])/,
    keywords: ['@'],
    maxLength: 600,
    confidence: 'high',
    defaultEnabled: false,
    sample: email,
    positives: samplePositives('email-address', email, (v) => `Contact: ${v} for access`),
    negatives: ['user@localhost', '@decorator', 'npm i @scope/pkg@1.2.3'],
  }),
  custom({
    id: 'payment-card',
    family: 'pii',
    title: 'Payment card number (Luhn-checked)',
    pattern: /(?<![0-9-])((?:\d[ -]?){12,18}\d)(?![0-9])/,
    keywords: [],
    maxLength: 40,
    confidence: 'high',
    validate: cardValid,
    allowPlaceholders: true,
    defaultEnabled: false,
    sample: card,
    positives: samplePositives('payment-card', card, (v) => `card=${v} exp=12/29`),
    negatives: ['4111 1111 1111 1112', 'order 1234567890123', '9999 9999 9999 9995'],
  }),
  custom({
    id: 'iban',
    family: 'pii',
    title: 'IBAN (mod-97-checked)',
    pattern: /(?<![A-Za-z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?)(?![A-Za-z0-9])/,
    keywords: [],
    maxLength: 45,
    confidence: 'high',
    validate: ibanValid,
    allowPlaceholders: true,
    defaultEnabled: false,
    sample: iban,
    positives: samplePositives('iban', iban, (v) => `IBAN: ${v}`),
    negatives: ['DE00123456781234567890', 'AB12 CDEF GHIJ KLMN'],
  }),
  custom({
    id: 'us-ssn',
    family: 'pii',
    title: 'US Social Security number (AAA-GG-SSSS)',
    pattern: /(?<![0-9-])((?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4})(?![0-9-])/,
    keywords: [],
    maxLength: 13,
    confidence: 'medium',
    allowPlaceholders: true,
    defaultEnabled: false,
    sample: ssn,
    positives: samplePositives('us-ssn', ssn, (v) => `SSN ${v}`),
    negatives: ['000-12-3456', '123-00-4567', '2024-01-15', '666-12-3456'],
  }),
  custom({
    id: 'phone-number',
    family: 'pii',
    title: 'Phone number (E.164 or North American format)',
    pattern:
      /(?<![\w+])(\+[1-9]\d{0,2}[ .-]?\(?\d{2,4}\)?[ .-]?\d{3}[ .-]?\d{3,4}|\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])/,
    keywords: [],
    maxLength: 24,
    confidence: 'medium',
    allowPlaceholders: true,
    defaultEnabled: false,
    sample: phone,
    positives: samplePositives('phone-number', phone, (v) => `call me at ${v} tomorrow`),
    negatives: ['version 1.2.3', '2024-01-15 10:00'],
  }),
  custom({
    id: 'ipv4-address',
    family: 'pii',
    title: 'IPv4 address',
    pattern:
      /(?<![0-9.])((?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})(?![0-9]|\.\d)/,
    keywords: [],
    maxLength: 16,
    confidence: 'medium',
    validate: ipv4Reportable,
    allowPlaceholders: true,
    defaultEnabled: false,
    sample: ipv4,
    positives: samplePositives('ipv4-address', ipv4, (v) => `client=${v} status=200`),
    negatives: ['127.0.0.1', '0.0.0.0', '1.2.3', '300.1.1.1'],
  }),
  custom({
    id: 'ipv6-address',
    family: 'pii',
    title: 'IPv6 address',
    pattern:
      /(?<![0-9A-Fa-f:])((?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4})(?![0-9A-Fa-f:])/,
    keywords: [],
    maxLength: 45,
    confidence: 'medium',
    validate: (v) => isIPv6(v) && v.split(':').filter((g) => g !== '').length >= 3,
    allowPlaceholders: true,
    defaultEnabled: false,
    sample: ipv6,
    positives: samplePositives('ipv6-address', ipv6, (v) => `remote_addr=${v}`),
    negatives: ['std::vector', '12:30:45', 'a::b'],
  }),
];

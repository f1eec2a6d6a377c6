import { charClassCount, isStockPassword } from '../false-positives.js';
import { ALNUM, B64, HEX } from '../synth.js';
import type { Rng, Rule, RuleSample } from '../types.js';
import { custom, keyed, samplePositives } from './builders.js';

/** Generic values must mix character classes: plain words and numbers are not secrets. */
function mixed(value: string): boolean {
  if (charClassCount(value) < 2 || /^\d+(?:\.\d+)*$/.test(value)) return false;
  // Slugs and identifiers (my-app-secret-name, bert-base-v2, getPasswordHash) are names, not secrets.
  if (/^[a-z]{1,40}(?:[-_.][a-z0-9]{1,40}){1,12}$/.test(value)) return false;
  if (/^[A-Za-z][a-z]{0,40}(?:[A-Z][a-z]{1,40}){1,12}$/.test(value)) return false;
  // Another assignment captured as the value (`password=password=...`, `secret:token=`) is structure.
  if (/(?:pass(?:word|wd)?|pwd|secret|token|key)[=:]/i.test(value)) return false;
  return true;
}

const GENERIC_VALUE = '[^\\s\'"`,;&<>(){}\\[\\]\\\\]';

function pwd(rng: Rng): string {
  return `${rng.chars(ALNUM, 5)}${rng.chars('!#%+-_.@', 1)}${rng.chars(ALNUM, 8)}${rng.int(10)}`;
}

const proseSample = (rng: Rng): RuleSample => {
  const value = pwd(rng);
  return { key: 'password', value: `the password you need is ${value}`, secret: value, standalone: true };
};

export const GENERIC_RULES: readonly Rule[] = [
  keyed({
    id: 'generic-password',
    family: 'generic',
    title: 'Password assigned to a password / passwd / pwd field',
    keys: ['password', 'passwd', 'passphrase', 'pwd', 'db_pass', 'user_pass', 'pass'],
    value: `${GENERIC_VALUE}{8,128}`,
    valueBoundary: '^\\s\'"`,;&>){}\\]\\\\',
    maxValueLength: 128,
    make: pwd,
    key: 'password',
    minEntropy: 2.8,
    confidence: 'low',
    validate: mixed,
    rejectHashLike: true,
    negatives: [
      'password: string;',
      'password = getPassword()',
      'password: process.env.DB_PASSWORD',
      'password=%s',
      'password: ********',
      '"password_hash": "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"',
      'passport_number: 12345678',
      'password: changeme123',
      'password=required',
    ],
  }),
  keyed({
    id: 'generic-secret',
    family: 'generic',
    title: 'Secret assigned to a secret / client_secret / signing_secret field',
    keys: [
      'client_secret',
      'app_secret',
      'secret_key',
      'signing_secret',
      'jwt_secret',
      'session_secret',
      'consumer_secret',
      'secret',
    ],
    value: `${GENERIC_VALUE}{12,256}`,
    valueBoundary: '^\\s\'"`,;&>){}\\]\\\\',
    maxValueLength: 256,
    make: (rng) => rng.chars(ALNUM, 32),
    key: 'client_secret',
    minEntropy: 3.2,
    confidence: 'low',
    validate: mixed,
    rejectHashLike: true,
    negatives: [
      'secret: d41d8cd98f00b204e9800998ecf8427e',
      'secret_name: my-app-secret-name',
      'secretRef: config.secrets.main',
    ],
  }),
  keyed({
    id: 'generic-api-key',
    family: 'generic',
    title: 'API key assigned to an api_key / apikey / access_key field',
    keys: ['api_key', 'apikey', 'access_key', 'app_key', 'auth_key', 'service_key', 'subscription_key'],
    value: '[A-Za-z0-9_\\-.+/=~]{16,256}',
    valueBoundary: 'A-Za-z0-9_\\-.+/=~',
    maxValueLength: 256,
    make: (rng) => rng.chars(ALNUM, 32),
    key: 'api_key',
    minEntropy: 3.3,
    confidence: 'low',
    validate: mixed,
    rejectHashLike: true,
    negatives: [
      'api_key: 550e8400-e29b-41d4-a716-446655440000',
      'api_key = settings.API_KEY_FROM_VAULT',
      'apiKey: "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="',
    ],
  }),
  keyed({
    id: 'generic-token',
    family: 'generic',
    title: 'Token assigned to a token / access_token / auth_token field',
    keys: ['access_token', 'auth_token', 'refresh_token', 'session_token', 'bot_token', 'api_token', 'token'],
    value: '[A-Za-z0-9_\\-.+/=~]{20,256}',
    valueBoundary: 'A-Za-z0-9_\\-.+/=~',
    maxValueLength: 256,
    make: (rng) => rng.chars(ALNUM, 40),
    key: 'access_token',
    minEntropy: 3.5,
    confidence: 'low',
    validate: mixed,
    rejectHashLike: true,
    negatives: [
      'token: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08',
      'max_tokens: 4096',
      'tokenizer: bert-base-uncased-v2',
      'csrf_token = request.session.csrf_token',
    ],
  }),
  keyed({
    id: 'generic-encryption-key',
    family: 'generic',
    title: 'Key material assigned to an encryption / signing / master / HMAC key field',
    keys: [
      'encryption_key',
      'signing_key',
      'master_key',
      'hmac_key',
      'aes_key',
      'crypt_key',
      'cipher_key',
      'private_key',
    ],
    value: '[A-Za-z0-9_\\-+/=]{16,256}',
    valueBoundary: 'A-Za-z0-9_\\-+/=',
    maxValueLength: 256,
    make: (rng) => Buffer.from(rng.chars(HEX + B64, 32)).toString('base64'),
    key: 'encryption_key',
    minEntropy: 3.3,
    confidence: 'low',
    validate: mixed,
    rejectHashLike: true,
    negatives: ['master_key: config/master.key', 'signing_key_id: kid-2024-01'],
  }),
  custom({
    id: 'prose-password',
    family: 'generic',
    title: 'Password introduced in prose ("the db password you need is …", "use password … to log in")',
    // "password is", or "password" + 1-6 words + a connector ("you need is", "for prod →"), or
    // "use/with/enter [the] password"; then the value. A trailing sentence mark (. , ; : ? )) is
    // not part of it. The value must hold a digit or a symbol, so a word ("is stored", "was
    // changed to") never ends the search; code (`args[1]`, `hash(pw`) is refused by validate.
    // Where generic-password finds the same span, its finding is kept (it comes first).
    pattern:
      /(?:pass(?:word|wd|phrase)(?:[ \t]{1,3}(?:is|was|are|becomes)|[ \t]{0,3}(?::|→|->|—|–)|(?:[ \t]{1,3}[\w'’-]{1,20}){1,6}?[ \t]{0,3}(?:is|was|are|becomes|to|:|=|→|->|—|–))|\b(?:use|using|with|enter|try|and)[ \t]{1,3}(?:the[ \t]{1,3})?pass(?:word|wd|phrase))[ \t]{1,3}["'`“‘]?(?=[^\s'"`“”‘’<>]{0,127}[0-9!#$%&*+=?@^_~])([^\s'"`“”‘’<>]{5,127}[^\s'"`“”‘’<>.,;:?)])/i,
    keywords: ['password', 'passwd', 'passphrase'],
    maxLength: 300,
    maxKeywordOffset: 24,
    confidence: 'low',
    minEntropy: 2.8,
    rejectHashLike: true,
    validate: (v) => mixed(v) && !isStockPassword(v) && !/^[A-Za-z_$][\w$.]{0,60}[[(]/.test(v),
    sample: proseSample,
    positives: [
      ...samplePositives('prose-password', proseSample),
      ...samplePositives('prose-password:use', (rng) => {
        const value = pwd(rng);
        return {
          key: 'k',
          value: `Use password ${value} to log in as root.`,
          secret: value,
          standalone: true,
        };
      }),
      ...samplePositives('prose-password:set', (rng) => {
        const value = pwd(rng);
        return {
          key: 'k',
          value: `FYI the root password was changed to "${value}" yesterday.`,
          secret: value,
          standalone: true,
        };
      }),
    ],
    negatives: [
      'The db password is stored in Vault under secret/data/db.',
      'the password you need is in 1Password, vault "Ops".',
      'The default password is changeme.',
      'Your password must be at least 12 characters long.',
      'The password reset id is 3f2b8c1e-9a4d-4f6b-8e2a-1c5d7e9f0a3b.',
      'The password hash is e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.',
      'Use password authentication (scram-sha-256) instead of md5.',
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
      'Set the password to ${DB_PASSWORD} in your env file.',
    ],
  }),
];

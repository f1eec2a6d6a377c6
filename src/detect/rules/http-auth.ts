import { isTicket } from '../../core/ticket-format.js';
import { isPlaceholder, isStockPassword } from '../false-positives.js';
import { ALNUM, B64URL } from '../synth.js';
import type { Rng, Rule, RuleSample } from '../types.js';
import { basicCredentialsValid } from '../validators.js';
import { custom, samplePositives } from './builders.js';
import { rfc3986Password, URI_PASSWORD, uriPasswordValid } from './database-uri.js';

export const URL_SCHEMES = [
  'http',
  'https',
  'ftp',
  'ftps',
  'sftp',
  'ws',
  'wss',
  'git',
  'svn',
  'smtp',
  'smtps',
  'imap',
  'imaps',
  'socks5',
];

function pw(rng: Rng): string {
  return `${rng.chars(ALNUM, 8)}${rng.chars(`${ALNUM}!*_~`, 8)}${rng.int(10)}`;
}

const urlSample = (rng: Rng): RuleSample => {
  const p = pw(rng);
  return {
    key: 'url',
    value: `https://deploy:${p}@git.internal.example.net/team/repo.git`,
    secret: p,
    standalone: true,
  };
};

const basicSample = (rng: Rng): RuleSample => {
  const v = Buffer.from(`svc-report:${pw(rng)}`).toString('base64');
  return { key: 'Authorization', value: `Basic ${v}`, secret: v, standalone: false };
};

/**
 * `Basic <base64>` anywhere (a logfmt field, a JSON log, a header dump): the value must decode
 * to printable `user:password` whose password is no stock example or placeholder.
 */
function basicCredentialsUsable(value: string): boolean {
  if (!basicCredentialsValid(value)) return false;
  const text = Buffer.from(value, 'base64').toString('latin1');
  const pass = text.slice(text.indexOf(':') + 1);
  // A ticket in Basic credentials is the agent's stand-in, not a secret.
  return !isStockPassword(pass) && !isPlaceholder(pass) && !isTicket(pass);
}

const basicAnywhereSample = (rng: Rng): RuleSample => {
  const v = Buffer.from(`svc-report:${pw(rng)}#${rng.int(10)}`).toString('base64');
  return { key: 'auth', value: `Basic ${v}`, secret: v, standalone: true };
};

const bearerSample = (rng: Rng): RuleSample => {
  const v = rng.chars(B64URL, 40);
  return { key: 'Authorization', value: `Bearer ${v}`, secret: v, standalone: true };
};

const apiKeyHeaderSample = (rng: Rng): RuleSample => {
  const v = rng.chars(ALNUM, 32);
  return { key: 'X-Api-Key', value: v, secret: v, standalone: false };
};

export const HTTP_AUTH_RULES: readonly Rule[] = [
  custom({
    id: 'url-basic-auth',
    family: 'http-auth',
    title: 'Password in a URL (userinfo: scheme://user:password@host)',
    pattern: new RegExp(
      `(?<![A-Za-z0-9+.\\-])(?:${URL_SCHEMES.join('|')})://[^\\s:@/?#'"\`<>]{1,128}:(${URI_PASSWORD})@[A-Za-z0-9.\\-_\\[\\]:]{1,253}`,
      'i',
    ),
    keywords: URL_SCHEMES.map((s) => `${s}://`),
    maxLength: 660,
    confidence: 'high',
    validate: uriPasswordValid,
    sample: urlSample,
    positives: [
      ...samplePositives('url-basic-auth', urlSample, (v) => `git clone ${v}`),
      ...samplePositives('url-basic-auth:rfc3986', (rng) => {
        const p = rfc3986Password(rng);
        return {
          key: 'url',
          value: `https://deploy:${p}@git.internal/team/repo.git`,
          secret: p,
          standalone: true,
        };
      }),
    ],
    negatives: [
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
      'https://user:${TOKEN}@github.com/x/y.git',
      'https://user:<password>@host',
      'git clone https://deploy:password@github.com/acme/app.git',
      'https://example.com:8080/path',
      'ssh://git@github.com:22/x',
    ],
  }),
  custom({
    id: 'http-basic-auth-header',
    family: 'http-auth',
    title: 'HTTP Basic credentials in an Authorization header',
    pattern:
      /authorization["']?\s{0,3}[:=|]\s{0,3}["']?basic\s{1,3}([A-Za-z0-9+/]{8,1000}={0,2})(?![A-Za-z0-9+/=])/i,
    keywords: ['basic'],
    maxLength: 1100,
    confidence: 'high',
    validate: basicCredentialsValid,
    sample: basicSample,
    positives: samplePositives('http-basic-auth-header', basicSample, (v) => `Authorization: ${v}`),
    negatives: ['Authorization: Basic realm="x"', 'Authorization: Basic Zm9vYmFy'],
  }),
  custom({
    id: 'basic-credentials',
    family: 'http-auth',
    title: 'HTTP Basic credentials (Basic <base64 of user:password>) outside an Authorization header',
    pattern: /(?<![A-Za-z0-9_-])basic\s{1,3}([A-Za-z0-9+/]{8,1000}={0,2})(?![A-Za-z0-9+/=])/i,
    keywords: ['basic'],
    maxLength: 1010,
    maxKeywordOffset: 0,
    confidence: 'medium',
    validate: basicCredentialsUsable,
    sample: basicAnywhereSample,
    positives: [
      ...samplePositives(
        'basic-credentials',
        basicAnywhereSample,
        (v) => `level=debug msg="upstream" auth="${v}" status=200`,
      ),
      ...samplePositives(
        'basic-credentials:json',
        basicAnywhereSample,
        (v) => `{"req":{"credentials":"${v}"}}`,
      ),
    ],
    negatives: [
      'WWW-Authenticate: Basic realm="admin"',
      'msg="basic auth enabled for /admin"',
      '{"auth":"Basic <base64>"}',
      `auth="Basic ${Buffer.from('user:password').toString('base64')}"`,
      `auth="Basic ${Buffer.from('admin:changeme').toString('base64')}"`,
      `msg="Basic ${Buffer.from('Hello world, a basic test').toString('base64')}"`,
      'Basic Authentication is described in RFC 7617.',
    ],
  }),
  custom({
    id: 'http-bearer-token',
    family: 'http-auth',
    title: 'Bearer token in an Authorization header',
    pattern: /bearer\s{1,3}([A-Za-z0-9._~+/-]{20,4000}={0,2})(?![A-Za-z0-9._~+/=-])/i,
    keywords: ['bearer'],
    maxLength: 4020,
    confidence: 'medium',
    minEntropy: 3.2,
    sample: bearerSample,
    positives: samplePositives('http-bearer-token', bearerSample, (v) => `Authorization: ${v}`),
    negatives: [
      'Authorization: Bearer <token>',
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
      'Authorization: Bearer ${ACCESS_TOKEN}',
      'the bearer token is passed in the header',
      'Authorization: Bearer xxxxxxxxxxxxxxxxxxxxxxxx',
    ],
  }),
  custom({
    id: 'http-api-key-header',
    family: 'http-auth',
    title: 'API key in an X-Api-Key / X-Auth-Token style header',
    pattern:
      /(?:x[_-]api[_-]?key|x[_-]auth[_-]token|x[_-]access[_-]token|api-key|x[_-]secret|x[_-]goog[_-]api[_-]key)["']?\s{0,3}[:=|]\s{0,3}["']?([A-Za-z0-9._~+/-]{16,512}={0,2})(?![A-Za-z0-9._~+/=-])/i,
    keywords: [
      'x-api',
      'x_api',
      'x-auth',
      'x_auth',
      'x-access',
      'x_access',
      'api-key',
      'x-secret',
      'x_secret',
      'x-goog',
      'x_goog',
    ],
    maxLength: 560,
    confidence: 'medium',
    minEntropy: 3.2,
    rejectHashLike: true,
    sample: apiKeyHeaderSample,
    positives: samplePositives('http-api-key-header', apiKeyHeaderSample, (v) => `X-Api-Key: ${v}`),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
    negatives: ['X-Api-Key: <your-api-key>', 'x-api-key: ${API_KEY}'],
  }),
  custom({
    id: 'netrc-password',
    family: 'http-auth',
    title: 'Password in a .netrc entry',
    pattern: /machine\s{1,5}[^\s]{1,253}\s{1,5}login\s{1,5}[^\s]{1,128}\s{1,5}password\s{1,5}([^\s]{1,256})/,
    keywords: ['machine'],
    maxLength: 700,
    sample: (rng) => {
      const p = pw(rng);
      return {
        key: 'netrc',
        value: `machine api.heroku.com login ops@example.net password ${p}`,
        secret: p,
        standalone: true,
      };
    },
    positives: samplePositives('netrc-password', (rng) => {
      const p = pw(rng);
      return {
        key: 'k',
        value: `machine github.com\n  login bot\n  password ${p}`,
        secret: p,
        standalone: true,
      };
    }),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
    negatives: ['machine github.com login bot password ${GITHUB_TOKEN}'],
  }),
  custom({
    id: 'curl-user-password',
    family: 'http-auth',
    title: 'Credentials passed to curl -u / --user',
    pattern: /curl\s[^\n]{0,200}?\s(?:-u|--user)\s{1,3}['"]?[^\s:'"]{1,64}:([^\s'"]{1,256})/,
    keywords: ['curl'],
    maxLength: 540,
    sample: (rng) => {
      const p = pw(rng);
      return {
        key: 'cmd',
        value: `curl -s -u admin:${p} https://jenkins.internal/api/json`,
        secret: p,
        standalone: true,
      };
    },
    positives: samplePositives('curl-user-password', (rng) => {
      const p = pw(rng);
      return {
        key: 'k',
        value: `curl -X POST --user ci:${p} https://registry.internal/v2/`,
        secret: p,
        standalone: true,
      };
    }),
    negatives: ['curl -u admin:$PASSWORD https://x', 'curl -u "$USER:$PASS" https://x'],
  }),
];

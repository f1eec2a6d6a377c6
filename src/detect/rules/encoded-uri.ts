import { isTicket } from '../../core/ticket-format.js';
import { isPlaceholder, isStockPassword, percentDecode } from '../false-positives.js';
import type { Rng, Rule, RuleFamily, RuleSample } from '../types.js';
import { custom, samplePositives } from './builders.js';
import { DB_URI_SCHEMES, rfc3986Password } from './database-uri.js';
import { URL_SCHEMES } from './http-auth.js';

/** What encodeURIComponent (and most query encoders) leave raw, plus `+ $ , ;`. */
const RAW = "A-Za-z0-9\\-_.!~*'()+$,;";

function encodedValid(times: 1 | 2) {
  return (value: string): boolean => {
    const decoded = percentDecode(value, times);
    return (
      decoded !== undefined &&
      decoded !== '' &&
      !isStockPassword(decoded) &&
      !isPlaceholder(decoded) &&
      !isTicket(decoded)
    );
  };
}

/**
 * `scheme://user:password@host` percent-encoded once (`postgres%3A%2F%2Fapp%3Ap%2521%40db`) or
 * twice (`%253A`, `%2540`), as it stands in a query string or a form body. At each level the
 * URI's own `:` and `@` are `%3A`/`%40` (`%253A`/`%2540`), while the password's own special
 * characters carry one more level of encoding, so the delimiters are unambiguous and the
 * match is linear: the password runs up to the first `%40` (`%2540`) followed by a host.
 */
function encodedUri(
  id: string,
  family: RuleFamily,
  title: string,
  schemes: readonly string[],
  times: 1 | 2,
  example: (pw: string) => string,
): Rule {
  const p = times === 1 ? '%' : '%25';
  const lvl = times === 1 ? '' : '25';
  // A `+` in a scheme (mongodb+srv) is encoded too.
  const encodedSchemes = [...new Set(schemes)].map((s) => s.replace(/\+/g, `${p}2b`));
  const alt = encodedSchemes
    .sort((a, b) => b.length - a.length)
    .map((s) => s.replace(/\./g, '\\.'))
    .join('|');
  const user = `(?:[${RAW}]|%(?!${lvl}(?:3A|40))){0,128}`;
  // The URI's own `/`, `?` and `#` end the password; a raw `@` the writer left in it (`%40` one
  // level down) does not: the password runs to the last `%40` before the host, like parsers do.
  const pass = `(?:[${RAW}]|%(?!${lvl}(?:2F|3F|23))){1,384}`;
  const pattern = new RegExp(
    `(?<=^|[^A-Za-z0-9+.\\-]|%[0-9A-Fa-f]{2})(?:${alt})${p}3A${p}2F${p}2F${user}${p}3A(${pass})${p}40[A-Za-z0-9.\\-_%]{1,253}`,
    'i',
  );
  const enc = (s: string): string => {
    const once = encodeURIComponent(s);
    return times === 1 ? once : encodeURIComponent(once);
  };
  const sample = (rng: Rng): RuleSample => {
    const pw = rfc3986Password(rng);
    return {
      key: 'dsn',
      value: enc(example(encodeURIComponent(pw))),
      secret: enc(encodeURIComponent(pw)),
      standalone: true,
    };
  };
  return custom({
    id,
    family,
    title,
    pattern,
    keywords: encodedSchemes.map((s) => `${s}${p}3a${p}2f${p}2f`.toLowerCase()),
    maxLength: 840,
    maxKeywordOffset: 0,
    confidence: 'high',
    validate: encodedValid(times),
    sample,
    positives: [
      ...samplePositives(id, sample, (v) => `GET /api/import?format=csv&dsn=${v}&page=2 HTTP/1.1`),
      ...samplePositives(`${id}:raw`, (rng) => {
        const pw = `${rfc3986Password(rng)}`.replace(/[/?#[\]@%]/g, (c) => encodeURIComponent(c));
        return { key: 'u', value: enc(example(pw)), secret: enc(pw), standalone: true };
      }),
    ],
    negatives: [
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
      `?dsn=${enc(example('${DB_PASSWORD}'))}`,
      `?dsn=${enc(example('<password>'))}`,
      `?dsn=${enc(example('password'))}`,
      `?next=${enc('https://app.example.net:8443/cb?x=1')}`,
      `?next=${enc(`${schemes[0]}://db.internal:5432/app`)}`,
    ],
  });
}

export const ENCODED_DATABASE_URI_RULES: readonly Rule[] = [1, 2].map((times) =>
  encodedUri(
    times === 1 ? 'database-uri-urlencoded' : 'database-uri-urlencoded-twice',
    'database-uri',
    `Database or broker URI with a password, percent-encoded ${times === 1 ? 'once' : 'twice'} (in a query string)`,
    DB_URI_SCHEMES,
    times as 1 | 2,
    (pw) => `postgresql://app_user:${pw}@db.internal.example.net:5432/orders`,
  ),
);

export const ENCODED_URL_AUTH_RULES: readonly Rule[] = [1, 2].map((times) =>
  encodedUri(
    times === 1 ? 'url-basic-auth-urlencoded' : 'url-basic-auth-urlencoded-twice',
    'http-auth',
    `URL with a password (https://user:password@host), percent-encoded ${times === 1 ? 'once' : 'twice'}`,
    URL_SCHEMES,
    times as 1 | 2,
    (pw) => `https://deploy:${pw}@git.internal.example.net/team/repo.git`,
  ),
);

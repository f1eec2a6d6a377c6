/**
 * False-positive discipline: values that have the shape of a secret but are documentation
 * placeholders, template variables, hashes or identifiers. Pure functions over the value.
 */

const PLACEHOLDER_WORDS =
  /example|xxxx|\*\*\*|\.\.\.|changeme|change[_-]me|placeholder|dummy|redacted|replace[_-]?me|your[_-]?(?:own[_-]?)?(?:api[_-]?|access[_-]?|secret[_-]?|auth[_-]?|app[_-]?|private[_-]?)?(?:key|token|secret|password|pass|pwd)|insert[_-]?(?:key|token|here)|(?:key|token|secret|password)[_-]?here|not[_-]?a[_-]?real|notreal|fake[_-]?(?:key|token|secret|password)|foobar|lorem|sample[_-]?(?:key|token|secret)/i;

const TEMPLATE = /\$\{|\{\{|\}\}|\$\(|%\(|^\$[A-Z_][A-Z0-9_]*$|^<[^>]*>$|^\[[^\]]*\]$|^%[A-Z_]+%$/;

const FORMAT_VERB = /%[sdv]\b/;
const FORMAT_VERBS = /%[sdv]\b/g;

/** Values that are documentation placeholders or template variables. */
export function isPlaceholder(value: string): boolean {
  if (PLACEHOLDER_WORDS.test(value) || TEMPLATE.test(value)) return true;
  // printf verbs (`%s`, `%v`, `%d`) make a format string only when little else is there:
  // `password=%s` is a template, `c$_^Azk+xL%H@%9~H=%s!QD0` is a password that holds `%s`.
  if (FORMAT_VERB.test(value) && value.replace(FORMAT_VERBS, '').replace(/[^A-Za-z0-9]/g, '').length < 3)
    return true;
  if (/^(.)\1+$/.test(value)) return true;
  // Long runs of one character (AAAAAAAA..., 00000000...) inside a value.
  if (/(.)\1{7}/.test(value)) return true;
  // Ascending sequences (1234567890, abcdefgh) are typed by people, not generators.
  if (/0123456|1234567|2345678|3456789|abcdefgh|ABCDEFGH/.test(value)) return true;
  return false;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const HEX_DIGEST = /^(?:[0-9a-f]{32}|[0-9a-f]{40}|[0-9a-f]{56}|[0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128})$/i;
const SRI = /^sha(?:256|384|512)-[A-Za-z0-9+/]{20,}={0,2}$/;
const PREFIXED_DIGEST = /^(?:sha1|sha256|sha384|sha512|md5|blake2b?|git)[:-]/i;
const PASSWORD_HASH = /^\$(?:2[abxy]?|argon2(?:id|i|d)|[1567]|scrypt|pbkdf2[\w-]{0,20})\$/;
const IDENTIFIER_PATH = /^[A-Za-z_$][\w$]*(?:(?:\.|::|->|\?\.)[A-Za-z_$][\w$]*)+(?:\(\)?)?$/;
/** An identifier made of words (camelCase, snake_case, CONSTANT_CASE), maybe a short number. */
const WORDISH = /^(?:[A-Za-z_$][a-z_$]{0,40}(?:[A-Z][a-z_]{1,40}){0,8}|[A-Z][A-Z0-9_]{0,60})\d{0,2}$/;
const ENV_REFERENCE = /^(?:process\.env|os\.environ|env|ENV|getenv|System\.getenv|secrets\.|vars\.)/;

/**
 * Values shaped like content hashes, UUIDs, SRI strings or code references: for generic
 * assignment rules (`token=`, `secret:`) these are almost always not credentials.
 */
export function isHashLike(value: string): boolean {
  return (
    UUID.test(value) ||
    HEX_DIGEST.test(value) ||
    SRI.test(value) ||
    PREFIXED_DIGEST.test(value) ||
    PASSWORD_HASH.test(value) ||
    (IDENTIFIER_PATH.test(value) &&
      value.split(/\.|::|->|\?\./).every((seg) => WORDISH.test(seg.replace(/\(\)?$/, '')))) ||
    ENV_REFERENCE.test(value)
  );
}

/** Character classes present: lower, upper, digit, other. Used by generic rules. */
export function charClassCount(value: string): number {
  let lower = 0;
  let upper = 0;
  let digit = 0;
  let other = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c >= 97 && c <= 122) lower = 1;
    else if (c >= 65 && c <= 90) upper = 1;
    else if (c >= 48 && c <= 57) digit = 1;
    else other = 1;
  }
  return lower + upper + digit + other;
}

/** The match sits in a data URI (`data:...;base64,`) or an SRI `integrity` attribute. */
export function inEncodedBlobContext(text: string, start: number): boolean {
  const from = Math.max(0, start - 96);
  const before = text.slice(from, start);
  const dataUri = before.lastIndexOf(';base64,');
  if (dataUri !== -1 && !/[\s"'()]/.test(before.slice(dataUri + 8))) return true;
  return /integrity\s{0,3}=\s{0,3}["']?sha\d{3}-[A-Za-z0-9+/]{0,96}$/.test(before);
}

/**
 * Stock passwords of documentation, tutorials and default installs (`postgres://user:password@`,
 * `amqp://guest:guest@`, `admin:changeme`). Compared whole and case-insensitively: a real
 * password that merely contains one of these is still reported.
 */
const STOCK_PASSWORDS = new Set([
  'password',
  'passw0rd',
  'p@ssw0rd',
  'p@ssword',
  'pass',
  'passwd',
  'pwd',
  'secret',
  's3cret',
  'changeme',
  'guest',
  'admin',
  'root',
  'test',
  'user',
  'hunter2',
  'letmein',
  'qwerty',
  '123456',
  '12345678',
  'postgres',
  'mysql',
  'redis',
  'rabbitmq',
  'default',
  'pw',
  'foo',
  'bar',
  'foobar',
]);

export function isStockPassword(value: string): boolean {
  return STOCK_PASSWORDS.has(value.toLowerCase());
}

/** Percent-decodes up to `times` levels; undefined when a level is malformed. */
export function percentDecode(value: string, times = 1): string | undefined {
  let v = value;
  for (let i = 0; i < times; i++) {
    try {
      v = decodeURIComponent(v);
    } catch {
      return undefined;
    }
  }
  return v;
}

/**
 * Values no text credential holds: a control character (tab and line breaks aside: keys
 * span lines) or, when the value was read from bytes (latin1, one character per byte),
 * bytes that are not UTF-8. Binary output (an archive, an image, scp's stream) has both
 * everywhere: `pwd:` followed by random bytes is not a password, and replacing it would
 * corrupt the download. A sequence cut at the value's end is let through (a rule's length
 * limit may cut a real UTF-8 character).
 */
export function isBinaryLike(value: string, fromBytes: boolean): boolean {
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 0x20) {
      if (c !== 0x09 && c !== 0x0a && c !== 0x0d) return true;
      continue;
    }
    if (c === 0x7f) return true;
    if (c < 0x80 || !fromBytes) continue;
    // A UTF-8 lead byte and its continuation bytes (no overlong two-byte forms, nothing past U+10FFFF).
    const more = c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
    if (more < 0) return true;
    for (let k = 1; k <= more; k++) {
      if (i + k >= value.length) return false;
      const d = value.charCodeAt(i + k);
      if (d < 0x80 || d > 0xbf) return true;
    }
    i += more;
  }
  return false;
}

import { describe, expect, it } from 'vitest';
import { mintTicket } from '../../src/core/ticket-format.js';
import { createDetector } from '../../src/detect/detector.js';
import { scrubText } from '../../src/detect/scrub.js';
import { ALNUM, B64, B64URL, BASE32_UPPER, createRng, DIGITS } from '../../src/detect/synth.js';

// Variants of each gateway context that the issue did not name and the corpus generator does
// not produce: other schemes and wrappers, lower-case percent-encoding, form bodies, JSON in a
// query, YAML / Python / odd headers for Basic, JSON-escaped Telegram URLs, quoted / BOM / CRLF
// CSV and Markdown tables, other prose phrasings. Each must be found with its exact span.
const rng = createRng('detect-recall:variants');
const detector = createDetector();
const enc = encodeURIComponent;

const pw = `${rng.chars(ALNUM, 4)}#${rng.chars(ALNUM, 3)}'^%!(${rng.chars(ALNUM, 3)})*+;=${rng.chars(ALNUM, 3)}`;
const prosePw = pw.replace(/'/g, '~');
const b64 = Buffer.from(`ops-bot:${pw}`).toString('base64');
const aws = rng.chars(B64, 40);
const awsId = `AKIA${rng.chars(BASE32_UPPER, 16)}`;
const tg = `${rng.chars('123456789', 1)}${rng.chars(DIGITS, 9)}%3aAA${rng.chars(B64URL, 33)}`;

const CASES: readonly (readonly [name: string, text: string, secret: string, rule: string])[] = [
  ['SQL Server URI with raw specials', `mssql://sa:${pw}@sql01:1433/master`, pw, 'mssql-uri'],
  ['URI in a Markdown link', `see [the db](postgres://app:${pw}@db/x) now`, pw, 'postgres-uri'],
  ['Neo4j URI in an env line', `NEO4J_URI=neo4j+s://neo4j:${pw}@graph:7687`, pw, 'neo4j-uri'],
  [
    'lower-case percent-encoding in a query',
    `GET /x?dsn=${enc(`redis://:${enc(pw)}@cache:6379`).toLowerCase()} HTTP/1.1`,
    enc(enc(pw)).toLowerCase(),
    'database-uri-urlencoded',
  ],
  [
    'form-encoded body',
    `dsn=${enc(`amqps://worker:${enc(pw)}@mq:5671/%2F`)}&submit=Save`,
    enc(enc(pw)),
    'database-uri-urlencoded',
  ],
  [
    'JSON document in a query parameter',
    `GET /cfg?c=${enc(JSON.stringify({ url: `mysql://root:${enc(pw)}@db/shop` }))} HTTP/1.1`,
    enc(enc(pw)),
    'database-uri-urlencoded',
  ],
  [
    'git URL inside an encoded redirect, twice',
    `GET /login?next=${enc(`/cb?repo=${enc(`https://deploy:${enc(pw)}@git.internal/x.git`)}`)}`,
    enc(enc(enc(pw))),
    'url-basic-auth-urlencoded-twice',
  ],
  ['Basic in YAML', `upstream:\n  auth: Basic ${b64}\n`, b64, 'basic-credentials'],
  ['Basic in a Python repr', `{'auth': 'Basic ${b64}'}`, b64, 'basic-credentials'],
  ['Basic in a custom header', `X-Upstream-Auth: Basic ${b64}\r\n`, b64, 'basic-credentials'],
  ['Telegram token, lower-case %3a', `GET https://api.telegram.org/bot${tg}/getMe`, tg, 'telegram-bot-token'],
  [
    'Telegram token in a JSON log with escaped slashes',
    `{"url":"https:\\/\\/api.telegram.org\\/bot${tg}\\/getMe"}`,
    tg,
    'telegram-bot-token',
  ],
  [
    'CSV with quoted, title-case header',
    `"Access Key Id","Secret Access Key"\n"${awsId}","${aws}"\n`,
    aws,
    'aws-secret-key-csv',
  ],
  [
    'Markdown table',
    `| user | aws_secret_access_key |\n|---|---|\n| ci | ${aws} |\n`,
    aws,
    'aws-secret-key-csv',
  ],
  [
    'CSV with a byte-order mark and CRLF',
    `\ufeffaws_access_key_id,aws_secret_access_key\r\n${awsId},${aws}\r\n`,
    aws,
    'aws-secret-key-csv',
  ],
  ['prose: "temporary password:"', `Your temporary password: ${prosePw}`, prosePw, 'prose-password'],
  [
    'prose: passphrase of a key',
    `The passphrase for the signing key is ${prosePw}.`,
    prosePw,
    'prose-password',
  ],
  [
    'prose: "user … and password …"',
    `log in with user admin and password ${prosePw} please`,
    prosePw,
    'prose-password',
  ],
];

describe('gateway-context variants the issue did not name', () => {
  it.each(CASES)('%s', (_name, text, secret, rule) => {
    const at = text.indexOf(secret);
    expect(at).toBeGreaterThanOrEqual(0);
    const found = detector.scan(text).map((f) => ({ rule: f.ruleId, span: text.slice(f.start, f.end) }));
    expect(found).toContainEqual({ rule, span: secret });
  });

  it('scrubbing the whole text masks every variant: no secret survives', () => {
    const input = CASES.map((c) => c[1]).join('\n');
    const out = scrubText(input, { detector });
    for (const [name, , secret] of CASES) expect(out, name).not.toContain(secret);
    expect(out.match(/\[REDACTED:/g)?.length).toBeGreaterThanOrEqual(CASES.length);
  });

  it('a ticket standing where the password stood is never reported, in any of the new shapes', () => {
    const ticket = mintTicket();
    const texts = [
      `auth="Basic ${Buffer.from(`x-access-token:${ticket}`).toString('base64')}"`,
      `{"credentials":"Basic ${Buffer.from(`deploy:${ticket}`).toString('base64')}"}`,
      `GET /x?dsn=${enc(`postgres://app:${ticket}@db:5432/app`)} HTTP/1.1`,
      `GET /x?next=${enc(enc(`https://deploy:${ticket}@git.internal/x.git`))} HTTP/1.1`,
      `postgres://app:${ticket}@db:5432/app`,
      `the db password you need is ${ticket}`,
      `profile,aws_secret_access_key\nprod,${ticket}\n`,
    ];
    for (const text of texts) expect(detector.scan(text), text).toEqual([]);
  });
});

/**
 * A generated corpus of gateway contexts: what the agent-facing side of the gateway sees in
 * requests, responses, logs and chat. Every document is built from a seed at run time (no
 * secret-shaped literal is committed). The test evaluates a held-out seed that the rules were
 * not tuned on; tuning used the `dev` seed:
 *
 *   node --import tsx test/detect/gateway-corpus.ts [seed] [per-context]   # prints misses
 *
 * Contexts (positives): credential URIs whose password draws on every RFC 3986 sub-delim and
 * gen-delim (raw where a parser accepts it, percent-encoded where it must be), those URIs
 * percent-encoded once or twice inside a query string, `Basic <base64>` outside an
 * Authorization header, Telegram bot tokens percent-encoded in URLs, AWS secret keys in CSV
 * rows under their column, passwords introduced in prose. Negatives: the same shapes holding
 * placeholders, stock example passwords, template variables, UUIDs and hashes.
 */
import { B64, B64URL, BASE32_UPPER, createRng, DIGITS, HEX, LOWER, UPPER } from '../../src/detect/synth.js';
import type { Rng } from '../../src/detect/types.js';

export interface Span {
  readonly start: number;
  readonly end: number;
}

export interface GatewayDoc {
  readonly id: string;
  readonly context: string;
  readonly text: string;
  /** Secrets a detector must find (recall is counted over these). */
  readonly labels: readonly Span[];
  /** Other real secrets in the text: a finding here is not a false positive. */
  readonly also: readonly Span[];
}

const ALNUM = DIGITS + UPPER + LOWER;
/** RFC 3986 sub-delims. */
export const SUB_DELIMS = "!$&'()*+,;=";
/** RFC 3986 gen-delims. */
export const GEN_DELIMS = ':/?#[]@';
/**
 * Characters people put raw in a URI password and parsers accept: sub-delims, unreserved
 * specials, `:` (allowed in userinfo), and `#`, `^`, `%` (not allowed, written anyway).
 */
const RAW_SPECIALS = `${SUB_DELIMS}-._~:#^%`;
const ALL_SPECIALS = `${SUB_DELIMS}${GEN_DELIMS}-._~^%"<>\\{}|\` `;

interface Builder {
  readonly docs: GatewayDoc[];
  add(context: string, parts: readonly (string | Part)[]): void;
}

/** A piece of a document: a secret (label), another real secret (also), or plain text. */
interface Part {
  readonly text: string;
  readonly kind: 'label' | 'also';
}
const label = (text: string): Part => ({ text, kind: 'label' });
const also = (text: string): Part => ({ text, kind: 'also' });

function builder(): Builder {
  const docs: GatewayDoc[] = [];
  return {
    docs,
    add(context, parts) {
      let text = '';
      const labels: Span[] = [];
      const alsoSpans: Span[] = [];
      for (const p of parts) {
        if (typeof p === 'string') {
          text += p;
          continue;
        }
        const span = { start: text.length, end: text.length + p.text.length };
        (p.kind === 'label' ? labels : alsoSpans).push(span);
        text += p.text;
      }
      docs.push({ id: `g${docs.length + 1}`, context, text, labels, also: alsoSpans });
    },
  };
}

function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng.int(items.length)]!;
}

/** No stray template or placeholder syntax by accident (`${`, `{{`, `...`, `***`). */
function accidentalTemplate(s: string): boolean {
  return /\$\{|\{\{|\}\}|\$\(|%\(|\.\.\.|\*\*\*|(.)\1\1\1/.test(s);
}

/** A random password: letters and digits with `specials` mixed in (at least `minSpecials`). */
function password(rng: Rng, specials: string, minSpecials = 2, forbid = ''): string {
  const allowed = [...specials].filter((c) => !forbid.includes(c)).join('');
  for (;;) {
    const len = 10 + rng.int(15);
    const chars: string[] = [];
    for (let i = 0; i < len; i++) chars.push(rng.chars(rng.int(3) === 0 ? allowed : ALNUM, 1));
    for (let i = 0; i < minSpecials; i++) chars[1 + rng.int(len - 2)] = rng.chars(allowed, 1);
    // Make sure a letter and a digit are present, as password rules demand.
    chars[0] = rng.chars(UPPER + LOWER, 1);
    chars[len - 1] = rng.chars(DIGITS + LOWER, 1);
    const pw = chars.join('');
    if (!accidentalTemplate(pw)) return pw;
  }
}

/** Percent-encodes like encodeURIComponent, and optionally the sub-delims it leaves raw. */
function pctEncode(s: string, strict: boolean): string {
  const e = encodeURIComponent(s);
  return strict ? e.replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`) : e;
}

const USERS = [
  'app',
  'svc_orders',
  'admin',
  'root',
  'etl-reader',
  'deploy',
  'worker',
  'default',
  'postgres',
  '',
];
/** Scheme, and the URI around the password: [before, after]. */
const DB_SCHEMES: readonly [string, (u: string, pw: string) => readonly [string, string]][] = [
  ['postgres', (u, pw) => [`postgres://${u}:`, `${pw}@db.internal.example.net:5432/orders?sslmode=require`]],
  ['postgresql', (u, pw) => [`postgresql://${u}:`, `${pw}@10.20.3.4/app`]],
  ['mysql', (u, pw) => [`mysql://${u}:`, `${pw}@mysql-primary:3306/shop`]],
  [
    'mongodb',
    (u, pw) => [`mongodb://${u}:`, `${pw}@mongo-0.mongo:27017,mongo-1.mongo:27017/app?replicaSet=rs0`],
  ],
  [
    'mongodb+srv',
    (u, pw) => [`mongodb+srv://${u}:`, `${pw}@cluster0.ab1cd.mongodb.net/app?retryWrites=true`],
  ],
  ['redis', (u, pw) => [`redis://${u}:`, `${pw}@cache.internal:6379/0`]],
  ['rediss', (u, pw) => [`rediss://${u}:`, `${pw}@[2001:db8::7]:6380`]],
  ['amqp', (u, pw) => [`amqp://${u}:`, `${pw}@rabbitmq:5672/%2F`]],
  ['amqps', (u, pw) => [`amqps://${u}:`, `${pw}@mq.internal.example.net/vhost`]],
];
const GIT_HOSTS = [
  'github.com/acme/payments.git',
  'gitlab.example.net/platform/infra.git',
  'git.internal:8443/scm/ops/deploy.git',
];

/** Templates a URI is put into; `forbid` lists characters the quoting cannot hold raw. */
const URI_TEMPLATES: readonly {
  name: string;
  forbid: string;
  wrap: (uri: (string | Part)[]) => (string | Part)[];
}[] = [
  {
    name: 'env',
    forbid: '',
    wrap: (u) => ['# written by the installer\nDATABASE_URL=', ...u, '\nPORT=8080\n'],
  },
  { name: 'env-quoted', forbid: '"', wrap: (u) => ['export DATABASE_URL="', ...u, '"\n'] },
  {
    name: 'yaml',
    forbid: '"',
    wrap: (u) => ['spring:\n  datasource:\n    url: "', ...u, '"\n    pool: 10\n'],
  },
  {
    name: 'json-log',
    forbid: '"\\',
    wrap: (u) => [
      '{"level":"error","time":1714557600123,"msg":"connect failed","dsn":"',
      ...u,
      '","attempt":3}',
    ],
  },
  {
    name: 'logfmt',
    forbid: '"\\',
    wrap: (u) => ['ts=2024-05-01T10:00:00Z level=warn msg="retrying connection" url="', ...u, '" attempt=2'],
  },
  {
    name: 'stack-trace',
    forbid: '',
    wrap: (u) => [
      'Error: connection refused while connecting to ',
      ...u,
      '\n    at Socket.<anonymous> (node:net:1495:16)',
    ],
  },
  { name: 'python', forbid: "'", wrap: (u) => ["engine = create_engine('", ...u, "', pool_pre_ping=True)"] },
  { name: 'shell', forbid: '"', wrap: (u) => ['$ psql "', ...u, "\" -c 'select 1'"] },
];

/** Splits a rendered URI into text / label parts (the password is the label). */
function uriParts(before: string, pw: string, after: string): Part[] {
  return [
    { text: before, kind: 'also' },
    { text: pw, kind: 'label' },
    { text: after, kind: 'also' },
  ];
}

/** Parts to plain text except the label (the rest of a URI is not a secret). */
function flatten(parts: readonly Part[]): (string | Part)[] {
  return parts.map((p) => (p.kind === 'label' ? p : p.text));
}

function base64Credentials(rng: Rng): string {
  const user = pick(rng, ['svc-report', 'admin', 'jenkins', 'grafana', 'ci-bot', 'alice@example.com']);
  return Buffer.from(`${user}:${password(rng, `${SUB_DELIMS}#^%@:`, 2)}`).toString('base64');
}

function telegramToken(rng: Rng): readonly [string, string] {
  return [rng.chars(DIGITS, 8 + rng.int(3)), `AA${rng.chars(B64URL, 33)}`];
}

function awsSecret(rng: Rng): string {
  for (;;) {
    const s = rng.chars(B64, 40);
    if (!accidentalTemplate(s)) return s;
  }
}

function proseValue(rng: Rng): string {
  return password(rng, '!#$%&*+-=?@^_~', 1 + rng.int(2), '');
}

const PROSE: readonly ((pw: Part) => (string | Part)[])[] = [
  (p) => ['Hey, the db password you need is ', p, ' — please do not paste it anywhere else.'],
  (p) => ['The password for the staging admin account is: ', p],
  (p) => ['Use password ', p, ' to log in as root on the bastion.'],
  (p) => ['I reset it; the new password is "', p, '".'],
  (p) => ['Password for prod-db → ', p, '\nping me if it fails'],
  (p) => ['my password is ', p, ' but the login still returns 401, can you check?'],
  (p) => ['FYI the root password was changed to ', p, ' yesterday.'],
  (p) => ['You can log in with the password `', p, '`.'],
  (p) => ["Here's the wifi passphrase: ", p],
  (p) => ['the redis password you asked for: ', p, '\nthanks!'],
  (p) => ['Assistant: The MySQL password in your config is ', p, ', and the user is app.'],
  (p) => ['The password has been set to ', p, '. Change it after your first login.'],
];

/** Every context builder, by name. Positive contexts first, then negatives (prefixed `neg-`). */
export function gatewayCorpus(seed: string, perContext = 40): GatewayDoc[] {
  const rng = createRng(`gateway-corpus:${seed}`);
  const b = builder();
  const n = perContext;

  // Credential URIs with raw RFC 3986 characters in the password.
  for (let i = 0; i < n; i++) {
    const [, make] = pick(rng, DB_SCHEMES);
    const t = pick(rng, URI_TEMPLATES);
    const pw = password(rng, RAW_SPECIALS, 2 + rng.int(3), `${t.forbid}'`);
    const [before, after] = make(pick(rng, USERS), '');
    b.add('uri-raw', t.wrap(flatten(uriParts(before, pw, after))));
  }
  // ... and with every special (gen-delims included) percent-encoded, as a correct client writes it.
  for (let i = 0; i < n; i++) {
    const [, make] = pick(rng, DB_SCHEMES);
    const t = pick(rng, URI_TEMPLATES);
    const pw = pctEncode(password(rng, ALL_SPECIALS, 3), rng.int(2) === 0);
    const [before, after] = make(pick(rng, USERS), '');
    b.add('uri-pct', t.wrap(flatten(uriParts(before, pw, after))));
  }
  // git over https.
  for (let i = 0; i < n; i++) {
    const raw = rng.int(2) === 0;
    const pw = raw ? password(rng, RAW_SPECIALS, 2, "'") : pctEncode(password(rng, ALL_SPECIALS, 3), false);
    const user = pick(rng, ['deploy', 'oauth2', 'x-access-token', 'ci-runner', 'jane.doe']);
    const url = [`https://${user}:`, label(pw), `@${pick(rng, GIT_HOSTS)}`];
    const form = rng.int(4);
    if (form === 0) b.add('git-https', ['$ git clone ', ...url, ' && cd payments']);
    else if (form === 1)
      b.add('git-https', [
        '[remote "origin"]\n\turl = ',
        ...url,
        '\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n',
      ]);
    else if (form === 2) b.add('git-https', ['remote.origin.url=', ...url, '\ncore.bare=false']);
    else
      b.add('git-https', [
        "Cloning into 'repo'...\nfatal: unable to access '",
        ...url,
        "/': The requested URL returned error: 403",
      ]);
  }
  // URIs percent-encoded once or twice inside a query string.
  for (const times of [1, 2] as const) {
    for (let i = 0; i < n; i++) {
      const git = rng.int(4) === 0;
      const pw = password(rng, rng.int(2) === 0 ? RAW_SPECIALS : ALL_SPECIALS, 2);
      const inUri =
        rng.int(2) === 0
          ? pctEncode(pw, false)
          : pw.replace(/[/?#[\]@ "<>\\{}|`%]/g, (c) => pctEncode(c, true));
      const [before, after] = git
        ? [`https://${pick(rng, ['deploy', 'oauth2'])}:`, `@${pick(rng, GIT_HOSTS)}`]
        : pick(rng, DB_SCHEMES)[1](pick(rng, USERS), '');
      const afterText = after;
      let enc = [before, inUri, afterText].map((s) => pctEncode(s, false));
      if (times === 2) enc = enc.map((s) => pctEncode(s, false));
      const param = pick(rng, ['dsn', 'url', 'source', 'target', 'conn', 'redirect_uri']);
      const form = rng.int(3);
      const head =
        form === 0
          ? `GET /api/v1/import?format=csv&${param}=`
          : form === 1
            ? `{"level":"info","msg":"request","url":"/connect?${param}=`
            : `127.0.0.1 - - [01/May/2024:10:00:00 +0000] "POST /hooks/run?${param}=`;
      const tail = form === 0 ? '&page=2 HTTP/1.1' : form === 1 ? '&x=1","status":302}' : ' HTTP/1.1" 302 0';
      b.add(`uri-in-query-${times}x`, [head, enc[0]!, label(enc[1]!), enc[2]!, tail]);
    }
  }
  // Basic credentials outside an Authorization header.
  for (let i = 0; i < n; i++) {
    const v = base64Credentials(rng);
    const key = pick(rng, ['auth', 'proxy_auth', 'upstream_auth', 'credentials', 'basic']);
    b.add('basic-logfmt', [
      'ts=2024-05-01T10:00:00Z level=debug msg="upstream request" method=GET path=/v1/items ',
      `${key}="Basic `,
      label(v),
      '" status=200 duration=12ms',
    ]);
  }
  for (let i = 0; i < n; i++) {
    const v = base64Credentials(rng);
    const key = pick(rng, ['auth', 'credentials', 'upstreamAuth', 'basic_auth', 'x-forwarded-auth']);
    const form = rng.int(3);
    if (form === 0)
      b.add('basic-json', [
        `{"level":30,"msg":"proxying","req":{"method":"GET","${key}":"Basic `,
        label(v),
        '"}}',
      ]);
    else if (form === 1)
      b.add('basic-json', [`{"event":"login","${key}": "basic `, label(v), '", "ok":false}']);
    else
      b.add('basic-json', [
        `[{"name":"webhook","headers":[["Accept","*/*"],["${key}","Basic `,
        label(v),
        '"]]}]',
      ]);
  }
  // Telegram bot tokens percent-encoded in URLs.
  for (let i = 0; i < n; i++) {
    const [id, rest] = telegramToken(rng);
    const form = rng.int(3);
    if (form === 0) {
      b.add('telegram-pct', [
        'GET https://api.telegram.org/bot',
        label(`${id}%3A${rest}`),
        '/getUpdates?offset=0 HTTP/1.1',
      ]);
    } else {
      const times = form;
      const colon = times === 1 ? '%3A' : '%253A';
      const slash = times === 1 ? '%2F' : '%252F';
      b.add('telegram-pct', [
        `POST /webhooks/register?callback=https${colon}${slash}${slash}api.telegram.org${slash}bot`,
        label(`${id}${colon}${rest}`),
        `${slash}sendMessage&chat=42 HTTP/1.1`,
      ]);
    }
  }
  // AWS secret keys in CSV rows under their column.
  for (let i = 0; i < n; i++) {
    const rows = 1 + rng.int(4);
    const form = rng.int(4);
    const parts: (string | Part)[] = [];
    const id = (): Part => also(`AKIA${rng.chars(BASE32_UPPER, 16)}`);
    if (form === 0) {
      parts.push('profile,aws_access_key_id,aws_secret_access_key,region\n');
      for (let r = 0; r < rows; r++) parts.push(`p${r},`, id(), ',', label(awsSecret(rng)), ',eu-west-1\n');
    } else if (form === 1) {
      parts.push('User name,Password,Access key ID,Secret access key,Console login link\n');
      for (let r = 0; r < rows; r++) {
        parts.push(
          `user${r},,`,
          id(),
          ',',
          label(awsSecret(rng)),
          `,https://${rng.chars(DIGITS, 12)}.signin.aws.amazon.com/console\n`,
        );
      }
    } else if (form === 2) {
      parts.push('"aws_secret_access_key";"aws_access_key_id";"owner"\r\n');
      for (let r = 0; r < rows; r++) parts.push('"', label(awsSecret(rng)), '";"', id(), `";"team-${r}"\r\n`);
    } else {
      parts.push('Access key ID\tSecret access key\n');
      for (let r = 0; r < rows; r++) parts.push(id(), '\t', label(awsSecret(rng)), '\n');
    }
    b.add('aws-csv', parts);
  }
  // Passwords introduced in prose.
  for (let i = 0; i < n; i++) b.add('prose-password', pick(rng, PROSE)(label(proseValue(rng))));

  negatives(rng, b, n);
  return b.docs;
}

function negatives(rng: Rng, b: Builder, n: number): void {
  const stock = [
    'password',
    'changeme',
    'secret',
    'guest',
    'admin',
    'pass',
    'xxxx',
    '****',
    'p@ssw0rd',
    'hunter2',
  ];
  const templ = [
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal placeholder
    '${DB_PASSWORD}',
    '<password>',
    '{{ .Values.db.password }}',
    '$PGPASSWORD',
    '%(password)s',
    '[PASSWORD]',
    '<your-password>',
    'YOUR_PASSWORD',
    'REDACTED',
  ];
  const fill = [...stock, ...templ];
  for (let i = 0; i < n; i++) {
    const [, make] = pick(rng, DB_SCHEMES);
    const pw = fill[i % fill.length]!;
    const t = pick(
      rng,
      URI_TEMPLATES.filter((x) => ![...pw].some((c) => x.forbid.includes(c))),
    );
    const [before, after] = make(pick(rng, USERS), '');
    b.add(
      'neg-uri',
      t
        .wrap([{ text: `${before}${pw}${after}`, kind: 'also' }])
        .map((p) => (typeof p === 'string' ? p : p.text)),
    );
  }
  for (let i = 0; i < n; i++) {
    const form = i % 6;
    const host = pick(rng, GIT_HOSTS);
    if (form === 0)
      b.add('neg-uri', [
        `git clone https://${pick(rng, ['user', 'deploy'])}:${fill[i % fill.length]}@${host}`,
      ]);
    else if (form === 1)
      b.add('neg-uri', [`postgres://postgres@localhost:5432/${pick(rng, ['app', 'test'])}`]);
    else if (form === 2) b.add('neg-uri', [`git@github.com:acme/${rng.chars(LOWER, 6)}.git`]);
    else if (form === 3)
      b.add('neg-uri', [`curl https://api.example.net:8443/v1/users/@${rng.chars(LOWER, 6)}?tab=repos`]);
    else if (form === 4)
      b.add('neg-uri', [
        `mongodb://${rng.chars(LOWER, 5)}-0.db:27017,${rng.chars(LOWER, 5)}-1.db:27017/?replicaSet=rs0`,
      ]);
    else b.add('neg-uri', [`see https://docs.example.net:443/guide#auth@v2 for the redis://host:6379 setup`]);
  }
  for (const times of [1, 2]) {
    for (let i = 0; i < n / 2; i++) {
      const pw = fill[(i + times) % fill.length]!;
      let enc = pctEncode(`postgres://app:${pw}@db:5432/app`, false);
      if (times === 2) enc = pctEncode(enc, false);
      b.add('neg-uri-in-query', [`GET /api/v1/import?dsn=${enc}&format=csv HTTP/1.1`]);
    }
    for (let i = 0; i < n / 4; i++) {
      let enc = pctEncode(`https://api.example.net:8443/v1/${rng.chars(LOWER, 5)}?id=${rng.int(999)}`, false);
      if (times === 2) enc = pctEncode(enc, false);
      b.add('neg-uri-in-query', [`GET /login?next=${enc} HTTP/1.1`]);
    }
  }
  const basicNeg = [
    'WWW-Authenticate: Basic realm="admin", charset="UTF-8"',
    'ts=2024-05-01T10:00:00Z level=info msg="basic auth enabled for /admin" realm=ops',
    '{"auth":"Basic <base64>","note":"set by the operator"}',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: literal placeholder
    'auth="Basic ${BASIC_CREDENTIALS}" status=401',
    `auth="Basic ${Buffer.from('user:password').toString('base64')}" status=401`,
    `{"auth":"Basic ${Buffer.from('admin:changeme').toString('base64')}"}`,
    `msg="Basic ${Buffer.from('Hello world, this is a basic test').toString('base64')}"`,
    'The basic plan costs 10 dollars; Basic Authentication is described in RFC 7617.',
  ];
  for (let i = 0; i < n; i++) b.add('neg-basic', [basicNeg[i % basicNeg.length]!]);
  const tgNeg = [
    'GET https://api.telegram.org/bot<token>/getMe HTTP/1.1',
    'POST /hooks?callback=https%3A%2F%2Fapi.telegram.org%2Fbot%3Ctoken%3E%2FsendMessage',
    `GET https://api.telegram.org/bot${rng.chars(DIGITS, 9)}%3AAAshort/getMe`,
    // biome-ignore lint/suspicious/noTemplateCurlyInString: literal placeholder
    'https://api.telegram.org/bot${TELEGRAM_BOT_TOKEN}/sendMessage',
  ];
  for (let i = 0; i < n / 2; i++) b.add('neg-telegram', [tgNeg[i % tgNeg.length]!]);
  for (let i = 0; i < n; i++) {
    const form = i % 5;
    if (form === 0) {
      b.add('neg-csv', [
        // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal placeholder
        'profile,aws_access_key_id,aws_secret_access_key\ndefault,${AWS_ACCESS_KEY_ID},${AWS_SECRET_ACCESS_KEY}\n',
      ]);
    } else if (form === 1) {
      b.add('neg-csv', ['Access key ID,Secret access key\n<access-key-id>,<secret-access-key>\n']);
    } else if (form === 2) {
      b.add('neg-csv', [
        'commit,author,secret_access_key_rotated\n',
        `${rng.chars(HEX, 40)},dev,true\n`,
        `${rng.chars(HEX, 40)},ops,false\n`,
      ]);
    } else if (form === 3) {
      b.add('neg-csv', ['aws_secret_access_key_sha1,owner\n', `${rng.chars(HEX, 40)},team-a\n`]);
    } else {
      b.add('neg-csv', ['name,aws_secret_access_key\nexample,REDACTED\nother,********************\n']);
    }
  }
  const proseNeg = [
    'The db password is stored in Vault under secret/data/db.',
    'the password you need is in 1Password, vault "Ops".',
    'The default password is changeme.',
    'The password is password.',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: literal placeholder
    'Set the password to ${DB_PASSWORD} in your env file.',
    'the password is <password>',
    'my password is xxxx, obviously not the real one',
    'Password: ********',
    'Your password must be at least 12 characters long.',
    'The password was rotated at 2024-05-01T10:00:00Z by the cron job.',
    'password is required',
    'The password reset request id is 3f2b8c1e-9a4d-4f6b-8e2a-1c5d7e9f0a3b.',
    'The password hash is e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.',
    'The password policy is documented in ADR-0042.',
    'Use password authentication (scram-sha-256) instead of md5.',
    'The new password is the same as the old one plus the year.',
    'The password you need is your SSO password.',
    'use the password from the DB_PASSWORD environment variable',
  ];
  for (let i = 0; i < n; i++) b.add('neg-prose', [proseNeg[i % proseNeg.length]!]);
}

// Prints the misses and false positives of the built-in rules on a seed (for tuning).
if (import.meta.url === `file://${process.argv[1]}`) {
  const { createDetector } = await import('../../src/detect/detector.js');
  const detector = createDetector();
  const docs = gatewayCorpus(process.argv[2] ?? 'dev', Number(process.argv[3] ?? 40));
  for (const d of docs) {
    const found = detector.scan(d.text);
    const hit = (s: Span) => found.some((f) => f.start < s.end && f.end > s.start);
    for (const l of d.labels)
      if (!hit(l))
        console.log(`MISS ${d.context}: ${JSON.stringify(d.text)} [${d.text.slice(l.start, l.end)}]`);
    for (const f of found) {
      const ok = [...d.labels, ...d.also].some((s) => f.start < s.end && f.end > s.start);
      if (!ok)
        console.log(
          `FALSE ${d.context} ${f.ruleId}: ${JSON.stringify(d.text)} [${d.text.slice(f.start, f.end)}]`,
        );
    }
  }
}

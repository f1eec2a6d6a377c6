import { isPlaceholder, isStockPassword, percentDecode } from '../false-positives.js';
import { ALNUM } from '../synth.js';
import type { Rng, Rule, RuleSample } from '../types.js';
import { custom, samplePositives } from './builders.js';

const PASSWORD_ALPHABET = `${ALNUM}!*-_~`;

/**
 * The password of `scheme://user:password@host`: RFC 3986 allows sub-delims (`!$&'()*+,;=`),
 * `:` and percent-encodings there, and people also write `#`, `^`, `%`, `[` and even `@` raw
 * (parsers split at the last `@`). `/`, `?`, whitespace, `"`, backquote and `<>` end it.
 */
export const URI_PASSWORD = '[^\\s/?"`<>]{1,256}';

/** A URI password that is a stock example (`password`, `changeme`) or a placeholder once decoded. */
export function uriPasswordValid(value: string): boolean {
  const decoded = percentDecode(value) ?? value;
  return !isStockPassword(decoded) && !isPlaceholder(decoded);
}

/** Every scheme the database URI rules know (the percent-encoded URI rules reuse them). */
export const DB_URI_SCHEMES: string[] = [];

function password(rng: Rng): string {
  return `${rng.chars(ALNUM, 6)}${rng.chars(PASSWORD_ALPHABET, 10)}${rng.int(10)}`;
}

/** A password with the RFC 3986 characters people write raw in userinfo (and a last `@`). */
export function rfc3986Password(rng: Rng): string {
  return `${rng.chars(ALNUM, 4)}${rng.chars("!$&'()*+,;=:#^%[]~", 3)}${rng.chars(ALNUM, 4)}@${rng.chars(ALNUM, 3)}${rng.int(10)}`;
}

/** `scheme://user:password@host`: the password is reported. */
function uri(id: string, title: string, schemes: readonly string[], example: (pw: string) => string): Rule {
  DB_URI_SCHEMES.push(...schemes);
  const alt = schemes.map((s) => s.replace(/[+.]/g, '\\$&')).join('|');
  const pattern = new RegExp(
    `(?<![A-Za-z0-9+.\\-])(?:${alt})://[^\\s:@/?#'"\`<>]{0,128}:(${URI_PASSWORD})@[A-Za-z0-9.\\-_\\[\\]:%,]{1,512}`,
    'i',
  );
  const sample = (rng: Rng): RuleSample => {
    const pw = password(rng);
    return { key: 'database_url', value: example(pw), secret: pw, standalone: true };
  };
  return custom({
    id,
    family: 'database-uri',
    title,
    pattern,
    keywords: schemes.map((s) => `${s}://`),
    maxLength: 920,
    validate: uriPasswordValid,
    sample,
    positives: [
      ...samplePositives(id, sample),
      ...samplePositives(`${id}:env`, sample, (v) => `DATABASE_URL="${v}"`),
      ...samplePositives(`${id}:rfc3986`, (rng) => {
        const pw = rfc3986Password(rng);
        return { key: 'database_url', value: example(pw), secret: pw, standalone: true };
      }),
    ],
    negatives: [
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
      example('${DB_PASSWORD}'),
      example('<password>'),
      example('****'),
      example('password'),
      example('changeme'),
      `${schemes[0]}://localhost:5432/app`,
    ],
  });
}

export const DATABASE_URI_RULES: readonly Rule[] = [
  uri(
    'postgres-uri',
    'PostgreSQL connection URI with a password',
    ['postgres', 'postgresql', 'postgis', 'cockroachdb', 'timescaledb'],
    (pw) => `postgresql://app_user:${pw}@db.internal.example.net:5432/orders?sslmode=require`,
  ),
  uri(
    'mysql-uri',
    'MySQL / MariaDB connection URI with a password',
    ['mysql', 'mysqlx', 'mysql2', 'mariadb'],
    (pw) => `mysql://root:${pw}@10.0.3.7:3306/shop`,
  ),
  uri(
    'mongodb-uri',
    'MongoDB connection string with a password',
    ['mongodb', 'mongodb+srv'],
    (pw) => `mongodb+srv://svc:${pw}@cluster0.ab1cd.mongodb.net/app?retryWrites=true&w=majority`,
  ),
  uri(
    'redis-uri',
    'Redis / Valkey connection URI with a password',
    ['redis', 'rediss', 'valkey'],
    (pw) => `rediss://default:${pw}@cache.internal:6380/0`,
  ),
  uri(
    'amqp-uri',
    'AMQP (RabbitMQ) connection URI with a password',
    ['amqp', 'amqps'],
    (pw) => `amqps://worker:${pw}@mq.internal:5671/%2F`,
  ),
  uri(
    'mssql-uri',
    'SQL Server connection URI with a password',
    ['mssql', 'sqlserver'],
    (pw) => `mssql://sa:${pw}@sql01:1433/master`,
  ),
  uri(
    'clickhouse-uri',
    'ClickHouse connection URI with a password',
    ['clickhouse', 'clickhouses'],
    (pw) => `clickhouse://default:${pw}@ch.internal:9000/default`,
  ),
  uri(
    'oracle-uri',
    'Oracle connection URI with a password',
    ['oracle', 'oracle+cx_oracle'],
    (pw) => `oracle://scott:${pw}@orahost:1521/ORCL`,
  ),
  uri(
    'ldap-uri',
    'LDAP URI with bind credentials',
    ['ldap', 'ldaps'],
    (pw) => `ldaps://cn=admin:${pw}@ldap.internal:636`,
  ),
  uri(
    'neo4j-uri',
    'Neo4j / Bolt URI with a password',
    ['neo4j', 'neo4j+s', 'bolt', 'bolt+s'],
    (pw) => `neo4j+s://neo4j:${pw}@graph.internal:7687`,
  ),
  uri(
    'nats-uri',
    'NATS URI with a password',
    ['nats', 'tls'],
    (pw) => `nats://client:${pw}@nats.internal:4222`,
  ),
  uri(
    'sqlalchemy-uri',
    'SQLAlchemy database URL with a driver and a password',
    ['postgresql+psycopg2', 'postgresql+asyncpg', 'mysql+pymysql', 'mysql+mysqldb', 'mssql+pyodbc'],
    (pw) => `postgresql+psycopg2://etl:${pw}@warehouse:5432/dw`,
  ),
  custom({
    id: 'jdbc-password',
    family: 'database-uri',
    title: 'JDBC URL with a password parameter',
    pattern: /jdbc:[a-z0-9:]{2,30}[^\s'"`]{0,300}?[?&;:]password=([^\s&;'"`]{1,256})/i,
    keywords: ['jdbc:'],
    maxLength: 600,
    sample: (rng) => {
      const pw = password(rng);
      return {
        key: 'jdbc_url',
        value: `jdbc:postgresql://db:5432/app?user=app&password=${pw}&ssl=true`,
        secret: pw,
        standalone: true,
      };
    },
    positives: samplePositives('jdbc-password', (rng) => {
      const pw = password(rng);
      return {
        key: 'k',
        value: `jdbc:sqlserver://db:1433;databaseName=app;user=sa;password=${pw};encrypt=true`,
        secret: pw,
        standalone: true,
      };
    }),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal ${VAR} placeholder, not a template
    negatives: ['jdbc:postgresql://db:5432/app?user=app&password=${DB_PASSWORD}', 'jdbc:h2:mem:test'],
  }),
  custom({
    id: 'ado-net-connection-string',
    family: 'database-uri',
    title: 'ODBC / ADO.NET connection string with Password= or Pwd=',
    pattern:
      /(?:server|data source|host|address|addr|dsn|driver|uid|user id)\s{0,2}=[^;'"\n]{1,200};[^'"\n]{0,300}?(?:password|pwd)\s{0,2}=\s{0,2}(\{[^}\n]{1,256}\}|[^;'"\s]{1,256})/i,
    keywords: ['password', 'pwd'],
    maxLength: 800,
    sample: (rng) => {
      const pw = password(rng);
      return {
        key: 'connection_string',
        value: `Server=tcp:sql01.database.windows.net,1433;Initial Catalog=orders;User ID=app;Password=${pw};Encrypt=True;`,
        secret: pw,
        standalone: true,
      };
    },
    positives: samplePositives('ado-net-connection-string', (rng) => {
      const pw = password(rng);
      return {
        key: 'k',
        value: `Driver={ODBC Driver 18 for SQL Server};Server=db;Uid=sa;Pwd=${pw};`,
        secret: pw,
        standalone: true,
      };
    }),
    negatives: ['Server=db;User ID=app;Password=;', 'Server=db;Uid=sa;Pwd=<password>;'],
  }),
];

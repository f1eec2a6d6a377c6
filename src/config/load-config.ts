import { readFileSync } from 'node:fs';
import { isMap, isSeq, LineCounter, parseDocument } from 'yaml';
import { CoatcheckError } from '../core/errors.js';
import { type Config, configSchema, listenAddress } from './schema.js';

const MAX_CONFIG_BYTES = 1024 * 1024;

function configError(file: string, line: number | null, field: string, problem: string): CoatcheckError {
  const where = line === null ? file : `${file}:${line}`;
  return new CoatcheckError(
    'CC_ERR_CONFIG_INVALID',
    `${where}: ${field === '' ? '' : `${field}: `}${problem}`,
    {
      details: { file, line, field },
    },
  );
}

/**
 * Listeners from the environment (containers): COATCHECK_LISTEN_ADMIN, _HTTP, _POSTGRES,
 * _PROXY, _KUBERNETES, _SSH, _RELAY, each HOST:PORT, override `listen.*` of the file. `off` turns a
 * listener the file opens off (the admin listener cannot be turned off). `serve --listen-*`
 * flags still win over both.
 */
export const LISTEN_ENV = {
  admin: 'COATCHECK_LISTEN_ADMIN',
  http: 'COATCHECK_LISTEN_HTTP',
  postgres: 'COATCHECK_LISTEN_POSTGRES',
  proxy: 'COATCHECK_LISTEN_PROXY',
  kubernetes: 'COATCHECK_LISTEN_KUBERNETES',
  ssh: 'COATCHECK_LISTEN_SSH',
  relay: 'COATCHECK_LISTEN_RELAY',
} as const;

function applyListenEnv(config: Config, env: NodeJS.ProcessEnv): void {
  for (const [field, variable] of Object.entries(LISTEN_ENV) as [keyof typeof LISTEN_ENV, string][]) {
    const value = env[variable];
    if (value === undefined || value === '') continue;
    if (value === 'off' && field !== 'admin') {
      config.listen = { ...config.listen, [field]: null };
      continue;
    }
    if (value.length > 300 || !listenAddress.safeParse(value).success) {
      throw configError(
        variable,
        null,
        `listen.${field}`,
        field === 'admin'
          ? 'must be HOST:PORT, like 0.0.0.0:7070'
          : 'must be HOST:PORT, like 0.0.0.0:7080, or off',
      );
    }
    config.listen = { ...config.listen, [field]: value };
  }
}

/** Parse and validate config text. Errors name the file, the line and the field. */
export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): Config {
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES)
    throw configError(file, null, '', 'file is larger than 1 MiB');
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const first = doc.errors[0];
  if (first !== undefined) {
    const line = first.linePos?.[0]?.line ?? lineCounter.linePos(first.pos[0]).line;
    throw configError(file, line, '', `YAML syntax error: ${first.code.toLowerCase().replaceAll('_', ' ')}`);
  }
  const raw = doc.toJS() ?? {};
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw configError(file, 1, '', 'the top level must be a mapping');
  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    let path = [...issue.path] as (string | number)[];
    if (issue.code === 'unrecognized_keys') path = [...path, ...(issue.keys as string[]).slice(0, 1)];
    // Find the closest node that exists in the document to report its line.
    let line: number | null = null;
    for (let depth = path.length; depth >= 0 && line === null; depth--) {
      const prefix = path.slice(0, depth);
      const node = prefix.length === 0 ? doc.contents : doc.getIn(prefix, true);
      let range: readonly number[] | null | undefined;
      if (prefix.length > 0 && depth === path.length && issue.code === 'unrecognized_keys') {
        // Point at the key itself.
        const parent = doc.getIn(prefix.slice(0, -1), true) ?? doc.contents;
        if (isMap(parent)) {
          const pair = parent.items.find(
            (p) => (p.key as { value?: unknown } | null)?.value === prefix.at(-1),
          );
          range = (pair?.key as { range?: number[] } | null)?.range;
        }
      }
      if (range === undefined || range === null) {
        range = (node as { range?: number[] } | null | undefined)?.range;
      }
      if (range) line = lineCounter.linePos(range[0]!).line;
      if (node !== undefined && (isMap(node) || isSeq(node)) && line !== null) break;
    }
    const field = path
      .map((p) => (typeof p === 'number' ? `[${p}]` : `.${p}`))
      .join('')
      .replace(/^\./, '');
    const problem = issue.code === 'unrecognized_keys' ? 'unknown field' : issue.message;
    throw configError(file, line, field, problem);
  }
  const config = result.data;
  const level = env.COATCHECK_LOG_LEVEL;
  if (level !== undefined && level !== '') {
    const levels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
    if (!(levels as readonly string[]).includes(level)) {
      throw configError('COATCHECK_LOG_LEVEL', null, 'log.level', `must be one of ${levels.join(', ')}`);
    }
    config.log = { level: level as (typeof levels)[number] };
  }
  applyListenEnv(config, env);
  const url = env.COATCHECK_DATABASE_URL;
  if (url !== undefined && url !== '') {
    config.store = { ...config.store, driver: 'postgres', url };
  }
  if (config.store.driver === 'postgres' && (config.store.url === undefined || config.store.url === '')) {
    throw configError(
      file,
      null,
      'store.url',
      'the postgres driver needs a URL (set COATCHECK_DATABASE_URL)',
    );
  }
  const names = new Set<string>();
  for (const [index, connection] of config.connections.entries()) {
    if (names.has(connection.name)) {
      const node = doc.getIn(['connections', index, 'name'], true) as { range?: number[] } | undefined;
      const line = node?.range ? lineCounter.linePos(node.range[0]!).line : null;
      throw configError(
        file,
        line,
        `connections[${index}].name`,
        `duplicate connection name ${connection.name}`,
      );
    }
    names.add(connection.name);
  }
  return config;
}

export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new CoatcheckError('CC_ERR_HOME_MISSING', `no config file at ${file} (run \`coatcheck init\`)`, {
        details: { file },
      });
    }
    throw configError(file, null, '', `cannot be read (${(cause as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  return parseConfig(text, file, env);
}

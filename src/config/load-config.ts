import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { CoatcheckError } from '../core/errors.js';
import { configError, MAX_CONFIG_BYTES } from './config-error.js';
import { isListenAddress } from './defaults.js';
import type { Config } from './schema.js';

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
    if (value.length > 300 || !isListenAddress(value)) {
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

/** The environment's overrides (log level, listeners, database URL), applied to a checked config. */
function applyEnv(config: Config, file: string, env: NodeJS.ProcessEnv): Config {
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
  return config;
}

// The bundled CLI (scripts/bundle-cli.mjs) defines this as a hash of the build's code. Only
// then is a checked config cached: a cache written by one build is never read by another,
// whose schema (defaults included) may differ. Unbundled runs (tests, tsx) always validate.
declare const __COATCHECK_BUILD_ID__: string | undefined;
const BUILD_ID = typeof __COATCHECK_BUILD_ID__ === 'string' ? __COATCHECK_BUILD_ID__ : null;

/** Largest checked-config cache read back (the config itself is at most 1 MiB). */
const MAX_CACHE_BYTES = 4 * MAX_CONFIG_BYTES;

/**
 * Validating a config means loading a YAML parser and building the zod schema: most of a
 * short command's start. The result depends only on the text and the build, so it is kept
 * beside the file (mode 0600, the same contents as the file it came from), keyed by a hash
 * of both. Any failure to read or write it only costs the validation.
 */
function cacheFileOf(file: string): string {
  return join(dirname(file), `.${basename(file)}.checked.json`);
}

function cacheKey(text: string): string | null {
  if (BUILD_ID === null) return null;
  return createHash('sha256').update(BUILD_ID).update('\0').update(text).digest('hex');
}

function readCachedConfig(file: string, key: string): Config | null {
  const cacheFile = cacheFileOf(file);
  try {
    if (statSync(cacheFile).size > MAX_CACHE_BYTES) return null;
    const cached = JSON.parse(readFileSync(cacheFile, 'utf8')) as { key?: unknown; config?: unknown };
    if (cached.key !== key || typeof cached.config !== 'object' || cached.config === null) return null;
    return cached.config as Config;
  } catch {
    return null; // no cache, or one that cannot be read: validate instead
  }
}

function writeCachedConfig(file: string, key: string, config: Config): void {
  const cacheFile = cacheFileOf(file);
  const temporary = `${cacheFile}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    writeFileSync(temporary, JSON.stringify({ key, config }), { mode: 0o600, flag: 'wx' });
    renameSync(temporary, cacheFile);
  } catch {
    // A read-only directory (a mounted config) or a full disk: the next start validates again.
    try {
      unlinkSync(temporary);
    } catch {
      // never created
    }
  }
}

/** Parse and validate config text, then apply the environment. Errors name the file, the line and the field. */
export async function parseConfig(
  text: string,
  file: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<Config> {
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES)
    throw configError(file, null, '', 'file is larger than 1 MiB');
  const { validateConfigText } = await import('./validate-config.js');
  return applyEnv(validateConfigText(text, file), file, env);
}

/** Read, validate (or take the checked copy of this exact text) and apply the environment. */
export async function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<Config> {
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
  if (Buffer.byteLength(text) > MAX_CONFIG_BYTES)
    throw configError(file, null, '', 'file is larger than 1 MiB');
  const key = cacheKey(text);
  const cached = key === null ? null : readCachedConfig(file, key);
  if (cached !== null) return applyEnv(cached, file, env);
  const { validateConfigText } = await import('./validate-config.js');
  const config = validateConfigText(text, file);
  if (key !== null) writeCachedConfig(file, key, config);
  return applyEnv(config, file, env);
}

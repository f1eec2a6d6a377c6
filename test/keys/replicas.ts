import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveHome } from '../../src/config/home.js';
import type { Principal } from '../../src/core/principal.js';
import { type Context, initHome, openContext } from '../../src/server/context.js';

/**
 * Several gateway replicas on one store, in one process: each replica is its own Context
 * (own store connection, own keyring, own caches). Replicas share the home (config, keys
 * directory) the way replicas share a mounted config and key volume; `lagging()` makes one
 * with its own keys directory, which sees only the keys copied into it.
 */
export interface Cluster {
  readonly dir: string;
  readonly homeDir: string;
  readonly env: NodeJS.ProcessEnv;
  open(): Promise<Context>;
  /** A replica whose keys directory holds only the keys in it now (it misses later ones). */
  lagging(): Promise<{ ctx: Context; keysDir: string }>;
  remove(): void;
}

export async function makeCluster(databaseUrl?: string): Promise<Cluster> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-replicas-'));
  const env: NodeJS.ProcessEnv = databaseUrl === undefined ? {} : { COATCHECK_DATABASE_URL: databaseUrl };
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env });
  // No ticket cache: every exchange unseals its secret, so a key problem cannot hide behind a cached value.
  const config = readFileSync(home.configFile, 'utf8').replace('cacheMs: 5000', 'cacheMs: 0');
  writeFileSync(home.configFile, config, { mode: 0o600 });
  let laggards = 0;
  return {
    dir,
    homeDir: home.dir,
    env,
    open: () => openContext(home, { env }),
    async lagging() {
      const other = resolveHome(join(dir, `lagging-${++laggards}`), {});
      mkdirSync(other.dir, { mode: 0o700 });
      const keysDir = join(other.dir, 'own-keys');
      mkdirSync(keysDir, { mode: 0o700 });
      copyFileSync(home.masterKeyFile, other.masterKeyFile);
      writeFileSync(
        other.configFile,
        config
          .replace('path: coatcheck.db', `path: ${join(home.dir, 'coatcheck.db')}`)
          .replace('dir: keys ', `dir: ${keysDir} `),
        { mode: 0o600 },
      );
      return { ctx: await openContext(other, { env }), keysDir };
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export async function agentPrincipal(ctx: Context, name: string): Promise<Principal> {
  const agent = await ctx.agents.create({ name }, 'admin:test');
  return ctx.agents.authenticate(agent.key);
}

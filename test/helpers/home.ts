import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Home, resolveHome } from '../../src/config/home.js';
import type { Clock } from '../../src/core/clock.js';
import { type Context, initHome, openContext } from '../../src/server/context.js';

export interface TestHome {
  readonly dir: string;
  readonly home: Home;
  readonly adminKey: string;
  open(options?: { clock?: Clock; env?: NodeJS.ProcessEnv }): Promise<Context>;
  remove(): void;
}

/** A fresh coatcheck home in a temp directory (SQLite store, key file). */
export async function makeTestHome(env: NodeJS.ProcessEnv = {}): Promise<TestHome> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-test-'));
  const home = resolveHome(join(dir, 'home'), {});
  const { adminKey } = await initHome(home, { env });
  return {
    dir,
    home,
    adminKey,
    open: (options = {}) => openContext(home, { env, ...options }),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

// Bundles the CLI (dist/cli/main.js, built by tsc) into dist/bin/: the project's own modules
// and the pure-JavaScript packages every command loads (commander, zod, ignore, yaml) become
// a few files, so a command starts without resolving and reading ~170 separate modules.
// Dynamic imports stay separate chunks, so what each command loads lazily is still lazy.
// Every other dependency stays external: native (better-sqlite3, libpg-query, ssh2), WASM
// (Cedar), and those loaded only by the commands that need them.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';

const BUNDLED = new Set(['commander', 'zod', 'ignore', 'yaml']);
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const external = Object.keys(pkg.dependencies).filter((name) => !BUNDLED.has(name));

// The build's identity: a hash of everything tsc wrote (dist/ but dist/bin) and the bundled
// packages' versions. Code that caches a result of this build's logic keys it by this
// (src/config/load-config.ts: the checked config).
function hashTree(hash, dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      if (path !== join('dist', 'bin')) hashTree(hash, path);
    } else if (entry.name.endsWith('.js')) {
      hash.update(path).update('\0').update(readFileSync(path)).update('\0');
    }
  }
}
const buildHash = createHash('sha256');
hashTree(buildHash, 'dist');
const lock = JSON.parse(readFileSync(new URL('../package-lock.json', import.meta.url), 'utf8'));
for (const name of [...BUNDLED].sort())
  buildHash.update(`${name}@${lock.packages[`node_modules/${name}`]?.version}\0`);
const buildId = buildHash.digest('hex').slice(0, 32);

// Chunk names carry content hashes: clear the old ones so dist/bin holds one build.
rmSync(new URL('../dist/bin', import.meta.url), { recursive: true, force: true });

await build({
  entryPoints: { coatcheck: 'dist/cli/main.js' },
  outdir: 'dist/bin',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external,
  define: { __COATCHECK_BUILD_ID__: JSON.stringify(buildId) },
  // Bundled CommonJS (commander) requires Node's built-ins; ESM output needs a require for that.
  banner: {
    js: "import { createRequire as __coatcheckRequire } from 'node:module'; const require = __coatcheckRequire(import.meta.url);",
  },
  // dist/bin/ sits as deep as dist/admin/: paths built from import.meta.url (the console's
  // files, docs) resolve the same from either.
  // Not minified: an incident's stack trace in the log must stay readable.
  logLevel: 'warning',
});

// Bundles the CLI (dist/cli/main.js, built by tsc) into dist/bin/: the project's own modules
// and the pure-JavaScript packages every command loads (commander, zod, ignore, yaml) become
// a few files, so a command starts without resolving and reading ~170 separate modules.
// Dynamic imports stay separate chunks, so what each command loads lazily is still lazy.
// Every other dependency stays external: native (better-sqlite3, libpg-query, ssh2), WASM
// (Cedar), and those loaded only by the commands that need them.
import { readFileSync, rmSync } from 'node:fs';
import { build } from 'esbuild';

const BUNDLED = new Set(['commander', 'zod', 'ignore', 'yaml']);
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const external = Object.keys(pkg.dependencies).filter((name) => !BUNDLED.has(name));

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
  // Bundled CommonJS (commander) requires Node's built-ins; ESM output needs a require for that.
  banner: {
    js: "import { createRequire as __coatcheckRequire } from 'node:module'; const require = __coatcheckRequire(import.meta.url);",
  },
  // dist/bin/ sits as deep as dist/admin/: paths built from import.meta.url (the console's
  // files, docs) resolve the same from either.
  // Not minified: an incident's stack trace in the log must stay readable.
  logLevel: 'warning',
});

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

// The package's own entry points, imported by name as a user would (Node resolves a
// package's own name from inside it through "exports"): every path in "exports" must
// exist in the build, and the main entry must carry the SDK and the detector.
const root = join(import.meta.dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  exports: Record<string, { types: string; default: string }>;
};

describe('package exports', () => {
  it.skipIf(!existsSync(join(root, 'dist', 'cli', 'main.js')))('every export path is built', () => {
    for (const [name, entry] of Object.entries(pkg.exports)) {
      expect(existsSync(join(root, entry.default)), `${name} -> ${entry.default}`).toBe(true);
      expect(existsSync(join(root, entry.types)), `${name} -> ${entry.types}`).toBe(true);
    }
  });

  it.skipIf(!existsSync(join(root, 'dist', 'cli', 'main.js')))(
    "import('coatcheck') gives the SDK and a detector that finds a secret",
    () => {
      const out = execFileSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const m = await import('coatcheck');
           const sdk = await import('coatcheck/sdk');
           const d = m.createDetector();
           const found = d.scan('key sk_live_' + '4eC39HqLyjWDarjtT1zdp7dc');
           console.log(JSON.stringify({ client: typeof m.createClient, same: m.createClient === sdk.createClient, rule: found[0]?.ruleId ?? null }));`,
        ],
        { cwd: root, encoding: 'utf8' },
      );
      expect(JSON.parse(out)).toEqual({ client: 'function', same: true, rule: 'stripe-secret-key' });
    },
  );
});

import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The Dockerfile, read as text (no daemon here to build it): what the issue asks of the
 * image is stated in it, and everything it copies exists and is not excluded by
 * .dockerignore. The image itself is not built by any test.
 */
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l !== '' && !l.startsWith('#'));

/** Instructions with continuation lines joined, comments dropped. */
const instructions = dockerfile
  .replace(/\\\n/g, ' ')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l !== '' && !l.startsWith('#'));
const stages = instructions.filter((l) => l.startsWith('FROM '));
const runtimeStart = instructions.findIndex((l) => / AS runtime$/.test(l));
const runtime = instructions.slice(runtimeStart);

describe('Dockerfile', () => {
  it('is multi-stage: TypeScript built with every dependency, the runtime with production dependencies only', () => {
    expect(stages.map((l) => l.split(' AS ')[1])).toEqual(['toolchain', 'build', 'deps', 'runtime']);
    expect(dockerfile).toMatch(/RUN npm ci --ignore-scripts[^\n]*&& npm rebuild better-sqlite3/);
    expect(dockerfile).toContain('RUN npx tsc -p tsconfig.build.json');
    expect(dockerfile).toMatch(/npm ci --omit=dev --ignore-scripts/);
    // The runtime copies node_modules from the production-only stage, never from build.
    expect(runtime).toContain('COPY --from=deps /src/node_modules ./node_modules');
    expect(runtime.some((l) => l.startsWith('COPY --from=build') && l.includes('node_modules'))).toBe(false);
    // No compiler in the runtime stage.
    expect(runtime.join('\n')).not.toMatch(/\bg\+\+|\bmake\b|python3/);
  });

  it('runs as a numeric non-root user, with a home volume, a health check on /readyz, tini and the entrypoint', () => {
    const user = runtime.filter((l) => l.startsWith('USER '));
    expect(user).toEqual(['USER 10001:10001']);
    expect(runtime).toContain('VOLUME ["/var/lib/coatcheck"]');
    expect(runtime.find((l) => l.startsWith('HEALTHCHECK '))).toContain(
      'CMD ["node", "/opt/coatcheck/deploy/docker/healthcheck.mjs"]',
    );
    expect(readFileSync(join(ROOT, 'deploy/docker/healthcheck.mjs'), 'utf8')).toContain("'/readyz'");
    expect(runtime).toContain(
      'ENTRYPOINT ["/usr/bin/tini", "--", "/opt/coatcheck/deploy/docker/entrypoint.sh"]',
    );
    expect(runtime).toContain('CMD ["serve"]');
    expect(runtime.join(' ')).toContain('COATCHECK_HOME=/var/lib/coatcheck');
    expect(statSync(join(ROOT, 'deploy/docker/entrypoint.sh')).mode & 0o111).not.toBe(0);
  });

  it('every file it copies from the context exists and is not excluded by .dockerignore; secrets and homes are', () => {
    const sources = instructions
      .filter((l) => l.startsWith('COPY ') && !l.startsWith('COPY --from='))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    expect(sources.length).toBeGreaterThan(5);
    for (const source of sources) {
      expect({ source, exists: existsSync(join(ROOT, source)) }).toEqual({ source, exists: true });
      const top = source.split('/')[0]!;
      expect({ source, ignored: ignored.includes(source) || ignored.includes(top) }).toEqual({
        source,
        ignored: false,
      });
    }
    for (const pattern of ['**/node_modules', '.git', '.coatcheck', '**/*.key', '**/*.db', '.env'])
      expect(ignored).toContain(pattern);
  });
});

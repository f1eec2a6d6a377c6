import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  type Authorized,
  type Cleared,
  checkAuthorized,
  checkCleared,
  clearAuthorized,
  makeAuthorized,
} from './authorized.js';

const fields = { session: 'ses_a', action: 'http:GET', connection: 'api', mask: [], reasons: ['p1'] };

describe('Authorized and Cleared: only the pipeline makes them', () => {
  it('accepts a value the pipeline made, for its own session only', async () => {
    const authorized = makeAuthorized(fields, Promise.resolve());
    expect(() => checkAuthorized(authorized, 'ses_a', 'ticket exchange')).not.toThrow();
    expect(() => checkAuthorized(authorized, 'ses_b', 'ticket exchange')).toThrow(/another session/);
    const cleared = await clearAuthorized(authorized, 'ses_a');
    expect(() => checkCleared(cleared, 'ses_a')).not.toThrow();
    expect(() => checkCleared(cleared, 'ses_b')).toThrow(/another session/);
    await expect(clearAuthorized(authorized, 'ses_b')).rejects.toThrow(/another session/);
  });

  it('refuses look-alikes: an object literal, a copy, a spread, undefined', () => {
    const authorized = makeAuthorized(fields, Promise.resolve());
    const literal = { ...fields } as unknown as Authorized;
    const spread = { ...authorized } as Authorized;
    const parsed = JSON.parse(JSON.stringify(authorized)) as Authorized;
    for (const fake of [literal, spread, parsed, undefined]) {
      expect(() => checkAuthorized(fake, 'ses_a', 'ticket exchange')).toThrow(
        expect.objectContaining({ code: 'CC_ERR_INTERNAL' }),
      );
    }
    const clearedFake = { session: 'ses_a', action: 'http:GET', connection: 'api' } as unknown as Cleared;
    expect(() => checkCleared(clearedFake, 'ses_a')).toThrow(/not recorded/);
    // An Authorized is not a Cleared: forwarding needs the durable record.
    expect(() => checkCleared(authorized as unknown as Cleared, 'ses_a')).toThrow(/not recorded/);
  });

  it('is frozen: a front-end cannot move it to another session', () => {
    const authorized = makeAuthorized(fields, Promise.resolve());
    expect(() => {
      (authorized as unknown as { session: string }).session = 'ses_b';
    }).toThrow(TypeError);
    expect(() => checkAuthorized(authorized, 'ses_b', 'x')).toThrow();
  });

  it('gives no Cleared while the decision record is pending, and none if it fails', async () => {
    let fail!: (error: Error) => void;
    const recorded = new Promise<unknown>((_, reject) => {
      fail = reject;
    });
    const authorized = makeAuthorized(fields, recorded);
    let settled = false;
    const clearing = clearAuthorized(authorized, 'ses_a').finally(() => {
      settled = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toBe(false);
    fail(Object.assign(new Error('disk full'), { code: 'CC_ERR_AUDIT_UNAVAILABLE' }));
    await expect(clearing).rejects.toThrow('disk full');
  });
});

/** Every .ts file under src (tests excluded). */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...sources(path));
    else if (name.endsWith('.ts') && !name.endsWith('.test.ts')) out.push(path);
  }
  return out;
}

describe('release and forwarding go through the pipeline', () => {
  const root = join(import.meta.dirname, '..');
  const files = sources(root).map((path) => ({
    path: relative(root, path),
    text: readFileSync(path, 'utf8'),
  }));

  it('only the pipeline makes an Authorized', () => {
    const makers = files.filter((f) => /\bmakeAuthorized\(/.test(f.text)).map((f) => f.path);
    expect(makers.sort()).toEqual(['gateway/authorized.ts', 'gateway/pipeline.ts']);
  });

  it('only the pipeline asks the vault to exchange a ticket or release a credential', () => {
    const callers = files
      .filter((f) => /\bvault\.(exchange|releaseCredential)\(/.test(f.text))
      .map((f) => f.path)
      .filter((path) => !path.startsWith('vault/'));
    expect(callers).toEqual(['gateway/pipeline.ts']);
  });
});

import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BASE32_UPPER, createRng } from '../../src/detect/synth.js';

// `coatcheck scan` with absolute paths, `..`, symlinks and spaces, through the real CLI
// (a child process, as a user runs it). The working directory is the repository, never the
// directory being scanned, so a path resolved against the wrong base cannot pass.
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = join(ROOT, 'src', 'cli', 'main.ts');
const exec = promisify(execFile);

const rng = createRng('detect-recall:cli-paths');
const AWS = `AKIA${rng.chars(BASE32_UPPER, 16)}`;

interface Located {
  path: string;
  line: number;
  ruleId: string;
}

async function scan(
  args: string[],
): Promise<{ code: number; findings: Located[]; files: number; stderr: string }> {
  try {
    const r = await exec(process.execPath, ['--import', 'tsx', MAIN, 'scan', '--format', 'json', ...args], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: '1' },
    });
    const out = JSON.parse(r.stdout) as { findings: Located[]; files: number };
    return { code: 0, ...out, stderr: r.stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    const out = e.stdout?.trim() ? (JSON.parse(e.stdout) as { findings: Located[]; files: number }) : null;
    return {
      code: e.code ?? -1,
      findings: out?.findings ?? [],
      files: out?.files ?? 0,
      stderr: e.stderr ?? '',
    };
  }
}

let dir: string;
beforeAll(async () => {
  // realpath: on some systems the temp dir itself is behind a symlink.
  dir = await realpath(await mkdtemp(join(tmpdir(), 'cc-detect-paths-')));
  await writeFile(join(dir, 'one.env'), `NODE_ENV=production\nAWS_ACCESS_KEY_ID=${AWS}\n`);
  await mkdir(join(dir, 'tree', 'deep'), { recursive: true });
  await writeFile(join(dir, 'tree', 'clean.txt'), 'nothing here\n');
  await writeFile(join(dir, 'tree', 'deep', 'app.json'), `{\n  "aws": "${AWS}"\n}\n`);
  await mkdir(join(dir, 'with space'));
  await writeFile(join(dir, 'with space', 'my file.env'), `\nkey=${AWS}\n`);
  await symlink(join(dir, 'one.env'), join(dir, 'link.env'));
  await symlink(join(dir, 'tree'), join(dir, 'tree-link'));
}, 30_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('coatcheck scan with paths outside the working directory', () => {
  it('scans an absolute file path (the reported failure)', async () => {
    const file = join(dir, 'one.env');
    const r = await scan([file]);
    expect(r.stderr).not.toContain('CC_ERR_DETECT_INPUT_UNREADABLE');
    expect(r.code).toBe(1);
    expect(r.files).toBe(1);
    expect(r.findings).toEqual([expect.objectContaining({ path: file, line: 2, ruleId: 'aws-access-key' })]);
    // Findings name fingerprints, never values.
    expect(JSON.stringify(r)).not.toContain(AWS);
  }, 30_000);

  it('scans an absolute directory, an absolute path with .., a relative path with .., a symlink to a file, a symlink to a directory and paths with spaces', async () => {
    const tree = join(dir, 'tree');
    const dotdot = `${dir}/tree/deep/../../one.env`;
    const relDotdot = relative(ROOT, join(dir, 'tree', 'deep', 'app.json'));
    expect(relDotdot.startsWith('..')).toBe(true);
    const spaced = join(dir, 'with space', 'my file.env');
    const spacedDir = join(dir, 'with space');
    const r = await scan([
      tree,
      dotdot,
      relDotdot,
      join(dir, 'link.env'),
      join(dir, 'tree-link'),
      spaced,
      spacedDir,
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(1);
    const paths = r.findings.map((f) => `${f.path}:${f.line}`);
    expect(paths).toEqual([
      `${tree}/deep/app.json:2`,
      `${dotdot}:2`,
      `${relDotdot}:2`,
      `${join(dir, 'link.env')}:2`,
      `${join(dir, 'tree-link')}/deep/app.json:2`,
      `${spaced}:2`,
      `${spacedDir}/my file.env:2`,
    ]);
    // tree has 2 files, tree-link 2, the spaced directory 1, plus 4 single files.
    expect(r.files).toBe(9);
    expect(JSON.stringify(r)).not.toContain(AWS);
  }, 30_000);

  it('still refuses a missing absolute path with CC_ERR_DETECT_INPUT_UNREADABLE, naming the path', async () => {
    const missing = join(dir, 'nope', 'missing.env');
    const r = await scan([missing]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`CC_ERR_DETECT_INPUT_UNREADABLE: cannot read ${missing}`);
  }, 30_000);
});

import { type ChildProcessWithoutNullStreams, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';

/**
 * The container's entrypoint (deploy/docker/entrypoint.sh) and health check, run as the
 * image runs them but without a container daemon: as a throwaway non-root uid, in a mount
 * namespace whose every filesystem is read-only except the home "volume" and a tmpfs for
 * TMPDIR (what `docker run --read-only --tmpfs /tmp -v home:/var/lib/coatcheck` gives).
 * `coatcheck` on PATH is the CLI from source (through tsx), as the image's is from dist/.
 * Needs root (unshare, setpriv); skipped otherwise.
 */
const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '../..');
const ENTRYPOINT = join(ROOT, 'deploy/docker/entrypoint.sh');
const HEALTHCHECK = join(ROOT, 'deploy/docker/healthcheck.mjs');
const UID = 40000 + Math.floor(Math.random() * 20000);
const CANARY = 'canary-entrypoint-Xv93KqL2w';

const isRoot = process.getuid?.() === 0;
const canUnshare = isRoot && spawnSync('unshare', ['-m', 'true']).status === 0;

interface Box {
  readonly work: string;
  readonly vol: string;
  readonly bin: string;
}

function makeBox(): Box {
  const work = mkdtempSync(join(tmpdir(), 'coatcheck-entry-'));
  chmodSync(work, 0o755);
  const vol = join(work, 'vol');
  mkdirSync(vol, { mode: 0o700 });
  chownSync(vol, UID, UID);
  mkdirSync(join(work, 'tmp'));
  const bin = join(work, 'bin');
  mkdirSync(bin);
  writeFileSync(
    join(bin, 'coatcheck'),
    `#!/bin/sh\n# tsx resolves from the working directory.\ncd '${ROOT}' && exec ${process.execPath} --import tsx ${join(ROOT, 'src/cli/main.ts')} "$@"\n`,
    { mode: 0o755 },
  );
  return { work, vol, bin };
}

/**
 * Run `command` as UID with every mount read-only except `vol` (read-write) and a fresh
 * tmpfs for TMPDIR. The last step execs, so the child's pid is the command's.
 */
function boxed(box: Box, command: string[], env: Record<string, string>): ChildProcessWithoutNullStreams {
  const script = [
    'set -e',
    'mount --make-rprivate /',
    `mount --bind "${box.vol}" "${box.vol}"`,
    // Every other mount read-only (proc and sys may refuse; they are not where files go).
    `findmnt -rno TARGET | while read -r m; do [ "$m" = "${box.vol}" ] || mount -o bind,remount,ro "$m" 2>/dev/null || true; done`,
    `mount -t tmpfs -o mode=1777,size=64m tmpfs "${box.work}/tmp"`,
    `exec setpriv --reuid=${UID} --regid=${UID} --clear-groups -- env -i ${Object.entries({
      PATH: `${box.bin}:/usr/local/bin:/usr/bin:/bin`,
      TMPDIR: `${box.work}/tmp`,
      HOME: box.vol,
      ...env,
    })
      .map(([k, v]) => `${k}='${v}'`)
      .join(' ')} ${command.map((c) => `'${c}'`).join(' ')}`,
  ].join('\n');
  return spawn('unshare', ['-m', 'sh', '-c', script], {
    cwd: '/',
    stdio: ['pipe', 'pipe', 'pipe'],
  }) as ChildProcessWithoutNullStreams;
}

async function run(box: Box, command: string[], env: Record<string, string>) {
  const child = boxed(box, command, env);
  let out = '';
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString('utf8');
  });
  child.stderr.on('data', (c: Buffer) => {
    out += c.toString('utf8');
  });
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  return { code, out };
}

function waitForJsonLine(child: ChildProcessWithoutNullStreams, seen: { text: string }) {
  return new Promise<Record<string, string>>((resolve, reject) => {
    child.stdout.on('data', (c: Buffer) => {
      seen.text += c.toString('utf8');
      const line = seen.text.split('\n').find((l) => l.startsWith('{') && l.includes('"admin"'));
      if (line !== undefined) resolve(JSON.parse(line) as Record<string, string>);
    });
    child.stderr.on('data', (c: Buffer) => {
      seen.text += c.toString('utf8');
    });
    child.once('exit', (code) => reject(new Error(`exited ${code} before listening:\n${seen.text}`)));
  });
}

/** Every file and directory under `dir`, with its mode and owner. */
function listTree(dir: string, prefix = ''): Array<{ path: string; mode: string; uid: number }> {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    const stat = statSync(path);
    const row = {
      path: `${prefix}${entry.name}${entry.isDirectory() ? '/' : ''}`,
      mode: (stat.mode & 0o777).toString(8),
      uid: stat.uid,
    };
    return entry.isDirectory() ? [row, ...listTree(path, `${prefix}${entry.name}/`)] : [row];
  });
}

describe.skipIf(!canUnshare)('container entrypoint, non-root on a read-only root filesystem', () => {
  let box: Box | null = null;
  afterEach(() => {
    if (box !== null) rmSync(box.work, { recursive: true, force: true });
    box = null;
  });

  it('first start initializes the home on the volume (0700 dir, 0600 files, owned by the uid); the health check passes; SIGTERM exits 0; the second start reuses the home', async () => {
    box = makeBox();
    const env = {
      COATCHECK_HOME: box.vol,
      COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
      COATCHECK_LISTEN_HTTP: '127.0.0.1:0',
    };
    for (let start = 0; start < 2; start++) {
      const child = boxed(box, [ENTRYPOINT], env);
      const seen = { text: '' };
      const listening = await waitForJsonLine(child, seen);
      expect(listening.http).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      // The health check, run as the image's HEALTHCHECK runs it (same uid, same home).
      const health = await run(box, ['node', HEALTHCHECK], { COATCHECK_HOME: box.vol });
      expect(health).toMatchObject({ code: 0 });
      const live = await run(box, [ENTRYPOINT, 'healthcheck', '--live'], { COATCHECK_HOME: box.vol });
      expect(live.code).toBe(0);
      // A CLI command through the entrypoint reaches the running server.
      const status = await run(box, [ENTRYPOINT, 'coatcheck', 'agent', 'list', '--json'], {
        COATCHECK_HOME: box.vol,
      });
      expect(status).toMatchObject({ code: 0 });
      child.kill('SIGTERM');
      expect(await new Promise((r) => child.once('exit', r))).toBe(0);
      // Structured logs: every line the server wrote is JSON.
      const lines = seen.text.split('\n').filter((l) => l.trim() !== '');
      for (const line of lines) expect(() => JSON.parse(line)).not.toThrow();
      expect(seen.text.includes('initialized coatcheck home')).toBe(start === 0);
    }
    const tree = listTree(box.vol);
    expect(statSync(box.vol).mode & 0o777).toBe(0o700);
    expect(tree.map((r) => r.path).sort()).toEqual(
      expect.arrayContaining(['admin.key', 'coatcheck.db', 'coatcheck.yaml', 'master.key']),
    );
    for (const row of tree) {
      expect({ path: row.path, uid: row.uid }).toEqual({ path: row.path, uid: UID });
      expect({ path: row.path, mode: row.mode }).toEqual({
        path: row.path,
        mode: row.path.endsWith('/') ? '700' : '600',
      });
    }
    // The health check fails when nothing answers.
    const down = await run(box, ['node', HEALTHCHECK], { COATCHECK_HOME: box.vol });
    expect(down.code).toBe(1);
  }, 120_000);

  it('the master key from COATCHECK_MASTER_KEY_FILE stays off the volume; the PostgreSQL listener makes its certificate with TMPDIR only', async () => {
    box = makeBox();
    const keyFile = join(box.work, 'master.key');
    const key = randomBytes(32).toString('base64');
    writeFileSync(keyFile, `${key}\n`, { mode: 0o600 });
    chownSync(keyFile, UID, UID);
    const env = {
      COATCHECK_HOME: box.vol,
      COATCHECK_MASTER_KEY_FILE: keyFile,
      COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
      COATCHECK_LISTEN_POSTGRES: '127.0.0.1:0',
    };
    const child = boxed(box, [ENTRYPOINT, 'serve'], env);
    const seen = { text: '' };
    const listening = await waitForJsonLine(child, seen);
    expect(listening.postgres).toMatch(/^127\.0\.0\.1:\d+$/);
    child.kill('SIGTERM');
    expect(await new Promise((r) => child.once('exit', r))).toBe(0);
    const names = readdirSync(box.vol).sort();
    expect(names).not.toContain('master.key');
    expect(names).toEqual(expect.arrayContaining(['postgres-tls.crt', 'postgres-tls.key']));
    expect(statSync(join(box.vol, 'postgres-tls.key')).mode & 0o077).toBe(0);
    expect(seen.text).not.toContain(key);
  }, 120_000);

  it('a volume the uid cannot write, or a stale server.json from a killed container, are handled at start', async () => {
    box = makeBox();
    chownSync(box.vol, 0, 0);
    const refused = await run(box, [ENTRYPOINT], {
      COATCHECK_HOME: box.vol,
      COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
    });
    expect(refused.code).toBe(64);
    expect(JSON.parse(refused.out.trim())).toMatchObject({
      level: 50,
      msg: expect.stringContaining('is not writable by uid'),
    });
    chownSync(box.vol, UID, UID);
    // A server.json naming a live process that is not a coatcheck server (pid 1 here) is stale.
    const first = boxed(box, [ENTRYPOINT], {
      COATCHECK_HOME: box.vol,
      COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
    });
    await waitForJsonLine(first, { text: '' });
    first.kill('SIGKILL');
    await new Promise((r) => first.once('exit', r));
    writeFileSync(join(box.vol, 'server.json'), '{"pid":1,"admin":"http://127.0.0.1:1"}\n', { mode: 0o600 });
    chownSync(join(box.vol, 'server.json'), UID, UID);
    const second = boxed(box, [ENTRYPOINT], {
      COATCHECK_HOME: box.vol,
      COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
    });
    await waitForJsonLine(second, { text: '' });
    second.kill('SIGTERM');
    expect(await new Promise((r) => second.once('exit', r))).toBe(0);
  }, 120_000);

  it('no secret reaches the output: a secret added through the entrypoint is not printed by serve or the CLI, and is not in the store file in clear', async () => {
    box = makeBox();
    const env = { COATCHECK_HOME: box.vol, COATCHECK_LISTEN_ADMIN: '127.0.0.1:0' };
    const child = boxed(box, [ENTRYPOINT], env);
    const seen = { text: '' };
    await waitForJsonLine(child, seen);
    const added = boxed(
      box,
      [ENTRYPOINT, 'coatcheck', 'secret', 'add', 'api', '--allow', 'example.com'],
      env,
    );
    let addedOut = '';
    added.stdout.on('data', (c: Buffer) => {
      addedOut += c.toString('utf8');
    });
    added.stderr.on('data', (c: Buffer) => {
      addedOut += c.toString('utf8');
    });
    added.stdin.end(CANARY);
    expect(await new Promise((r) => added.once('exit', r))).toBe(0);
    child.kill('SIGTERM');
    expect(await new Promise((r) => child.once('exit', r))).toBe(0);
    expect(seen.text + addedOut).not.toContain(CANARY);
    expect(readFileSync(join(box.vol, 'coatcheck.db')).includes(Buffer.from(CANARY))).toBe(false);
  }, 120_000);
  it('the runtime stage as the Dockerfile assembles it (dist/, console/, production dependencies only) serves an exchange', async () => {
    box = makeBox();
    if (!existsSync(join(ROOT, 'dist/cli/main.js')))
      spawnSync('npm', ['run', '-s', 'build'], { cwd: ROOT, stdio: 'ignore' });
    // /opt/coatcheck of the image: package files, `npm ci --omit=dev --ignore-scripts`, the
    // native better-sqlite3 module (the image compiles it; here it is copied from the
    // development install, same Node), dist/, console/ and deploy/docker/.
    const app = join(box.work, 'opt/coatcheck');
    mkdirSync(app, { recursive: true });
    for (const f of ['package.json', 'package-lock.json']) copyFileSync(join(ROOT, f), join(app, f));
    const install = spawnSync(
      'npm',
      ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'],
      { cwd: app, encoding: 'utf8' },
    );
    expect({ status: install.status, stderr: install.stderr.slice(-2000) }).toMatchObject({ status: 0 });
    const native = 'node_modules/better-sqlite3/build/Release';
    mkdirSync(join(app, native), { recursive: true });
    copyFileSync(join(ROOT, native, 'better_sqlite3.node'), join(app, native, 'better_sqlite3.node'));
    for (const dir of ['dist', 'console', 'deploy/docker'])
      cpSync(join(ROOT, dir), join(app, dir), { recursive: true });
    for (const dev of ['tsx', 'typescript', 'vitest', 'esbuild'])
      expect({ dev, present: existsSync(join(app, 'node_modules', dev)) }).toEqual({ dev, present: false });
    // `coatcheck` on PATH is the image's symlink to dist/cli/main.js.
    rmSync(join(box.bin, 'coatcheck'));
    symlinkSync(join(app, 'dist/cli/main.js'), join(box.bin, 'coatcheck'));
    chmodSync(join(app, 'dist/cli/main.js'), 0o755);
    const echo = spawn(process.execPath, [join(ROOT, 'deploy/compose/echo-server.mjs')], {
      env: { PORT: '0' },
    });
    try {
      const echoPort = await new Promise<number>((resolve) =>
        echo.stdout.on('data', (c: Buffer) => {
          const m = /"port":(\d+)/.exec(c.toString('utf8'));
          if (m) resolve(Number(m[1]));
        }),
      );
      const env = {
        COATCHECK_HOME: box.vol,
        COATCHECK_LISTEN_ADMIN: '127.0.0.1:0',
        COATCHECK_LISTEN_HTTP: '127.0.0.1:0',
        NODE_ENV: 'production',
      };
      const server = boxed(box, [join(app, 'deploy/docker/entrypoint.sh')], env);
      const seen = { text: '' };
      const listening = await waitForJsonLine(server, seen);
      const cc = async (args: string[], stdin?: string) => {
        const child = boxed(box!, ['coatcheck', ...args], { COATCHECK_HOME: box!.vol });
        let out = '';
        child.stdout.on('data', (c: Buffer) => {
          out += c.toString('utf8');
        });
        child.stderr.on('data', (c: Buffer) => {
          out += c.toString('utf8');
        });
        child.stdin.end(stdin ?? '');
        const code = await new Promise((r) => child.once('exit', r));
        expect({ args, code, out }).toMatchObject({ code: 0 });
        return out.trim();
      };
      await cc(['secret', 'add', 'echo-token', '--allow', 'conn:echo'], CANARY);
      await cc(['connection', 'add', 'echo', '--type', 'http', '--url', `http://127.0.0.1:${echoPort}`]);
      const agentKey = await cc(['agent', 'create', 'builder']);
      const ticket = await cc(['token', 'issue', '--secret', 'echo-token', '--to', 'builder', '--ttl', '5m']);
      const res = await request(`${listening.http}/c/echo/hello`, {
        headers: { 'proxy-authorization': `Bearer ${agentKey}`, authorization: `Bearer ${ticket}` },
      });
      const body = await res.body.text();
      expect(res.statusCode).toBe(200);
      // echo saw the real token; the agent gets a ticket where it was.
      expect(body).toMatch(/"authorization":"Bearer cct_[A-Za-z0-9]{28}"/);
      expect(body).not.toContain(CANARY);
      server.kill('SIGTERM');
      expect(await new Promise((r) => server.once('exit', r))).toBe(0);
      expect(seen.text).not.toContain(CANARY);
      for (const line of seen.text.split('\n').filter((l) => l.trim() !== ''))
        expect(() => JSON.parse(line)).not.toThrow();
    } finally {
      echo.kill('SIGTERM');
    }
  }, 300_000);
});

import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

/**
 * The README's quick start, run as written: its shell blocks are read from README.md and run
 * with bash against the build in dist/ (built here if missing; `npm ci` builds it in CI), in a
 * temporary home (COATCHECK_HOME), with a local stand-in for api.github.com. The only changes
 * to the text: the stand-in's URL for api.github.com, free ports for 7070 and 7080
 * (`--listen-admin 127.0.0.1:0` is added to `npm start`, and 127.0.0.1:7080 becomes the
 * port the gateway took). `npm ci` itself is not run here: CI runs it before `npm test`.
 */
const root = join(import.meta.dirname, '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');

function quickStartBlocks(): string[] {
  const start = readme.indexOf('## Quick start');
  const end = readme.indexOf('\n## ', start + 1);
  const section = readme.slice(start, end);
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

const FAKE_GITHUB_TOKEN = ['ghp', 'readmeWalkthroughStandIn0000000000'].join('_');

describe('README quick start, end to end', () => {
  let dir: string;
  let home: string;
  let upstream: Server;
  let upstreamUrl: string;
  const seen: Array<string | undefined> = [];
  let server: ChildProcess | null = null;

  const env = () => ({
    PATH: process.env.PATH,
    HOME: dir,
    COATCHECK_HOME: home,
    GITHUB_TOKEN: FAKE_GITHUB_TOKEN,
  });

  beforeAll(async () => {
    if (!existsSync(join(root, 'dist', 'bin', 'coatcheck.js'))) {
      execFileSync('npm', ['run', '-s', 'build'], { cwd: root, stdio: 'ignore' });
    }
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-readme-'));
    home = join(dir, '.coatcheck');
    upstream = createServer((req, res) => {
      seen.push(req.headers.authorization);
      const ok = req.headers.authorization === `Bearer ${FAKE_GITHUB_TOKEN}` && req.url === '/user';
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
      res.end(JSON.stringify(ok ? { login: 'octocat' } : { message: 'Bad credentials' }));
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    const address = upstream.address() as { port: number };
    upstreamUrl = `http://127.0.0.1:${address.port}`;
  }, 120_000);

  const stopServer = async () => {
    const child = server;
    server = null;
    if (child === null || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(-child.pid!, 'SIGTERM');
    await exited;
  };

  afterAll(async () => {
    await stopServer();
    await new Promise<void>((r) => (upstream ? upstream.close(() => r()) : r()));
    rmSync(dir, { recursive: true, force: true });
  });

  /** `npm start …` from the README, in the background; resolves once it has written server.json. */
  async function npmStart(
    command: string,
  ): Promise<{ admin: string; listening: Record<string, string>; out: string }> {
    const args = command.replace(/^npm start/, '').trim();
    const withPorts =
      `npm start ${args.startsWith('--') ? `${args} --listen-admin 127.0.0.1:0` : '-- --listen-admin 127.0.0.1:0'}`.replace(
        '127.0.0.1:7080',
        '127.0.0.1:0',
      );
    const child = spawn('bash', ['-c', `exec ${withPorts}`], { cwd: root, env: env(), detached: true });
    server = child;
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
    const started = Date.now();
    while (!out.includes('coatcheck listening')) {
      if (child.exitCode !== null) throw new Error(`${withPorts} exited: ${out}`);
      if (Date.now() - started > 30_000) throw new Error(`${withPorts} did not start: ${out}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return { ...JSON.parse(readFileSync(join(home, 'server.json'), 'utf8')), out };
  }

  /** Async: the stand-in upstream runs in this process and must keep answering meanwhile. */
  async function bash(script: string): Promise<string> {
    const file = join(dir, `step-${Date.now()}.sh`);
    writeFileSync(file, `set -euo pipefail\nshopt -s expand_aliases\n${script}`);
    try {
      return (await promisify(execFile)('bash', [file], { cwd: root, env: env(), encoding: 'utf8' })).stdout;
    } catch (error) {
      const e = error as { stdout?: string; stderr?: string };
      throw new Error(`README step failed:\n${script}\nstdout: ${e.stdout}\nstderr: ${e.stderr}`);
    }
  }

  it('every command of the quick start works as the README says', { timeout: 90_000 }, async () => {
    const blocks = quickStartBlocks();
    expect(blocks).toHaveLength(3);
    const [install, cli, http] = blocks as [string, string, string];
    const commands = (block: string) =>
      block
        .split('\n')
        .map((l) => l.replace(/\s+#.*$/, '').trim())
        .filter((l) => l !== '' && !l.startsWith('#'));
    expect(commands(install)).toEqual(['npm ci', 'npm start']);

    // npm start: creates the home and serves the admin API.
    const first = await npmStart('npm start');
    // On first run it says where the admin key is.
    expect(first.out).toContain(join(home, 'admin.key'));
    const adminKey = readFileSync(join(home, 'admin.key'), 'utf8').trim();
    const status = await fetch(new URL('/v1/status', first.admin), {
      headers: { authorization: `Bearer ${adminKey}` },
    });
    expect(status.status).toBe(200);

    // The second block, as written (a stand-in for api.github.com); it keeps its variables.
    const state = join(dir, 'state.sh');
    const cliOut = await bash(
      `${cli.replaceAll('--allow api.github.com', `--allow ${upstreamUrl}`)}\ndeclare -p AGENT_KEY TICKET CHILD > ${state}\n`,
    );
    const vars = readFileSync(state, 'utf8');
    expect(vars).toMatch(/AGENT_KEY="cca_/);
    expect(vars).toMatch(/TICKET="cct_[0-9A-Za-z]{28}"/);
    expect(vars).toMatch(/CHILD="cct_[0-9A-Za-z]{28}"/);
    expect(cliOut).toContain('token.revoke');
    expect(cliOut).not.toContain(FAKE_GITHUB_TOKEN);

    // The HTTP front-end: restart with the listener the README names, then its block.
    const sentence = readme.slice(readme.indexOf('Send an agent'), readme.indexOf('Send an agent') + 200);
    const restart = sentence.match(/`(npm start -- --listen-http [^`]+)`/)![1]!;
    await stopServer();
    const second = await npmStart(restart);
    const gateway = second.listening.http!;
    expect(gateway).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const httpOut = await bash(
      `source ${state}\nalias coatcheck="node $PWD/dist/bin/coatcheck.js"\n${http
        .replaceAll('https://api.github.com', upstreamUrl)
        .replaceAll('http://127.0.0.1:7080', gateway)
        .replace(/^curl /m, 'curl -sS --fail-with-body ')}`,
    );
    expect(JSON.parse(httpOut.slice(httpOut.indexOf('{')))).toEqual({ login: 'octocat' });
    // The upstream saw the real token; the agent's side held only the ticket.
    expect(seen).toContain(`Bearer ${FAKE_GITHUB_TOKEN}`);
    expect(httpOut).not.toContain(FAKE_GITHUB_TOKEN);

    // The console and its key, as the last paragraph says.
    const consolePage = await fetch(new URL('/console/', second.admin));
    expect(consolePage.status).toBe(200);
    const verify = await bash(`alias coatcheck="node $PWD/dist/bin/coatcheck.js"\ncoatcheck audit verify\n`);
    expect(verify).toMatch(/ok|intact|verified/i);
  });
});

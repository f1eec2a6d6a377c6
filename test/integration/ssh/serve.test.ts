import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startThrowawaySshd, type ThrowawaySshd } from './harness.js';

const run = promisify(execFile);
const main = new URL('../../../src/cli/main.ts', import.meta.url).pathname;

/** `coatcheck serve --listen-ssh` as an operator runs it: the CLI sets up, OpenSSH connects. */
describe('coatcheck serve --listen-ssh', { timeout: 120_000 }, () => {
  let dir: string;
  let sshd: ThrowawaySshd;
  let server: ChildProcess;
  let stderr = '';
  let listening: { ssh: string; sshHostKey: string };

  const cli = async (args: string[], input?: string) => {
    const child = run(process.execPath, ['--import', 'tsx', main, '--dir', dir, ...args], {
      env: { ...process.env, COATCHECK_HOME: '' },
    });
    child.child.stdin!.end(input ?? '');
    return (await child).stdout;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-serve-ssh-'));
    sshd = await startThrowawaySshd();
    await cli(['init']);
    await cli(['secret', 'add', 'box-key', '--allow', 'conn:box'], sshd.clientKey);
    await cli([
      'connection',
      'add',
      'box',
      '--type',
      'ssh',
      '--url',
      `ssh://root@127.0.0.1:${sshd.port}`,
      '--host-key',
      `[127.0.0.1]:${sshd.port} ${sshd.hostKey}`,
    ]);
    server = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        main,
        '--dir',
        dir,
        '--json',
        'serve',
        '--listen-admin',
        '127.0.0.1:0',
        '--listen-ssh',
        '127.0.0.1:0',
      ],
      { env: { ...process.env, COATCHECK_HOME: '', COATCHECK_LOG_LEVEL: 'debug' } },
    );
    server.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    // The first stdout line: what serve listens on, or (--json) the error that stopped it.
    listening = await new Promise((resolve, reject) => {
      let out = '';
      server.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const end = out.indexOf('\n');
        if (end === -1) return;
        const line = JSON.parse(out.slice(0, end)) as { ssh?: string; error?: unknown };
        if (line.ssh === undefined) reject(new Error(`serve did not start: ${out} ${stderr}`));
        else resolve(line as { ssh: string; sshHostKey: string });
      });
      server.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${out} ${stderr}`)));
    });
  }, 120_000);

  afterAll(async () => {
    if (server?.exitCode === null && server.signalCode === null) {
      server.kill('SIGTERM');
      await new Promise((resolve) => server.once('exit', resolve));
    }
    sshd?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('an agent runs a command with a ticket; the host key it learns is the one serve printed', async () => {
    expect(listening.ssh).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(listening.sshHostKey).toMatch(/^SHA256:/);
    await cli(['agent', 'create', 'builder']);
    const ticket = (
      await cli(['token', 'issue', '--secret', 'box-key', '--to', 'builder', '--dest', 'conn:box'])
    ).trim();
    const askpass = join(dir, 'askpass.sh');
    writeFileSync(askpass, '#!/bin/sh\nprintf "%s\\n" "$T"\n');
    chmodSync(askpass, 0o755);
    const knownHosts = join(dir, 'known_hosts');
    const port = listening.ssh.split(':')[1]!;
    const { stdout } = await run(
      'ssh',
      [
        '-F',
        '/dev/null',
        '-o',
        'StrictHostKeyChecking=accept-new',
        '-o',
        `UserKnownHostsFile=${knownHosts}`,
        '-o',
        'PubkeyAuthentication=no',
        '-p',
        port,
        '-l',
        'builder%box',
        '127.0.0.1',
        'echo',
        'through-serve',
      ],
      {
        env: {
          PATH: process.env.PATH,
          HOME: dir,
          SSH_ASKPASS: askpass,
          SSH_ASKPASS_REQUIRE: 'force',
          T: ticket,
        },
      },
    );
    expect(stdout).toBe('through-serve\n');
    const fingerprint = execFileSync('ssh-keygen', ['-l', '-f', knownHosts]).toString();
    expect(fingerprint).toContain(listening.sshHostKey);
  });

  it('stops on SIGTERM and never logged the key', async () => {
    server.kill('SIGTERM');
    expect(await new Promise((resolve) => server.once('exit', resolve))).toBe(0);
    expect(stderr).not.toContain(sshd.clientKey.split('\n')[1]!);
    expect(stderr).not.toMatch(/cc[ta]_[0-9A-Za-z]{28}/);
  });
});

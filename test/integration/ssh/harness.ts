import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { agentRef } from '../../../src/core/principal.js';
import { type SshFrontend, type SshOptions, startSshFrontend } from '../../../src/frontends/ssh/start.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { sessionRecordings } from '../../../src/server/recordings.js';

export const SSHD = '/usr/sbin/sshd';

export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface ThrowawaySshd {
  readonly dir: string;
  readonly port: number;
  /** `ssh-ed25519 AAAA…` of the server. */
  readonly hostKey: string;
  /** The private key (OpenSSH format) root logs in with: the canary credential. */
  readonly clientKey: string;
  /** The user with a password, and the password (another canary). */
  readonly passwordUser: string;
  readonly password: string;
  /** A file the server can print, holding `contents`. */
  file(name: string, contents: string | Buffer): string;
  /** What sshd wrote to stderr (its log; `LogLevel` as started with). */
  log(): string;
  /** Restart on the same port with a new host key (a server whose key changed, or an impostor). */
  rekey(): Promise<void>;
  stop(): void;
}

/**
 * A throwaway OpenSSH server on a free loopback port, with its own config, host key,
 * root logging in by a key pair (authorized_keys in a temp file) and a throwaway user
 * logging in by password. Needs root (the tests run as root) and Debian's openssh-server.
 */
/** Whether something listens on `address:port` inside network namespace `ns` (bash's /dev/tcp). */
function listensIn(ns: string, address: string, port: number): boolean {
  try {
    execFileSync('ip', ['netns', 'exec', ns, 'bash', '-c', `exec 3<>/dev/tcp/${address}/${port}`], {
      stdio: 'ignore',
    });
    return true;
  } catch {
    return false;
  }
}

async function waitInNamespace(ns: string, address: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!listensIn(ns, address, port)) {
    if (Date.now() > deadline) throw new Error(`nothing listens on ${address}:${port} in ${ns}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startThrowawaySshd(
  options: {
    /** Run sshd inside this network namespace, listening on `address:port` (tests across a relay). */
    netns?: { name: string; address: string; port: number };
    logLevel?: 'ERROR' | 'INFO';
  } = {},
): Promise<ThrowawaySshd> {
  let logText = '';
  const collect = (child: ChildProcess) =>
    child.stderr?.on('data', (chunk: Buffer) => {
      logText += chunk.toString('utf8');
    });
  const netns = options.netns;
  const spawnSshd = (config: string) =>
    netns === undefined
      ? spawn(SSHD, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] })
      : spawn('ip', ['netns', 'exec', netns.name, SSHD, '-D', '-e', '-f', config], {
          stdio: ['ignore', 'ignore', 'pipe'],
        });
  const ready = (port: number) =>
    netns === undefined ? waitForPort(port, 5000) : waitInNamespace(netns.name, netns.address, port, 5000);
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-sshd-'));
  chmodSync(dir, 0o755);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host'), '-C', 'host']);
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'client'), '-C', 'client']);
  writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client.pub')));
  chmodSync(join(dir, 'authorized_keys'), 0o600);
  const passwordUser = `ccpw${randomBytes(3).toString('hex')}`;
  const password = `Pw-${randomBytes(12).toString('hex')}-Canary`;
  execFileSync('useradd', ['-m', '-s', '/bin/sh', passwordUser]);
  execFileSync('chpasswd', { input: `${passwordUser}:${password}\n` });
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const config = join(dir, 'sshd_config');
  let child: ChildProcess | null = null;
  let port = 0;
  for (let attempt = 0; attempt < 5 && child === null; attempt++) {
    port = netns?.port ?? (await freePort());
    writeFileSync(
      config,
      [
        `Port ${port}`,
        `ListenAddress ${netns?.address ?? '127.0.0.1'}`,
        `HostKey ${join(dir, 'host')}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        'PermitRootLogin yes',
        'PasswordAuthentication yes',
        'KbdInteractiveAuthentication no',
        'UsePAM no',
        'StrictModes no',
        'AllowTcpForwarding yes',
        'AllowAgentForwarding yes',
        'X11Forwarding no',
        'PrintMotd no',
        'Subsystem sftp internal-sftp',
        'MaxStartups 100',
        'MaxSessions 100',
        `LogLevel ${options.logLevel ?? 'ERROR'}`,
        '',
      ].join('\n'),
    );
    const started = spawnSshd(config);
    collect(started);
    try {
      await ready(port);
      child = started;
    } catch {
      started.kill();
    }
  }
  if (child === null) throw new Error('sshd did not start');
  const readHostKey = (name: string) =>
    readFileSync(join(dir, `${name}.pub`), 'utf8')
      .trim()
      .split(' ')
      .slice(0, 2)
      .join(' ');
  let running: ChildProcess = child;
  let generation = 0;
  return {
    dir,
    port,
    hostKey: readHostKey('host'),
    log: () => logText,
    async rekey() {
      generation++;
      const name = `host${generation}`;
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, name), '-C', name]);
      const exited = new Promise((r) => running.once('exit', r));
      running.kill();
      await exited;
      writeFileSync(
        config,
        readFileSync(config, 'utf8').replace(/^HostKey .*$/m, `HostKey ${join(dir, name)}`),
      );
      running = spawnSshd(config);
      collect(running);
      await ready(port);
      (this as { hostKey: string }).hostKey = readHostKey(name);
    },
    clientKey: readFileSync(join(dir, 'client'), 'utf8'),
    passwordUser,
    password,
    file(name, contents) {
      const path = join(dir, name);
      writeFileSync(path, contents);
      chmodSync(path, 0o644);
      return path;
    },
    stop() {
      running.kill();
      try {
        execFileSync('userdel', ['-r', passwordUser], { stdio: 'ignore' });
      } catch {
        // already gone
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface SshGateway {
  readonly dir: string;
  readonly ctx: Context;
  readonly frontend: SshFrontend;
  readonly port: number;
  logs(): string;
  settled(): Promise<void>;
  createAgent(name: string): Promise<{ key: string; ref: string }>;
  addSecret(name: string, value: string, allow: string[]): Promise<void>;
  issue(secret: string, principal: string, destinations?: string[]): Promise<string>;
  addConnection(
    name: string,
    url: string,
    hostKey: string,
    credential?: string,
    recording?: 'off' | 'metadata' | 'full',
  ): Promise<void>;
  /** A known_hosts file naming the gateway's host key. */
  readonly knownHosts: string;
  /** OpenSSH `ssh` through the gateway, the ticket given by SSH_ASKPASS. */
  ssh(
    user: string,
    password: string,
    args: string[],
    options?: { input?: string; extra?: string[]; timeoutMs?: number },
  ): Promise<{ stdout: string; stderr: string; code: number }>;
  /** OpenSSH `ssh` through the gateway logging in with the private key at `keyFile` only. */
  sshKey(
    user: string,
    keyFile: string,
    args: string[],
    options?: { input?: string; extra?: string[]; timeoutMs?: number },
  ): Promise<{ stdout: string; stderr: string; code: number }>;
  /** Options for ssh/scp/sftp/git through the gateway (with an askpass for `password`). */
  clientEnv(password: string): NodeJS.ProcessEnv;
  clientOptions(): string[];
  close(): Promise<void>;
}

export async function startSshGateway(
  options: {
    policy?: string;
    holdTimeout?: string;
    sshOptions?: Partial<SshOptions>;
    /** Wire full session recordings (connections still choose their mode). */
    recordings?: boolean;
  } = {},
): Promise<SshGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-sshfe-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
  let config = 'log:\n  level: debug\n';
  if (options.policy !== undefined) {
    const policyFile = join(dir, 'ssh.cedar');
    writeFileSync(policyFile, options.policy);
    config += `policy:\n  path: ${policyFile}\napprovals:\n  holdTimeout: ${options.holdTimeout ?? '1s'}\n`;
  }
  writeFileSync(home.configFile, config, { mode: 0o600 });
  const ctx = await openContext(home, { env: {} });
  let logText = '';
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk: Buffer, _e, cb) {
        logText += chunk.toString('utf8');
        cb();
      },
    }),
  });
  const recordings = options.recordings === true ? sessionRecordings(ctx) : undefined;
  const frontend = await startSshFrontend(ctx, { host: '127.0.0.1', port: 0 }, log, {
    ...(options.sshOptions === undefined ? {} : { options: options.sshOptions }),
    ...(recordings === undefined ? {} : { recordings }),
  });
  const knownHosts = join(dir, 'known_hosts');
  writeFileSync(knownHosts, `[127.0.0.1]:${frontend.port} ${frontend.hostKey.public}\n`);
  const askpass = join(dir, 'askpass.sh');
  writeFileSync(askpass, '#!/bin/sh\nprintf "%s\\n" "$CC_TEST_PASSWORD"\n');
  chmodSync(askpass, 0o755);
  const clientOptions = () => [
    '-F',
    '/dev/null',
    '-o',
    `UserKnownHostsFile=${knownHosts}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'PubkeyAuthentication=no',
    '-o',
    'PreferredAuthentications=password,keyboard-interactive',
    '-o',
    'NumberOfPasswordPrompts=1',
    '-o',
    'ConnectTimeout=10',
  ];
  const clientEnv = (password: string): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: dir,
    SSH_ASKPASS: askpass,
    SSH_ASKPASS_REQUIRE: 'force',
    CC_TEST_PASSWORD: password,
  });
  return {
    dir,
    ctx,
    frontend,
    port: frontend.port,
    knownHosts,
    logs: () => logText,
    async settled() {
      for (let i = 0; i < 200 && frontend.live.size > 0; i++) await new Promise((r) => setTimeout(r, 25));
      await new Promise((r) => setTimeout(r, 25));
      await ctx.audit.flush();
      await frontend.recorder.flush();
      await recordings?.flush();
    },
    async createAgent(name) {
      const { key, agent } = await ctx.agents.create({ name }, 'admin:test');
      return { key, ref: agentRef(agent.id) };
    },
    async addSecret(name, value, allow) {
      await ctx.vault.addSecret({ name, value: Buffer.from(value), allow }, 'admin:test');
    },
    async issue(secret, principal, destinations) {
      return (await ctx.vault.issueTicket({ secret, principal, destinations }, 'admin:test')).ticket;
    },
    async addConnection(name, url, hostKey, credential, recording) {
      await ctx.connections.add(
        {
          name,
          type: 'ssh',
          url,
          rules: { hostKey, ...(recording === undefined ? {} : { recording }) },
          ...(credential === undefined ? {} : { credential }),
        },
        'admin:test',
      );
    },
    clientEnv,
    clientOptions,
    sshKey(user, keyFile, args, opts = {}) {
      // ssh keeps the first value given for an option: these come before everything else.
      return runSsh(
        [
          '-F',
          '/dev/null',
          '-o',
          `UserKnownHostsFile=${knownHosts}`,
          '-o',
          'StrictHostKeyChecking=yes',
          '-o',
          'IdentitiesOnly=yes',
          '-o',
          'IdentityAgent=none',
          '-i',
          keyFile,
          '-o',
          'PreferredAuthentications=publickey',
          '-o',
          'BatchMode=yes',
          '-o',
          'ConnectTimeout=10',
          ...(opts.extra ?? []),
          '-p',
          String(frontend.port),
          '-l',
          user,
          '127.0.0.1',
          ...args,
        ],
        { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir },
        opts,
      );
    },
    ssh(user, password, args, opts = {}) {
      return new Promise((resolve) => {
        const child = execFile(
          'ssh',
          [
            ...clientOptions(),
            ...(opts.extra ?? []),
            '-p',
            String(frontend.port),
            '-l',
            user,
            '127.0.0.1',
            ...args,
          ],
          { env: clientEnv(password), maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 90_000 },
          (error, stdout, stderr) => {
            resolve({
              stdout,
              stderr,
              code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
            });
          },
        );
        // A child that exits before reading stdin gives EPIPE; its exit code and output are what the test checks.
        child.stdin?.on('error', () => undefined);
        if (opts.input !== undefined) child.stdin?.end(opts.input);
        else child.stdin?.end();
      });
    },
    async close() {
      await frontend.close();
      await ctx.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function runSsh(
  args: string[],
  env: NodeJS.ProcessEnv,
  opts: { input?: string; timeoutMs?: number },
): Promise<{ stdout: string; stderr: string; code: number }> {
  return new Promise((resolve) => {
    const child = execFile(
      'ssh',
      args,
      { env, maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 90_000 },
      (error, stdout, stderr) => {
        resolve({
          stdout,
          stderr,
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
        });
      },
    );
    child.stdin?.on('error', () => undefined);
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Everything the gateway wrote or kept that a canary must never appear in: logs, audit, recordings. */
export async function everyOutput(gw: SshGateway): Promise<string> {
  await gw.settled();
  const audit = await gw.ctx.store.readAudit(0, 1_000_000);
  const sessions = await gw.ctx.store.listSessions({ limit: 10_000 });
  return [gw.logs(), JSON.stringify(audit), JSON.stringify(sessions)].join('\n');
}

export function sshdAvailable(): boolean {
  return existsSync(SSHD);
}

import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createRng } from '../../../src/detect/synth.js';
import { type SshGateway, startSshGateway, startThrowawaySshd, type ThrowawaySshd } from './harness.js';

/**
 * Transfers larger than the SSH channel windows (2 MiB each way), through the gateway:
 * byte for byte, with the receiver slower than the sender (the gateway must stop reading
 * the upstream while the client's side is full, and start again), inspected (exec) and
 * not (sftp, port forwards).
 */
let sshd: ThrowawaySshd;
let gw: SshGateway;
let ticket: string;
let web: Server;
let webPort: number;
const FORWARDED = randomBytes(12 * 1024 * 1024);
const SECRET = `bulk-canary-${randomBytes(12).toString('hex')}`;

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway();
  const agent = (await gw.createAgent('mover')).ref;
  await gw.addSecret('bulk-key', sshd.clientKey, ['conn:bulk']);
  await gw.addSecret('bulk-canary', SECRET, ['conn:elsewhere']);
  await gw.addConnection('bulk', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
  ticket = await gw.issue('bulk-key', agent, ['conn:bulk']);
  web = createServer((_req, res) => res.end(FORWARDED));
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  webPort = (web.address() as { port: number }).port;
}, 60_000);

afterAll(async () => {
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
  await gw?.close();
  sshd?.stop();
});

async function login(): Promise<ssh2.Client> {
  const client = new ssh2.Client();
  await new Promise<void>((resolve, reject) => {
    client.once('ready', () => resolve());
    client.once('error', reject);
    client.connect({
      host: '127.0.0.1',
      port: gw.port,
      username: 'mover%bulk',
      password: ticket,
      readyTimeout: 60_000,
    });
  });
  return client;
}

/** Everything `stream` carries, read only after a pause once the first bytes arrived. */
function readSlowly(stream: NodeJS.ReadableStream & { pause(): void; resume(): void }): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let paused = false;
    stream.on('data', (d: Buffer) => {
      parts.push(d);
      if (!paused) {
        paused = true;
        stream.pause();
        setTimeout(() => stream.resume(), 1500);
      }
    });
    stream.on('end', () => resolve(Buffer.concat(parts)));
    stream.on('error', reject);
  });
}

function run(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile('scp', args, { env: gw.clientEnv(ticket), timeout: 90_000 }, (error, _stdout, stderr) =>
      resolve({ code: error === null ? 0 : 1, stderr }),
    );
  });
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('ssh: bulk transfers through the gateway', { timeout: 120_000 }, () => {
  it('a port forward carries 12 MiB to a slow reader whole and in order', async () => {
    const client = await login();
    try {
      const body = await new Promise<Buffer>((resolve, reject) => {
        client.forwardOut('127.0.0.1', 0, '127.0.0.1', webPort, (error, stream) => {
          if (error) return reject(error);
          stream.end('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
          readSlowly(stream).then(resolve, reject);
        });
      });
      const at = body.indexOf('\r\n\r\n');
      expect(at).toBeGreaterThan(0);
      const payload = body.subarray(at + 4);
      expect(payload.length).toBe(FORWARDED.length);
      expect(sha(payload)).toBe(sha(FORWARDED));
    } finally {
      client.end();
    }
  });

  it('scp (sftp) uploads and downloads 8 MiB byte for byte', async () => {
    const data = randomBytes(8 * 1024 * 1024);
    const local = join(gw.dir, 'up.bin');
    writeFileSync(local, data);
    const remote = join(sshd.dir, 'up.bin');
    const back = join(gw.dir, 'back.bin');
    const target = `mover%bulk@127.0.0.1:${remote}`;
    const up = await run(['-q', ...gw.clientOptions(), '-P', String(gw.port), local, target]);
    expect(up).toEqual({ code: 0, stderr: '' });
    expect(sha(readFileSync(remote))).toBe(sha(data));
    const down = await run(['-q', ...gw.clientOptions(), '-P', String(gw.port), target, back]);
    expect(down).toEqual({ code: 0, stderr: '' });
    expect(sha(readFileSync(back))).toBe(sha(data));
  });

  it('inspected output (exec) of 6 MiB reaches a slow reader whole, the secret in it as a ticket', async () => {
    const head = randomBytes(3 * 1024 * 1024);
    const tail = randomBytes(3 * 1024 * 1024);
    const path = sshd.file('big-leak.bin', Buffer.concat([head, Buffer.from(SECRET), tail]));
    const client = await login();
    try {
      const out = await new Promise<Buffer>((resolve, reject) => {
        client.exec(`cat ${path}`, (error, stream) => {
          if (error) return reject(error);
          stream.stderr.resume();
          readSlowly(stream).then(resolve, reject);
        });
      });
      expect(out.includes(SECRET)).toBe(false);
      expect(sha(out.subarray(0, head.length))).toBe(sha(head));
      expect(sha(out.subarray(out.length - tail.length))).toBe(sha(tail));
      expect(out.subarray(head.length, out.length - tail.length).toString('latin1')).toMatch(
        /^cct_[0-9A-Za-z]{28}$/,
      );
    } finally {
      client.end();
    }
  });
  it('binary output full of secret keywords (scp -O, inspected) arrives byte for byte', async () => {
    // Random bytes after `pwd:` or `password=` once looked like a password to the detection
    // rules: the copy came back with a ticket in it, and scp -O hung waiting for its status byte.
    const rng = createRng('ssh-binary-keywords');
    const data = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(rng.int(2 ** 32), i);
    const keys = ['pwd: ', 'password=', 'passwd:', 'secret=', 'api_key=', 'token: '];
    for (let at = 1000, k = 0; at < data.length - 64; at += 16 * 1024, k++)
      data.write(keys[k % keys.length]!, at, 'latin1');
    const remote = sshd.file('keywords.bin', data);
    const back = join(gw.dir, 'keywords.bin');
    const down = await run([
      '-q',
      '-O',
      ...gw.clientOptions(),
      '-P',
      String(gw.port),
      `mover%bulk@127.0.0.1:${remote}`,
      back,
    ]);
    expect(down).toEqual({ code: 0, stderr: '' });
    expect(sha(readFileSync(back))).toBe(sha(data));
  });
});

import { createServer, type Server } from 'node:http';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type SshGateway, startSshGateway, startThrowawaySshd, type ThrowawaySshd } from './harness.js';

/**
 * One SSH connection that runs many commands one after another (a ControlMaster, a
 * deploy script's loop): each closed channel leaves the connection's channel count, so
 * the limit on channels open at once never refuses the next command.
 */
let sshd: ThrowawaySshd;
let gw: SshGateway;
let ticket: string;
let web: Server;
let webPort: number;

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway();
  const agent = (await gw.createAgent('looper')).ref;
  await gw.addSecret('loop-key', sshd.clientKey, ['conn:loop']);
  await gw.addConnection('loop', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
  ticket = await gw.issue('loop-key', agent, ['conn:loop']);
  web = createServer((_req, res) => res.end('pong'));
  await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
  webPort = (web.address() as { port: number }).port;
}, 60_000);

afterAll(async () => {
  await new Promise<void>((r) => (web ? web.close(() => r()) : r()));
  await gw?.close();
  sshd?.stop();
});

function exec(client: ssh2.Client, command: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    client.exec(command, (error, stream) => {
      if (error) return reject(error);
      let stderr = '';
      stream.on('close', (code: number) => resolve({ code, stderr }));
      stream.resume();
      stream.stderr.on('data', (d: Buffer) => {
        stderr += d.toString('utf8');
      });
    });
  });
}

async function login(): Promise<ssh2.Client> {
  const client = new ssh2.Client();
  await new Promise<void>((resolve, reject) => {
    client.once('ready', () => resolve());
    client.once('error', reject);
    client.connect({
      host: '127.0.0.1',
      port: gw.port,
      username: 'looper%loop',
      password: ticket,
      readyTimeout: 60_000,
    });
  });
  return client;
}

/** One HTTP request through a forwarded channel; resolves with the answer's text. */
function forwarded(client: ssh2.Client): Promise<string> {
  return new Promise((resolve, reject) => {
    client.forwardOut('127.0.0.1', 0, '127.0.0.1', webPort, (error, stream) => {
      if (error) return reject(error);
      let text = '';
      stream.on('data', (d: Buffer) => {
        text += d.toString('latin1');
      });
      stream.on('close', () => resolve(text));
      stream.end('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    });
  });
}

describe('ssh: many channels one after another on one connection', { timeout: 120_000 }, () => {
  it('runs more sequential commands than channels may be open at once', async () => {
    const client = await login();
    try {
      for (let i = 0; i < 40; i++) {
        const r = await exec(client, 'true');
        expect(r, `command ${i}`).toEqual({ code: 0, stderr: '' });
      }
    } finally {
      client.end();
    }
  });

  it('runs more sequential port forwards than channels may be open at once', async () => {
    const client = await login();
    try {
      for (let i = 0; i < 40; i++) expect(await forwarded(client), `forward ${i}`).toMatch(/pong$/);
    } finally {
      client.end();
    }
  });
});

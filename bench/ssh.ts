// SSH front-end overhead, in one run against the same throwaway sshd: exec round trips per
// second (one SSH connection, BENCH_EXECS sequential `true` commands, each a new session
// channel: open, exec, exit status, close) directly and through coatcheck, then OpenSSH scp
// throughput directly and through coatcheck, a BENCH_MB MiB file each way, handshake
// included:
//
// - upload and download with scp's default protocol (sftp since OpenSSH 9.0): the sftp
//   subsystem, which the gateway carries as is (docs/frontends/ssh.md);
// - download with the legacy protocol (`scp -O`: an exec of `scp -f PATH`), whose output
//   goes through the output inspection like any command's (every byte scanned for known
//   secrets and detector findings): the inspected bulk path.
//
// Each part runs BENCH_REPEATS times (default 3) alternating the order; the table prints
// the median ratio and the goal (issue 17: >= 0.5 of direct round trips, >= 0.7 of direct
// bulk throughput), and the load average before and after (other work on the machine moves
// the ratios).
//
// Run: npm run bench:ssh   (BENCH_EXECS=40 BENCH_MB=64 BENCH_REPEATS=3; the throwaway sshd
// itself takes ~0.6 s per session on a 2-core VM, so 200 execs made a run last ~15 minutes). Needs root and
// Debian's openssh-server (/usr/sbin/sshd); not run in CI. Ports are chosen free at run time.
//
// The gateway runs in this process (one Node thread; per-command Cedar decision, audit of
// every command, output inspection) with a SQLite store in a temp dir; sshd and the
// clients are their own processes on the same machine: the ratio is the point.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { startSshGateway, startThrowawaySshd } from '../test/integration/ssh/harness.js';

const EXECS = Number(process.env.BENCH_EXECS ?? 40);
const MB = Number(process.env.BENCH_MB ?? 64);
const REPEATS = Math.max(1, Number(process.env.BENCH_REPEATS ?? 3));
// BENCH_ONLY=exec,upload,download,inspected: run only these parts (for a profile of one).
const ONLY = new Set((process.env.BENCH_ONLY ?? 'exec,upload,download,inspected').split(','));

function connect(config: ssh2.ConnectConfig): Promise<ssh2.Client> {
  return new Promise((resolve, reject) => {
    const c = new ssh2.Client();
    c.once('ready', () => resolve(c));
    c.once('error', reject);
    c.connect({ ...config, readyTimeout: 60_000 });
  });
}

function execTrue(c: ssh2.Client): Promise<void> {
  return new Promise((resolve, reject) => {
    c.exec('true', (error, stream) => {
      if (error) return reject(error);
      let stderr = '';
      stream.on('close', (code: number) =>
        code === 0 ? resolve() : reject(new Error(`exit ${code}: ${stderr.slice(0, 500)}`)),
      );
      stream.resume();
      stream.stderr.on('data', (d: Buffer) => {
        stderr += d.toString('utf8');
      });
    });
  });
}

async function execRate(config: ssh2.ConnectConfig): Promise<number> {
  const c = await connect(config);
  try {
    await execTrue(c); // warm: first decision, detector, upstream
    const started = process.hrtime.bigint();
    for (let i = 0; i < EXECS; i++) await execTrue(c);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return EXECS / seconds;
  } finally {
    c.end();
  }
}

function scp(args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    execFile('scp', args, { env, timeout: 600_000 }, (error, _stdout, stderr) => {
      if (error) reject(new Error(`scp failed: ${stderr}`));
      else resolve(MB / (Number(process.hrtime.bigint() - started) / 1e9));
    });
  });
}

function sshCryptoBinding(): boolean {
  const require = createRequire(import.meta.url);
  return (require('ssh2/lib/protocol/crypto.js') as { bindingAvailable: boolean }).bindingAvailable;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

async function main(): Promise<void> {
  const sshd = await startThrowawaySshd();
  // A loaded machine may take longer than the default 10 s to log in upstream: the bench
  // measures throughput, not the timeout.
  const gw = await startSshGateway({ sshOptions: { upstreamTimeoutMs: 120_000 } });
  try {
    const agent = (await gw.createAgent('bench')).ref;
    await gw.addSecret('box-key', sshd.clientKey, ['conn:box']);
    await gw.addConnection('box', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey);
    const ticket = await gw.issue('box-key', agent, ['conn:box']);
    const pinned = Buffer.from(sshd.hostKey.split(' ')[1]!, 'base64');
    const direct: ssh2.ConnectConfig = {
      host: '127.0.0.1',
      port: sshd.port,
      username: 'root',
      privateKey: sshd.clientKey,
      hostVerifier: (key: Buffer) => key.equals(pinned),
    };
    const gatewayKey = Buffer.from(gw.frontend.hostKey.public.split(' ')[1]!, 'base64');
    const through: ssh2.ConnectConfig = {
      host: '127.0.0.1',
      port: gw.port,
      username: 'bench%box',
      password: ticket,
      hostVerifier: (key: Buffer) => key.equals(gatewayKey),
    };
    const file = join(gw.dir, 'bulk.bin');
    const data = randomBytes(MB * 1024 * 1024);
    writeFileSync(file, data);
    const remoteFile = sshd.file('bulk.bin', data);
    const keyFile = join(sshd.dir, 'client');
    const directOptions = [
      '-q',
      '-F',
      '/dev/null',
      '-i',
      keyFile,
      '-o',
      'StrictHostKeyChecking=no',
      '-o',
      `UserKnownHostsFile=${join(gw.dir, 'direct_known_hosts')}`,
      '-P',
      String(sshd.port),
    ];
    const gatewayOptions = ['-q', ...gw.clientOptions(), '-P', String(gw.port)];
    const directEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: gw.dir };
    const gatewayEnv = gw.clientEnv(ticket);
    const at = (which: 'direct' | 'gateway') => (which === 'direct' ? 'root' : 'bench%box');
    const transfers = [
      {
        part: 'upload',
        name: `scp ${MB} MiB upload (sftp, carried as is), MB/s`,
        args: (which: 'direct' | 'gateway') => [
          file,
          `${at(which)}@127.0.0.1:${join(sshd.dir, `${which}.up.bin`)}`,
        ],
        check: (which: 'direct' | 'gateway') => join(sshd.dir, `${which}.up.bin`),
      },
      {
        part: 'download',
        name: `scp ${MB} MiB download (sftp, carried as is), MB/s`,
        args: (which: 'direct' | 'gateway') => [
          `${at(which)}@127.0.0.1:${remoteFile}`,
          join(gw.dir, `${which}.down.bin`),
        ],
        check: (which: 'direct' | 'gateway') => join(gw.dir, `${which}.down.bin`),
      },
      {
        part: 'inspected',
        name: `scp -O ${MB} MiB download (exec, inspected), MB/s`,
        args: (which: 'direct' | 'gateway') => [
          '-O',
          `${at(which)}@127.0.0.1:${remoteFile}`,
          join(gw.dir, `${which}.down-o.bin`),
        ],
        check: (which: 'direct' | 'gateway') => join(gw.dir, `${which}.down-o.bin`),
      },
    ].filter((t) => ONLY.has(t.part));
    const rates: { direct: number[]; gateway: number[] } = { direct: [], gateway: [] };
    const mbs = transfers.map(() => ({ direct: [] as number[], gateway: [] as number[] }));
    const loadBefore = loadavg();
    for (let r = 0; r < REPEATS; r++) {
      const order = r % 2 === 0 ? (['direct', 'gateway'] as const) : (['gateway', 'direct'] as const);
      for (const which of ONLY.has('exec') ? order : []) {
        rates[which].push(await execRate(which === 'direct' ? direct : through));
        console.log(`repeat ${r + 1}: ${which} exec ${rates[which].at(-1)!.toFixed(1)}/s`);
      }
      for (const [i, transfer] of transfers.entries()) {
        for (const which of order) {
          const args = [...(which === 'direct' ? directOptions : gatewayOptions), ...transfer.args(which)];
          mbs[i]![which].push(await scp(args, which === 'direct' ? directEnv : gatewayEnv));
          // Random bytes: the inspection changes nothing in them, so the copy must be exact.
          if (!readFileSync(transfer.check(which)).equals(data))
            throw new Error(`${transfer.name}: ${which} copy differs`);
          console.log(`repeat ${r + 1}: ${which} ${transfer.name} ${mbs[i]![which].at(-1)!.toFixed(1)}`);
        }
      }
    }
    const loadAfter = loadavg();
    const rows = [
      ...(ONLY.has('exec')
        ? [['exec round trips/s', median(rates.direct), median(rates.gateway), 0.5] as const]
        : []),
      ...transfers.map((t, i) => [t.name, median(mbs[i]!.direct), median(mbs[i]!.gateway), 0.7] as const),
    ] as const;
    const load = (l: number[]) => l.map((v) => v.toFixed(2)).join(' ');
    console.log(
      `repeats ${REPEATS}, ${EXECS} execs per run, median of each; load average ${load(loadBefore)} before, ${load(loadAfter)} after`,
    );
    // ssh2 encrypts in JavaScript unless its optional native binding was built at install
    // (package.json allowScripts): the gateway's two SSH legs then cost several times more.
    console.log(
      `ssh2 native crypto binding: ${sshCryptoBinding() ? 'loaded' : 'NOT built (JavaScript ciphers)'}`,
    );
    console.log('| measure | direct | coatcheck | ratio | goal |');
    console.log('|---|---|---|---|---|');
    for (const [name, d, g, goal] of rows) {
      const ratio = g / d;
      console.log(
        `| ${name} | ${d.toFixed(1)} | ${g.toFixed(1)} | ${ratio.toFixed(2)} | >= ${goal} ${ratio >= goal ? 'met' : 'NOT met'} |`,
      );
    }
  } finally {
    await gw.close();
    sshd.stop();
  }
}

await main();

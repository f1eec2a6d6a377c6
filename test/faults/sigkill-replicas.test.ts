import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../../src/config/home.js';
import { initHome, openContext } from '../../src/server/context.js';

// Issue 20 (SIGKILL at random points) with per-replica audit chains (ADR 0015): two replica
// processes exchange and issue on one PostgreSQL; each round kills them at random moments
// under load. After every round `audit verify` passes and every exchange or issue a replica
// acknowledged has its record.

const ADMIN_URL = process.env.COATCHECK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const CHILD = new URL('./kill-replica.ts', import.meta.url).pathname;
const ROUNDS = 4;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const databases: string[] = [];

async function admin(sql: string): Promise<void> {
  const client = new Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

afterAll(async () => {
  for (const name of databases) await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
});

interface Replica {
  readonly child: ChildProcess;
  readonly acked: number[];
  readonly issued: string[];
  readonly ready: Promise<void>;
  readonly exited: Promise<unknown>;
}

function startReplica(home: string, env: NodeJS.ProcessEnv): Replica {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, home], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const acked: number[] = [];
  const issued: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  let buffer = '';
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('utf8');
      const lines = buffer.split('\n');
      buffer = lines.pop()!;
      for (const line of lines) {
        if (line === 'ready') resolve();
        else if (line.startsWith('ack ')) acked.push(Number(line.slice(4)));
        else if (line.startsWith('issue ')) issued.push(line.slice(6));
      }
    });
    child.once('exit', (code, signal) => {
      if (signal !== 'SIGKILL') reject(new Error(`replica exited (${code}): ${stderr.slice(0, 800)}`));
    });
  });
  return { child, acked, issued, ready, exited };
}

describe('SIGKILL at random points, two replicas on PostgreSQL', () => {
  it(`${ROUNDS} rounds: audit verify passes and no acknowledged exchange or issue lacks its record`, async () => {
    const name = `coatcheck_kill_${randomBytes(6).toString('hex')}`;
    await admin(`CREATE DATABASE ${name}`);
    databases.push(name);
    const url = new URL(ADMIN_URL);
    url.pathname = `/${name}`;
    const env = {
      COATCHECK_DATABASE_URL: url.toString(),
      COATCHECK_MASTER_KEY: randomBytes(32).toString('base64'),
    };
    const dir = mkdtempSync(join(tmpdir(), 'coatcheck-kill-'));
    try {
      const first = join(dir, 'a');
      const home = resolveHome(first, env);
      await initHome(home, { env });
      const setup = await openContext(home, { env });
      const { key } = await setup.agents.create({ name: 'kill-agent' }, 'admin:test');
      const principal = await setup.agents.authenticate(key);
      await setup.vault.addSecret(
        { name: 'kill-secret', value: Buffer.from('kill-canary-9Tq'), allow: ['svc'] },
        'admin:test',
      );
      const { ticket } = await setup.vault.issueTicket(
        { secret: 'kill-secret', principal: principal.ref },
        'admin:test',
      );
      await setup.close();
      execFileSync('cp', ['-a', first, join(dir, 'b')]);
      const childEnv = { ...env, KILL_AGENT_KEY: key, KILL_TICKET: ticket };

      let exchanges = 0;
      for (let round = 0; round < ROUNDS; round++) {
        const replicas = ['a', 'b'].map((h) => startReplica(join(dir, h), childEnv));
        await Promise.all(replicas.map((r) => r.ready));
        // Kill one at a random moment under load, the other a little later (also random).
        const order = Math.random() < 0.5 ? replicas : [...replicas].reverse();
        await sleep(150 + Math.random() * 600);
        order[0]!.child.kill('SIGKILL');
        await sleep(Math.random() * 300);
        order[1]!.child.kill('SIGKILL');
        await Promise.all(replicas.map((r) => r.exited));

        const ctx = await openContext(home, { env });
        try {
          expect(await ctx.audit.verify()).toMatchObject({ ok: true });
          const records = await ctx.store.readAudit(0, 1_000_000);
          const bySeq = new Map(records.map((r) => [r.seq, r]));
          const issues = new Set(records.filter((r) => r.type === 'token.issue').map((r) => r.data.ticket));
          for (const r of replicas) {
            for (const seq of r.acked) {
              expect(bySeq.get(seq)?.type, `record ${seq}`).toBe('token.exchange');
            }
            for (const id of r.issued) expect(issues.has(id), `issue record for ${id}`).toBe(true);
            exchanges += r.acked.length;
          }
        } finally {
          await ctx.close();
        }
      }
      expect(exchanges).toBeGreaterThan(ROUNDS * 10);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});

import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { copyFileSync, existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rotateMasterKey } from '../../src/admin/rotate.js';
import type { Context } from '../../src/server/context.js';
import { readKeyringState } from '../../src/vault/keyring.js';
import { spawnCli } from '../helpers/cli.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../integration/postgres/harness.js';
import { type Cluster, makeCluster } from './replicas.js';

const WORKER = new URL('./replica-worker.ts', import.meta.url).pathname;

interface Summary {
  exchanges: number;
  failures: string[];
  added: string[];
  readable: number;
}

function startReplica(
  c: Cluster,
  spec: Record<string, unknown>,
): {
  child: ChildProcessWithoutNullStreams;
  ready: Promise<void>;
  /** Resolves once this replica has done `n` more exchanges than when called. */
  progress(n: number): Promise<void>;
  stop(): Promise<Summary>;
} {
  const child = spawn(process.execPath, ['--import', 'tsx', WORKER], {
    env: { PATH: process.env.PATH, ...c.env, REPLICA_SPEC: JSON.stringify({ home: c.homeDir, ...spec }) },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString('utf8');
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString('utf8');
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      if (out.startsWith('ready\n')) {
        clearInterval(timer);
        resolve();
      }
    }, 20);
    exited.then(() => {
      clearInterval(timer);
      reject(new Error(`replica exited before it was ready: ${err}`));
    });
  });
  const dots = () => (out.match(/\./g) ?? []).length;
  return {
    child,
    ready,
    progress(n) {
      const target = dots() + n;
      return new Promise((resolve, reject) => {
        const timer = setInterval(() => {
          if (dots() >= target) {
            clearInterval(timer);
            resolve();
          }
        }, 20);
        exited.then(() => {
          clearInterval(timer);
          reject(new Error(`replica exited: ${err}`));
        });
      });
    },
    async stop() {
      child.stdin.write('stop\n');
      await exited;
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line === undefined) throw new Error(`replica printed no summary: ${err}`);
      return JSON.parse(line) as Summary;
    },
  };
}

async function seed(a: Context, count: number) {
  const agent = await a.agents.create({ name: 'agent' }, 'admin:test');
  const principal = await a.agents.authenticate(agent.key);
  const tickets: string[] = [];
  for (let i = 0; i < count; i++) {
    await a.vault.addSecret(
      { name: `s${i}`, value: Buffer.from(`value-s${i}`), allow: ['svc'] },
      'admin:test',
    );
    tickets.push(
      (await a.vault.issueTicket({ secret: `s${i}`, principal: principal.ref }, 'admin:test')).ticket,
    );
  }
  return { agentKey: agent.key, principal, tickets };
}

async function expectAllReadableUnder(a: Context, kid: string) {
  const secrets = await a.store.listSecrets();
  expect(new Set(secrets.map((s) => s.keyId))).toEqual(new Set([kid]));
  // Another replica's add reaches this one's known-secrets cache by change notice (SQLite: a poll).
  let known = await a.vault.knownSecrets();
  for (let tries = 0; tries < 50 && known.length !== secrets.length; tries++) {
    await new Promise((r) => setTimeout(r, 100));
    known = await a.vault.knownSecrets();
  }
  expect(known.length).toBe(secrets.length);
  for (const s of known) expect(s.value.revealText()).toMatch(/^value-/);
}

let pg: ThrowawayPostgres | undefined;
let databases = 0;
/** A new database on the throwaway server for each test (its replicas share it). */
async function freshDatabase(): Promise<string> {
  const name = `rotation_${++databases}`;
  const client = pg!.direct();
  await client.connect();
  await client.query(`CREATE DATABASE ${name}`);
  await client.end();
  return `postgres://postgres:${encodeURIComponent(pg!.password)}@127.0.0.1:${pg!.port}/${name}?sslmode=disable`;
}
const drivers: Array<[string, () => Promise<string | undefined>]> = [['sqlite', async () => undefined]];
const havePostgres = existsSync('/usr/lib/postgresql') && readdirSync('/usr/lib/postgresql').length > 0;
if (havePostgres) drivers.push(['postgres', freshDatabase]);

beforeAll(async () => {
  if (havePostgres) pg = await startThrowawayPostgres();
}, 60_000);
afterAll(() => pg?.stop());

describe.each(drivers)('key rotation with several replicas (%s)', (_driver, url) => {
  let c: Cluster;
  let a: Context | undefined;
  afterEach(async () => {
    await a?.close().catch(() => undefined);
    a = undefined;
    c.remove();
  });

  it('rotating on A while B and C serve: no failed exchange, a secret added through B meanwhile is readable everywhere, no restart', async () => {
    c = await makeCluster(await url());
    a = await c.open();
    const { agentKey, tickets } = await seed(a, 30);
    const b = startReplica(c, { agentKey, tickets, addPrefix: 'b' });
    const cc = startReplica(c, { agentKey, tickets });
    await Promise.all([b.ready, cc.ready]);
    // Serving before, during and after the rotation (however slow the machine is).
    await Promise.all([b.progress(5), cc.progress(5)]);
    const oldKid = (await readKeyringState(a.store)).active;
    // Small batches: B's adds and both replicas' exchanges interleave with every phase.
    const result = await rotateMasterKey(a, 'admin:test', { batchSize: 3 });
    expect(result).toMatchObject({ phase: 'retired', previousKey: oldKid });
    await Promise.all([b.progress(5), cc.progress(5)]);
    // B first: its last add must be committed before C's final read counts the store.
    const fromB = await b.stop();
    const fromC = await cc.stop();
    expect(fromB.failures).toEqual([]);
    expect(fromC.failures).toEqual([]);
    expect(fromB.exchanges).toBeGreaterThanOrEqual(10);
    expect(fromC.exchanges).toBeGreaterThanOrEqual(10);
    expect(fromB.added.length).toBeGreaterThan(0);
    // Every secret, B's included, opens on A, B and C, and all are under the new key.
    const total = (await a.store.listSecrets()).length;
    expect(total).toBe(30 + fromB.added.length);
    expect(fromB.readable).toBe(total);
    expect(fromC.readable).toBe(total);
    await expectAllReadableUnder(a, result.newKey);
    expect(await readKeyringState(a.store)).toMatchObject({ active: result.newKey, retired: [oldKid] });
    expect(await a.audit.verify()).toMatchObject({ ok: true });
  }, 120_000);

  it('a replica that lacks the new key refuses by kid (never CC_ERR_STORE_CORRUPT), writes nothing, and recovers without restart once the key file arrives', async () => {
    c = await makeCluster(await url());
    a = await c.open();
    const { principal, tickets } = await seed(a, 2);
    const { ctx: lag, keysDir } = await c.lagging();
    try {
      // Phase 1 only: the new key exists but seals nothing yet; the laggard still works.
      const prepared = await rotateMasterKey(a, 'admin:test', { until: 'added' });
      await lag.vault.exchange(tickets[0]!, { principal, target: { connection: 'svc' } });
      await a.vault.addSecret(
        { name: 'before', value: Buffer.from('value-before'), allow: ['svc'] },
        'admin:test',
      );
      await rotateMasterKey(a, 'admin:test');
      const missing = { code: 'CC_ERR_MASTER_KEY_UNAVAILABLE', details: { keyId: prepared.newKey } };
      await expect(
        lag.vault.exchange(tickets[1]!, { principal, target: { connection: 'svc' } }),
      ).rejects.toMatchObject(missing);
      // A seal must use the active key: the laggard cannot fall back to the old one.
      await expect(
        lag.vault.addSecret(
          { name: 'lagged', value: Buffer.from('value-lagged'), allow: ['svc'] },
          'admin:test',
        ),
      ).rejects.toMatchObject(missing);
      expect((await a.store.listSecrets()).map((s) => s.name)).not.toContain('lagged');
      // The key file arrives: picked up on the next use, no restart.
      copyFileSync(prepared.keyFile, join(keysDir, `${prepared.newKey}.key`));
      const ex = await lag.vault.exchange(tickets[1]!, { principal, target: { connection: 'svc' } });
      expect(ex.value.revealText()).toBe('value-s1');
      await lag.vault.addSecret(
        { name: 'lagged', value: Buffer.from('value-lagged'), allow: ['svc'] },
        'admin:test',
      );
      await expectAllReadableUnder(a, prepared.newKey);
    } finally {
      await lag.close();
    }
  }, 60_000);

  it.each(['added', 'activated', 'rewrapped'] as const)(
    'a rotation stopped after %s reads everything meanwhile and completes when run again',
    async (until) => {
      c = await makeCluster(await url());
      a = await c.open();
      const { principal, tickets } = await seed(a, 7);
      const stopped = await rotateMasterKey(a, 'admin:test', { until, batchSize: 2 });
      expect(stopped.phase).toBe(until);
      await a.close();
      // A fresh process (restart after the crash) reads every secret in the intermediate state.
      a = await c.open();
      for (const t of tickets)
        expect(
          (await a.vault.exchange(t, { principal, target: { connection: 'svc' } })).value.revealText(),
        ).toMatch(/^value-s/);
      await a.vault.addSecret(
        { name: 'between', value: Buffer.from('value-between'), allow: ['svc'] },
        'admin:test',
      );
      const resumed = await rotateMasterKey(a, 'admin:test');
      expect(resumed).toMatchObject({ resumed: true, phase: 'retired', newKey: stopped.newKey });
      await expectAllReadableUnder(a, stopped.newKey);
      expect((await readKeyringState(a.store)).retired).toEqual([stopped.previousKey]);
    },
    60_000,
  );

  it('a `keys rotate` process killed at any point leaves a store every replica reads; running it again completes', async () => {
    c = await makeCluster(await url());
    a = await c.open();
    const { principal, tickets } = await seed(a, 60);
    await a.close();
    a = undefined;
    const child = spawnCli(['keys', 'rotate'], { ...c.env, COATCHECK_HOME: c.homeDir });
    // Kill as soon as the rotation has begun (a new key file exists): wherever it got to.
    const keysDir = join(c.homeDir, 'keys');
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        if (existsSync(keysDir) && readdirSync(keysDir).some((f) => f.endsWith('.key'))) {
          clearInterval(timer);
          resolve();
        }
      }, 2);
      child.on('exit', () => {
        clearInterval(timer);
        resolve();
      });
    });
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    a = await c.open();
    for (const t of tickets.slice(0, 10))
      expect(
        (await a.vault.exchange(t, { principal, target: { connection: 'svc' } })).value.revealText(),
      ).toMatch(/^value-s/);
    const finished = await rotateMasterKey(a, 'admin:test');
    expect(finished.phase).toBe('retired');
    await expectAllReadableUnder(a, finished.newKey);
    expect(await a.audit.verify()).toMatchObject({ ok: true });
  }, 90_000);
});

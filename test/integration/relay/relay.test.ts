import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentRef } from '../../../src/core/principal.js';
import { netnsUnavailable } from '../../helpers/netns.js';
import {
  type RelayProcess,
  type RelayWorld,
  startRelayWorld,
  TARGET_HTTP_PORT,
  TARGET_PG_PORT,
  until,
} from './world.js';

/**
 * The relay across a real network boundary (docs/relay.md, issue 15): the target's
 * PostgreSQL and HTTP server live in a namespace reachable only from the relay's; the
 * gateway (this process) reaches them only through `coatcheck relay run`.
 */
const unavailable = netnsUnavailable();
if (unavailable !== null) console.log(`relay network tests skipped: ${unavailable}`);

const HTTP_SECRET = 'sk_live_CANARY_relay_0c7e2b9d4f1a6e3c';

let world: RelayWorld;
let agentKey: string;
let pgTicket: string;
let httpTicket: string;
let relayKey: string;
let keyFile: string;
const relays: RelayProcess[] = [];

function run(command: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(
      command,
      args,
      { env: { PATH: process.env.PATH, ...env }, timeout: 30_000 },
      (error, stdout, stderr) =>
        resolve({
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
          stdout,
          stderr,
        }),
    );
  });
}

function psql(sql: string, database = 'db') {
  return run(
    'psql',
    [
      `postgresql://bot:${pgTicket}@127.0.0.1:${world.pg.port}/${database}?sslmode=disable`,
      '-X',
      '-At',
      '-c',
      sql,
    ],
    { PGCONNECT_TIMEOUT: '20' },
  );
}

function curl(path: string) {
  return run('curl', [
    '-sS',
    '--max-time',
    '20',
    '-H',
    `Proxy-Authorization: Bearer ${agentKey}`,
    '-H',
    `Authorization: Bearer ${httpTicket}`,
    `${world.http.url}/c/web${path}`,
  ]);
}

function client(): pg.Client {
  const c = new pg.Client({
    host: '127.0.0.1',
    port: world.pg.port,
    user: 'bot',
    password: pgTicket,
    database: 'db',
  });
  c.on('error', () => undefined);
  return c;
}

function startRelay(file = keyFile): RelayProcess {
  const relay = world.startRelay(file, ['--allow', `${world.net.targetIp}:*`]);
  relays.push(relay);
  return relay;
}

async function kill(relay: RelayProcess): Promise<void> {
  relay.child.kill('SIGKILL');
  await relay.exited;
}

describe.skipIf(unavailable !== null)('relay across network namespaces', () => {
  beforeAll(async () => {
    world = await startRelayWorld({ httpSecret: HTTP_SECRET });
    const { ctx } = world;
    const created = await ctx.agents.create({ name: 'bot' }, 'admin:test');
    agentKey = created.key;
    const relay = await ctx.relays.create('site', 'admin:test');
    relayKey = relay.key;
    keyFile = world.writeKey(relayKey);
    const target = world.net.targetIp;
    await ctx.vault.addSecret(
      { name: 'dbpw', value: Buffer.from(world.dbPassword), allow: ['conn:db'] },
      'admin:test',
    );
    await ctx.vault.addSecret(
      { name: 'web-token', value: Buffer.from(HTTP_SECRET), allow: ['conn:web'] },
      'admin:test',
    );
    await ctx.connections.add(
      {
        name: 'db',
        type: 'postgres',
        url: `postgres://postgres@${target}:${TARGET_PG_PORT}/postgres?sslmode=disable`,
        credential: 'dbpw',
        via: 'site',
      },
      'admin:test',
    );
    await ctx.connections.add(
      { name: 'web', type: 'http', url: `http://${target}:${TARGET_HTTP_PORT}`, via: 'site' },
      'admin:test',
    );
    const principal = agentRef(created.agent.id);
    pgTicket = (
      await ctx.vault.issueTicket({ secret: 'dbpw', principal, destinations: ['conn:db'] }, 'admin:test')
    ).ticket;
    httpTicket = (
      await ctx.vault.issueTicket(
        { secret: 'web-token', principal, destinations: ['conn:web'] },
        'admin:test',
      )
    ).ticket;
  }, 120_000);

  afterAll(async () => {
    for (const relay of relays) relay.child.kill('SIGKILL');
    await world?.close();
  }, 60_000);

  it('the gateway cannot reach the target itself', async () => {
    const error = await new Promise<string>((resolve) => {
      const socket = connect({ host: world.net.targetIp, port: TARGET_PG_PORT, timeout: 2_000 });
      socket.once('connect', () => resolve('connected'));
      socket.once('timeout', () => {
        socket.destroy();
        resolve('timeout');
      });
      socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    expect(error).not.toBe('connected');
  });

  it('refuses a relayed connection while no relay is connected, with the relay error', async () => {
    const r = await psql('SELECT 1');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('CC_ERR_RELAY_UNAVAILABLE');
  }, 30_000);

  it('carries psql and curl through gateway → relay → target', async () => {
    const relay = startRelay();
    await until(() => world.ctx.relayHub.sessions('site') === 1, 30_000, 'the relay session');
    const r = await psql("SELECT 'through the relay', inet_server_addr()");
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(`through the relay|${world.net.targetIp}`);
    const h = await curl('/hello');
    expect(JSON.parse(h.stdout)).toEqual({ path: '/hello', authorized: true });
    // relay list: connected, seen from the relay namespace's address.
    const [listed] = await world.ctx.relays.list();
    expect(listed).toMatchObject({ name: 'site', status: 'connected', sessions: 1 });
    expect(listed!.lastAddress).toContain(world.net.relayIp);
    const audit = await world.ctx.store.readAudit(0, 10_000);
    expect(audit.some((a) => a.type === 'relay.connect' && a.data.name === 'site')).toBe(true);
    expect(relay.output()).toContain('relay: session open');
  }, 60_000);

  it('relay killed mid-session: the session in flight fails with a clear error; new sessions recover', async () => {
    const inflight = client();
    await inflight.connect();
    expect((await inflight.query('SELECT 41 + 1 AS n')).rows[0].n).toBe(42);
    const lost = new Promise<Error>((resolve) => inflight.once('error', resolve));
    await kill(relays.at(-1)!);
    const error = await Promise.race([
      lost,
      inflight.query('SELECT pg_sleep(0.1)').then(
        () => new Error('query succeeded'),
        (e: Error) => e,
      ),
    ]);
    expect(error.message).toMatch(/session of relay site carrying this upstream connection ended/);
    await inflight.end().catch(() => undefined);
    // A new relay process: new sessions work again.
    startRelay();
    await until(() => world.ctx.relayHub.sessions('site') === 1, 30_000, 'the relay to reconnect');
    const r = await psql('SELECT 2');
    expect(r.stdout.trim()).toBe('2');
    const audit = await world.ctx.store.readAudit(0, 10_000);
    expect(audit.some((a) => a.type === 'relay.disconnect' && (a.data.streams as number) >= 1)).toBe(true);
  }, 90_000);

  it('two relays share the load; one killed, traffic continues', async () => {
    startRelay();
    await until(() => world.ctx.relayHub.sessions('site') === 2, 30_000, 'two relay sessions');
    const [a, b] = relays.slice(-2);
    for (let i = 0; i < 6; i++) expect((await psql(`SELECT ${i}`)).stdout.trim()).toBe(String(i));
    await kill(a!);
    await until(() => world.ctx.relayHub.sessions('site') === 1, 10_000, 'the killed session to go');
    for (let i = 0; i < 4; i++) expect((await psql(`SELECT ${i}`)).stdout.trim()).toBe(String(i));
    expect(JSON.parse((await curl('/after')).stdout)).toEqual({ path: '/after', authorized: true });
    // The killed relay had carried some of the six: both shared the load.
    const audit = await world.ctx.store.readAudit(0, 10_000);
    const ended = audit.filter((r) => r.type === 'relay.disconnect');
    expect((ended.at(-1)!.data.streams as number) > 0).toBe(true);
    expect(b!.child.exitCode).toBeNull();
  }, 120_000);

  it('an allow list the target is outside of: refused by the relay, not opened', async () => {
    const narrow = world.startRelay(keyFile, ['--allow', '10.0.0.1:5432']);
    relays.push(narrow);
    // Take the others away so the narrow relay is the only one.
    for (const relay of relays.slice(0, -1)) if (relay.child.exitCode === null) await kill(relay);
    await until(() => world.ctx.relayHub.sessions('site') === 1, 30_000, 'only the narrow relay');
    const r = await psql('SELECT 1');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('CC_ERR_RELAY_TARGET_REFUSED');
    await kill(narrow);
  }, 90_000);

  it('revoking the relay drops its session at once and refuses its key from then on', async () => {
    const relay = startRelay();
    await until(() => world.ctx.relayHub.sessions('site') === 1, 30_000, 'the relay session');
    const held = client();
    await held.connect();
    const lost = new Promise<Error>((resolve) => held.once('error', resolve));
    await world.ctx.relays.revoke('site', 'admin:test');
    expect(world.ctx.relayHub.sessions('site')).toBe(0);
    const error = await lost;
    expect(error.message).toMatch(/revoked|CC_ERR_RELAY_STREAM_LOST/);
    // The relay tries again, is refused for good, and stops.
    const code = await relay.exited;
    expect(code).toBe(1);
    expect(relay.output()).toContain('CC_ERR_RELAY_REVOKED');
    const again = startRelay();
    expect(await again.exited).toBe(1);
    expect(world.ctx.relayHub.sessions('site')).toBe(0);
    const r = await psql('SELECT 1');
    expect(r.stderr).toContain('CC_ERR_RELAY_UNAVAILABLE');
    const audit = await world.ctx.store.readAudit(0, 10_000);
    expect(audit.some((a) => a.type === 'relay.revoke')).toBe(true);
    expect(audit.some((a) => a.type === 'relay.refuse' && a.data.code === 'CC_ERR_RELAY_REVOKED')).toBe(true);
    expect((await world.ctx.relays.list())[0]).toMatchObject({ status: 'revoked' });
  }, 90_000);

  it('canary: relay output never holds a ticket, a key or a secret', async () => {
    await world.ctx.audit.flush();
    const relayText = relays.map((r) => r.output()).join('\n');
    expect(relayText.length).toBeGreaterThan(0);
    const audit = JSON.stringify(await world.ctx.store.readAudit(0, 10_000));
    for (const text of [relayText, world.gatewayLogs(), audit]) {
      for (const value of [HTTP_SECRET, world.dbPassword, pgTicket, httpTicket, agentKey, relayKey]) {
        expect(text).not.toContain(value);
      }
    }
  });
});

import { type ChildProcessWithoutNullStreams, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { spawnCli, waitForLine } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';

const CANARY = 'canary-workers-Hn5Rq2Wz8Lk';
/** The primary's listening block: printed once, when every worker listens. */
const LISTENING =
  /admin API\s+(http:\/\/127\.0\.0\.1:\d+)\n\s+http\s+(http:\/\/127\.0\.0\.1:\d+)\n\s+workers\s+2\n/;

/** The pids of the `serve` workers of a primary (tsx's esbuild service is a child too). */
function childrenOf(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .filter((line) => line.includes(' serve '))
      .map((line) => Number.parseInt(line.trim(), 10))
      .filter((n) => n > 0);
  } catch {
    return []; // ps exits 1 when there is none
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Sum of a counter's samples whose labels contain `labels`. */
function counter(text: string, name: string, labels: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(labels))
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/**
 * `serve --workers N` (ADR 0031): N processes behind the same listeners, sharing state
 * through the store and its change log. What must hold: every worker exchanges tickets; a
 * revocation made through any of them (the admin API is worker 0's) is refused by all at
 * once; the one /metrics counts every worker's requests; a worker that dies is replaced;
 * SIGTERM drains every worker and the primary exits 0; the secret is in no output.
 */
describe('serve --workers', () => {
  let t: TestHome | null = null;
  let up: Upstream | null = null;
  let server: ChildProcessWithoutNullStreams | null = null;

  afterEach(async () => {
    if (server?.pid !== undefined) for (const pid of childrenOf(server.pid)) process.kill(pid, 'SIGKILL');
    server?.kill('SIGKILL');
    await up?.close();
    t?.remove();
  });

  async function setUp() {
    t = await makeTestHome();
    up = await startUpstream();
    const ctx = await t.open();
    try {
      const agent = await ctx.agents.create({ name: 'worker-agent' }, 'admin:test');
      await ctx.vault.addSecret(
        { name: 'api-key', value: Buffer.from(CANARY), allow: ['conn:items'] },
        'admin:test',
      );
      await ctx.connections.add({ name: 'items', type: 'http', url: up.url }, 'admin:test');
      const principal = await ctx.agents.authenticate(agent.key);
      const { ticket } = await ctx.vault.issueTicket(
        { secret: 'api-key', principal: principal.ref },
        'admin:test',
      );
      return { key: agent.key, ticket };
    } finally {
      await ctx.close();
    }
  }

  function start(workers: string, extra: string[] = []) {
    server = spawnCli(
      [
        'serve',
        '--workers',
        workers,
        '--listen-admin',
        '127.0.0.1:0',
        '--listen-http',
        '127.0.0.1:0',
        ...extra,
      ],
      { COATCHECK_HOME: t!.home.dir },
    ) as ChildProcessWithoutNullStreams;
    let output = '';
    server.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    server.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    return { output: () => output };
  }

  it('every worker exchanges; a revocation through the admin API holds in all at once; one /metrics; SIGTERM drains all', async () => {
    const { key, ticket } = await setUp();
    const { output } = start('2');
    const [, admin, url] = await waitForLine(server!, LISTENING);
    const workers = childrenOf(server!.pid!);
    expect(workers).toHaveLength(2);
    expect(JSON.parse(readFileSync(t!.home.serverFile, 'utf8'))).toMatchObject({
      pid: server!.pid,
      workers: 2,
    });

    // Each request on a connection of its own: the listener hands connections to the
    // workers in turn, so both serve some of them.
    const send = async () => {
      const dispatcher = new Agent({ pipelining: 0 });
      try {
        const res = await request(`${url}/c/items/thing`, {
          dispatcher,
          headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
        });
        await res.body.text();
        return res.statusCode;
      } finally {
        await dispatcher.close();
      }
    };
    const before = up!.received.length;
    for (let i = 0; i < 16; i++) expect(await send()).toBe(200);
    expect(up!.received.length - before).toBe(16);
    expect(up!.received.at(-1)?.headers.authorization).toBe(`Bearer ${CANARY}`);

    // The one /metrics (worker 0's admin API) sums every worker's counters.
    const metricsRes = await request(`${admin}/metrics`);
    const metrics = await metricsRes.body.text();
    expect(metricsRes.statusCode).toBe(200);
    expect(counter(metrics, 'coatcheck_http_requests_total', 'status="2xx"')).toBe(16);

    // Revoked through worker 0's admin API: refused by whichever worker takes the request.
    const adminKey = t!.adminKey;
    const revoked = await request(`${admin}/v1/tokens/revoke`, {
      method: 'POST',
      headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ticket }),
    });
    await revoked.body.text();
    expect(revoked.statusCode).toBe(200);
    const after = up!.received.length;
    for (let i = 0; i < 8; i++) expect(await send()).toBe(403);
    expect(up!.received.length).toBe(after);

    const exited = new Promise<number | null>((resolve) => server!.once('exit', (code) => resolve(code)));
    const stoppedAt = Date.now();
    server!.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(Date.now() - stoppedAt).toBeLessThan(15_000);
    for (const pid of workers) expect(alive(pid)).toBe(false);
    expect(() => readFileSync(t!.home.serverFile)).toThrow();
    expect(output()).not.toContain(CANARY);
    expect(output()).not.toContain(ticket);
  }, 60_000);

  it('a worker that dies is started again, and requests go on', async () => {
    const { key, ticket } = await setUp();
    start('2');
    const [, , url] = await waitForLine(server!, LISTENING);
    const [victim] = childrenOf(server!.pid!);
    process.kill(victim!, 'SIGKILL');
    await expect
      .poll(() => childrenOf(server!.pid!).filter((pid) => pid !== victim).length, { timeout: 20_000 })
      .toBe(2);
    // Each request on a new connection, so both workers (the new one included) take some.
    for (let i = 0; i < 6; i++) {
      const dispatcher = new Agent({ pipelining: 0 });
      const res = await request(`${url}/c/items/again`, {
        dispatcher,
        headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
      });
      await res.body.text();
      await dispatcher.close();
      expect(res.statusCode).toBe(200);
    }
  }, 60_000);

  it('every worker writing at once (audit batches through the shared write lock): all 120 exchanges answered and audited, and the log verifies', async () => {
    const { key, ticket } = await setUp();
    start('2');
    const [, admin, url] = await waitForLine(server!, LISTENING);
    const before = up!.received.length;
    // Twelve clients, each on connections of its own, ten requests each: both workers
    // commit audit batches at the same time and take turns at the one SQLite write lock.
    const client = async () => {
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) {
        const dispatcher = new Agent({ pipelining: 0 });
        try {
          const res = await request(`${url}/c/items/busy`, {
            dispatcher,
            headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
          });
          await res.body.text();
          statuses.push(res.statusCode);
        } finally {
          await dispatcher.close();
        }
      }
      return statuses;
    };
    const statuses = (await Promise.all(Array.from({ length: 12 }, client))).flat();
    expect(statuses.filter((s) => s !== 200)).toEqual([]);
    expect(up!.received.length - before).toBe(120);
    // The one /metrics: 120 requests answered 2xx across both workers, and no audit batch failed.
    const metrics = await (await request(`${admin}/metrics`)).body.text();
    expect(counter(metrics, 'coatcheck_http_requests_total', 'status="2xx"')).toBe(120);
    // Unlabelled, so printed without braces: every worker's operations, summed.
    const operations = Number(/^coatcheck_audit_operations_total (\d+)$/m.exec(metrics)?.[1] ?? Number.NaN);
    expect(operations).toBeGreaterThanOrEqual(120);
    const verify = await request(`${admin}/v1/audit/verify`, {
      method: 'POST',
      headers: { authorization: `Bearer ${t!.adminKey}` },
    });
    const verdict = (await verify.body.json()) as { ok: boolean; records: number };
    expect(verdict.ok).toBe(true);
  }, 60_000);

  it('a worker killed while every worker writes (perhaps holding the write lock): later requests are answered and the log verifies', async () => {
    const { key, ticket } = await setUp();
    start('2');
    const [, admin, url] = await waitForLine(server!, LISTENING);
    let killed = false;
    let stop = false;
    const afterKill: number[] = [];
    // Eight clients on fresh connections until stopped: both workers commit audit batches
    // through the shared lock when one of them is killed without warning.
    const client = async () => {
      while (!stop) {
        const wasKilled = killed;
        const dispatcher = new Agent({ pipelining: 0, headersTimeout: 10_000, bodyTimeout: 10_000 });
        try {
          const res = await request(`${url}/c/items/kill`, {
            dispatcher,
            headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
          });
          await res.body.text();
          if (wasKilled) afterKill.push(res.statusCode);
        } catch {
          // A request the killed worker held: its connection is reset. (One the primary was
          // handing to it as it died is never answered: node:cluster's round-robin loses it,
          // hence the timeouts above.)
          if (wasKilled) afterKill.push(0);
        } finally {
          await dispatcher.close();
        }
      }
    };
    const clients = Array.from({ length: 8 }, client);
    await expect.poll(() => up!.received.length, { timeout: 20_000 }).toBeGreaterThan(40);
    // Worker 1 (forked after worker 0, so the higher pid): worker 0 serves the admin API,
    // which a restart on port 0 would move to another port.
    const victim = Math.max(...childrenOf(server!.pid!));
    process.kill(victim, 'SIGKILL');
    // Requests begun once the primary has seen the exit (the reset ones are the victim's).
    await new Promise((resolve) => setTimeout(resolve, 500));
    killed = true;
    try {
      await expect.poll(() => afterKill.length, { timeout: 30_000 }).toBeGreaterThan(60);
    } finally {
      stop = true;
    }
    await Promise.all(clients);
    expect(afterKill.filter((status) => status !== 200)).toEqual([]);
    // Worker 0 may have been the one killed: its restart serves the admin API again.
    await expect
      .poll(
        async () => {
          const verify = await request(`${admin}/v1/audit/verify`, {
            method: 'POST',
            headers: { authorization: `Bearer ${t!.adminKey}` },
          }).catch(() => null);
          return verify === null ? null : ((await verify.body.json()) as { ok: boolean }).ok;
        },
        { timeout: 20_000 },
      )
      .toBe(true);
  }, 90_000);

  it('a worker that keeps dying stops the server with exit 1 (a crash loop), and the others go with it', async () => {
    await setUp();
    const { output } = start('2');
    await waitForLine(server!, LISTENING);
    const exited = new Promise<number | null>((resolve) => server!.once('exit', (code) => resolve(code)));
    const killed = new Set<number>();
    let survivor: number | undefined;
    // Worker 1 (or whichever the first kill picks) killed as soon as each restart is up.
    for (let round = 0; round < 5; round++) {
      await expect
        .poll(() => childrenOf(server!.pid!).filter((pid) => !killed.has(pid)).length, { timeout: 20_000 })
        .toBe(2);
      const [a, b] = childrenOf(server!.pid!).filter((pid) => !killed.has(pid));
      survivor ??= a;
      const victim = a === survivor ? b! : a!;
      killed.add(victim);
      process.kill(victim, 'SIGKILL');
    }
    expect(await exited).toBe(1);
    expect(output()).toMatch(/worker \d exited 5 times within 60 s \(last: SIGKILL\); stopping/);
    expect(output()).toMatch(/starting it again in 250 ms[\s\S]*in 500 ms[\s\S]*in 1000 ms[\s\S]*in 2000 ms/);
    expect(alive(survivor!)).toBe(false);
  }, 60_000);

  it('refuses a bad count and the relay listener with more than one worker, before anything listens', async () => {
    await setUp();
    for (const [workers, message] of [
      ['0', /--workers must be a whole number/],
      ['two', /--workers must be a whole number/],
    ] as const) {
      const { output } = start(workers);
      const code = await new Promise<number | null>((resolve) => server!.once('exit', resolve));
      expect(code).toBe(2);
      expect(output()).toMatch(message);
      expect(output()).toContain('CC_ERR_INVALID_ARGUMENT');
    }
    const { output } = start('2', ['--listen-relay', '127.0.0.1:0']);
    const code = await new Promise<number | null>((resolve) => server!.once('exit', resolve));
    expect(code).toBe(2);
    expect(output()).toMatch(/relay listener runs with one worker/);
    expect(() => readFileSync(t!.home.serverFile)).toThrow();
  }, 60_000);
});

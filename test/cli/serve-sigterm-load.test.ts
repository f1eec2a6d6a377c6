import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { spawnCli, waitForLine } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';

const CANARY = 'canary-sigterm-Qz81VbN4mX7';

/**
 * SIGTERM under load (issues 13 and 15): clients keep sending requests that exchange a
 * ticket while the gateway is told to stop. Every request the gateway answered 200 has its
 * `token.exchange` audit record (each request names its own path, so each answer is matched
 * to its own record); requests after the stop are refused or cut, never answered without a
 * record; the process exits 0 within the drain deadline; the secret is in no output.
 */
describe('serve under load, then SIGTERM', () => {
  let t: TestHome | null = null;
  let up: Upstream | null = null;
  let server: ChildProcessWithoutNullStreams | null = null;

  afterEach(async () => {
    server?.kill('SIGKILL');
    await up?.close();
    t?.remove();
  });

  it('every acknowledged request has its audit record, and the process exits within the deadline', async () => {
    t = await makeTestHome();
    up = await startUpstream();
    const ctx = await t.open();
    let key: string;
    let ticket: string;
    try {
      const agent = await ctx.agents.create({ name: 'loader' }, 'admin:test');
      key = agent.key;
      await ctx.vault.addSecret(
        { name: 'api-key', value: Buffer.from(CANARY), allow: ['conn:items'] },
        'admin:test',
      );
      await ctx.connections.add({ name: 'items', type: 'http', url: up.url }, 'admin:test');
      const principal = await ctx.agents.authenticate(key);
      ticket = (await ctx.vault.issueTicket({ secret: 'api-key', principal: principal.ref }, 'admin:test'))
        .ticket;
    } finally {
      await ctx.close();
    }
    server = spawnCli(['serve', '--listen-admin', '127.0.0.1:0', '--listen-http', '127.0.0.1:0'], {
      COATCHECK_HOME: t.home.dir,
    }) as ChildProcessWithoutNullStreams;
    let output = '';
    server.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    server.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    const [, url] = await waitForLine(server, /http\s+(http:\/\/127\.0\.0\.1:\d+)/);
    const exited = new Promise<{ code: number | null; at: number }>((resolve) =>
      server!.once('exit', (code) => resolve({ code, at: Date.now() })),
    );

    const acknowledged: string[] = [];
    let refusedOrCut = 0;
    let stopping = false;
    let n = 0;
    const loop = async (): Promise<void> => {
      while (true) {
        const id = `r${n++}`;
        try {
          const res = await request(`${url}/c/items/item/${id}`, {
            headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
            headersTimeout: 10_000,
          });
          const body = await res.body.text();
          // The upstream echoes what it received: this answer is this request's.
          if (res.statusCode === 200 && body.includes(`"url":"/item/${id}"`)) acknowledged.push(id);
          else {
            refusedOrCut++;
            if (!stopping)
              throw new Error(`refused before the stop: ${res.statusCode} ${body.slice(0, 300)}`);
          }
        } catch (error) {
          if (!stopping) throw error;
          refusedOrCut++;
        }
        if (stopping && refusedOrCut > 0) return;
      }
    };
    const loops = Array.from({ length: 8 }, () => loop());
    // Let load build up, then stop the gateway in the middle of it.
    const failed = Promise.all(loops).then(() => undefined);
    while (acknowledged.length < 60) await Promise.race([failed, new Promise((r) => setTimeout(r, 20))]);
    const signalled = Date.now();
    stopping = true;
    server.kill('SIGTERM');
    await Promise.all(loops);
    const { code, at } = await exited;
    server = null;
    expect(code).toBe(0);
    // The default shutdown.drainTimeout is 5 s; the store flush and exit come after it.
    expect(at - signalled).toBeLessThan(8_000);
    expect(refusedOrCut).toBeGreaterThan(0);

    const after = await t.open();
    try {
      const records = await after.store.readAudit(0, 1_000_000);
      const exchangedPaths = new Set(
        records
          .filter((r) => r.type === 'token.exchange')
          .map((r) => String((r.data as { operation?: unknown }).operation ?? '')),
      );
      const missing = acknowledged.filter(
        (id) => ![...exchangedPaths].some((op) => op.endsWith(`/item/${id}`)),
      );
      expect(missing).toEqual([]);
      expect(acknowledged.length).toBeGreaterThanOrEqual(60);
      // The upstream received the real secret, and it is in none of the gateway's output.
      const seenUpstream = up.received.map((r) => String(r.headers.authorization ?? ''));
      expect(seenUpstream.length).toBeGreaterThanOrEqual(acknowledged.length);
      expect(seenUpstream.every((h) => h === `Bearer ${CANARY}`)).toBe(true);
      expect(output).not.toContain(CANARY);
      expect(JSON.stringify(records)).not.toContain(CANARY);
    } finally {
      await after.close();
    }
  }, 120_000);
});

import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { renameSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { cli, spawnCli, waitForLine } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';

const CANARY = 'canary-backup-serving-Rt63Wq8Z';

/**
 * `coatcheck backup` against a running gateway that is exchanging tickets (SQLite store):
 * the CLI asks the server, which writes one consistent snapshot. Every request answered
 * before the backup command started has its audit record in the copy; the copy restores
 * into the home (once the server is stopped and the live store moved away) and verifies
 * against its anchor; the restored vault still releases the secret.
 */
describe('backup while serving under load', () => {
  let t: TestHome | null = null;
  let up: Upstream | null = null;
  let server: ChildProcessWithoutNullStreams | null = null;

  afterEach(async () => {
    server?.kill('SIGKILL');
    await up?.close();
    t?.remove();
  });

  it('the copy holds every exchange answered before it started, restores, and verifies against its anchor', async () => {
    t = await makeTestHome();
    up = await startUpstream();
    const ctx = await t.open();
    let key: string;
    let ticket: string;
    try {
      key = (await ctx.agents.create({ name: 'loader' }, 'admin:test')).key;
      await ctx.vault.addSecret(
        { name: 'api', value: Buffer.from(CANARY), allow: ['conn:items'] },
        'admin:test',
      );
      await ctx.connections.add({ name: 'items', type: 'http', url: up.url }, 'admin:test');
      const principal = await ctx.agents.authenticate(key);
      ticket = (await ctx.vault.issueTicket({ secret: 'api', principal: principal.ref }, 'admin:test'))
        .ticket;
    } finally {
      await ctx.close();
    }
    const env = { COATCHECK_HOME: t.home.dir };
    server = spawnCli(
      ['serve', '--listen-admin', '127.0.0.1:0', '--listen-http', '127.0.0.1:0'],
      env,
    ) as ChildProcessWithoutNullStreams;
    let output = '';
    server.stderr.on('data', (c: Buffer) => {
      output += c.toString('utf8');
    });
    const [, url] = await waitForLine(server, /http\s+(http:\/\/127\.0\.0\.1:\d+)/);

    const answered: Array<{ id: string }> = [];
    let running = true;
    let n = 0;
    const loops = Array.from({ length: 6 }, async () => {
      while (running) {
        const id = `b${n++}`;
        const res = await request(`${url}/c/items/item/${id}`, {
          headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
        });
        const body = await res.body.text();
        expect(res.statusCode).toBe(200);
        if (body.includes(`"url":"/item/${id}"`)) answered.push({ id });
      }
    });
    while (answered.length < 40) await new Promise((r) => setTimeout(r, 20));
    const backupFile = join(t.dir, 'serving.db');
    // What was answered when the command starts, taken in the same synchronous step (a time
    // stamp in milliseconds could not tell an answer from the same millisecond apart).
    const before = answered.map((a) => a.id);
    const backup = await cli(['backup', backupFile], { env });
    expect({ code: backup.code, err: backup.stderr }).toMatchObject({ code: 0 });
    // Load goes on after the backup; then stop the gateway.
    await new Promise((r) => setTimeout(r, 300));
    running = false;
    await Promise.all(loops);
    server.kill('SIGTERM');
    expect(await new Promise((r) => server!.once('exit', r))).toBe(0);
    server = null;

    // Restore the copy in place of the live store and check it.
    renameSync(join(t.home.dir, 'coatcheck.db'), join(t.dir, 'live.db'));
    const restored = await cli(['restore', backupFile], { env });
    expect({ code: restored.code, out: restored.stdout, err: restored.stderr }).toMatchObject({ code: 0 });
    expect(restored.stdout).toContain('reaching its anchor');
    const after = await t.open();
    try {
      const records = await after.store.readAudit(0, 1_000_000);
      const operations = new Set(
        records
          .filter((r) => r.type === 'token.exchange')
          .map((r) => String((r.data as { operation?: unknown }).operation ?? '')),
      );
      const missing = before.filter((id) => ![...operations].some((op) => op.endsWith(`/item/${id}`)));
      expect(missing).toEqual([]);
      expect(before.length).toBeGreaterThanOrEqual(40);
      // The copy ends where it ends: later exchanges are not in it.
      expect(operations.size).toBeLessThan(answered.length);
      const principal = await after.agents.authenticate(key);
      const released = await after.vault.exchange(ticket, { principal, target: { connection: 'items' } });
      expect(released.value.revealText()).toBe(CANARY);
    } finally {
      await after.close();
    }
    expect(output + backup.stdout + restored.stdout).not.toContain(CANARY);
  }, 120_000);
});

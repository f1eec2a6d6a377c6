import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { makeTestHome } from '../helpers/home.js';

const ISSUER = new URL('./issuer.ts', import.meta.url).pathname;

describe('crash safety', () => {
  it('SIGKILL mid-issue leaves a verifiable audit chain and loses no acknowledged write', async () => {
    const t = await makeTestHome();
    try {
      const setup = await t.open();
      await setup.vault.addSecret(
        { name: 'crash-secret', value: Buffer.from('v'), allow: ['svc'] },
        'admin:test',
      );
      await setup.agents.create({ name: 'crash-agent' }, 'admin:test');
      await setup.close();

      for (let round = 0; round < 3; round++) {
        const child = spawn(process.execPath, ['--import', 'tsx', ISSUER, t.home.dir], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        const acked: string[] = [];
        let stderr = '';
        child.stderr.on('data', (c: Buffer) => {
          stderr += c.toString();
        });
        let buffer = '';
        const target = 150 + round * 50;
        await new Promise<void>((resolve, reject) => {
          child.stdout.on('data', (chunk: Buffer) => {
            buffer += chunk.toString('utf8');
            const lines = buffer.split('\n');
            buffer = lines.pop()!;
            for (const line of lines) if (line.startsWith('ack ')) acked.push(line.slice(4));
            if (acked.length >= target) {
              child.kill('SIGKILL');
              resolve();
            }
          });
          child.once('exit', (code, signal) => {
            if (signal !== 'SIGKILL')
              reject(new Error(`issuer exited early (${code}): ${stderr.slice(0, 500)}`));
          });
        });
        await new Promise((resolve) => child.once('exit', resolve));

        const ctx = await t.open();
        try {
          expect(await ctx.audit.verify()).toMatchObject({ ok: true });
          const records = await ctx.store.readAudit(0, 100_000);
          const auditedTickets = new Set(
            records.filter((r) => r.type === 'token.issue').map((r) => r.data.ticket as string),
          );
          for (const id of acked) {
            expect(auditedTickets.has(id), `audit record for ${id}`).toBe(true);
            expect(await ctx.store.getTicketById(id), `ticket ${id}`).not.toBeNull();
          }
          // Nothing half-done: every stored ticket has its record and every record its ticket.
          const stored = await ctx.store.listTickets({ includeInactive: true, limit: 100_000 });
          expect(new Set(stored.map((s) => s.id))).toEqual(auditedTickets);
        } finally {
          await ctx.close();
        }
      }
    } finally {
      t.remove();
    }
    // Several child processes start and die: minutes, not seconds, on a loaded 2-core machine.
  }, 120_000);
});

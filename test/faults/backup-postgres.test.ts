import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../../src/config/home.js';
import { type Context, initHome, openContext } from '../../src/server/context.js';
import { untypedEvent } from '../helpers/audit.js';
import { cli } from '../helpers/cli.js';

/**
 * Backup and restore of a PostgreSQL store as docs/deploy.md says: `coatcheck audit
 * anchor`, then `pg_dump` while the gateway writes; `pg_restore` into an empty database;
 * `coatcheck audit verify --anchor` proves the copy holds every record up to the anchor;
 * the restored vault opens with the same master key. A copy that lost records the anchor
 * vouches for fails the check.
 */
const ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const CANARY = 'canary-pgbackup-Hs72LpQ9x';
const suffix = randomBytes(4).toString('hex');
const live = `cc_pgb_live_${suffix}`;
const restored = `cc_pgb_rest_${suffix}`;
const truncated = `cc_pgb_trunc_${suffix}`;
const url = (db: string) => `postgres://postgres@127.0.0.1:5432/${db}`;

async function admin(sql: string): Promise<void> {
  const client = new Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

const hasTools = ['pg_dump', 'pg_restore'].every((t) => spawnSync(t, ['--version']).status === 0);

describe.skipIf(!hasTools)(
  'PostgreSQL store: backup while writing, restore, verify against the anchor',
  () => {
    const dir = mkdtempSync(join(tmpdir(), 'coatcheck-pgbackup-'));
    const masterKey = randomBytes(32).toString('base64');
    afterAll(async () => {
      for (const db of [live, restored, truncated]) await admin(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
      rmSync(dir, { recursive: true, force: true });
    });

    it('the dump holds every record up to the anchor; the restored store verifies and opens; a shortened copy fails', async () => {
      await admin(`CREATE DATABASE ${live}`);
      const env = { COATCHECK_MASTER_KEY: masterKey, COATCHECK_DATABASE_URL: url(live) };
      const home = resolveHome(join(dir, 'home'), {});
      await initHome(home, { env });
      let ctx: Context = await openContext(home, { env });
      await ctx.vault.addSecret({ name: 's', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
      // Writes keep arriving while the anchor is taken and the dump runs.
      let writing = true;
      let written = 0;
      const load = (async () => {
        while (writing) {
          await ctx.audit.append(
            untypedEvent({ type: 'test.load', actor: 'admin:test', data: { i: written++ } }),
          );
        }
      })();
      while (written < 50) await new Promise((r) => setTimeout(r, 10));
      const anchorOut = await cli(['audit', 'anchor', '--dir', home.dir], { env });
      expect(anchorOut.code).toBe(0);
      const anchorFile = join(dir, 'anchor.json');
      writeFileSync(anchorFile, anchorOut.stdout);
      const anchor = JSON.parse(anchorOut.stdout) as { seq: number; hash: string };
      expect(anchor.seq).toBeGreaterThan(0);
      const dumpFile = join(dir, 'coatcheck.dump');
      const dump = spawnSync('pg_dump', ['--format=custom', `--file=${dumpFile}`, url(live)], {
        encoding: 'utf8',
      });
      expect({ status: dump.status, stderr: dump.stderr }).toEqual({ status: 0, stderr: '' });
      const writtenDuringDump = written;
      writing = false;
      await load;
      expect(writtenDuringDump).toBeGreaterThan(50);
      await ctx.close();
      // The master key and the secret's value are not in the dump in clear.
      const bytes = readFileSync(dumpFile);
      expect(bytes.includes(Buffer.from(CANARY))).toBe(false);
      expect(bytes.includes(Buffer.from(masterKey))).toBe(false);

      // Restore into an empty database and check it against the anchor.
      await admin(`CREATE DATABASE ${restored}`);
      const restore = spawnSync('pg_restore', ['--no-owner', `--dbname=${url(restored)}`, dumpFile], {
        encoding: 'utf8',
      });
      expect({ status: restore.status, stderr: restore.stderr }).toEqual({ status: 0, stderr: '' });
      const restoredEnv = { ...env, COATCHECK_DATABASE_URL: url(restored) };
      const verified = await cli(['audit', 'verify', '--anchor', anchorFile, '--dir', home.dir], {
        env: restoredEnv,
      });
      expect({ code: verified.code, out: verified.stdout }).toMatchObject({ code: 0 });
      expect(verified.stdout).toContain(`reaching the anchor (record ${anchor.seq})`);
      ctx = await openContext(home, { env: restoredEnv });
      try {
        const agent = await ctx.agents.create({ name: 'after-restore' }, 'admin:test');
        const principal = await ctx.agents.authenticate(agent.key);
        const { ticket } = await ctx.vault.issueTicket(
          { secret: 's', principal: principal.ref },
          'admin:test',
        );
        const released = await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } });
        expect(released.value.revealText()).toBe(CANARY);
      } finally {
        await ctx.close();
      }

      // A copy that lost the records up to the anchor fails against it (a plain verify of a
      // chain cut at its end cannot tell).
      await admin(`CREATE DATABASE ${truncated} TEMPLATE ${restored}`);
      const client = new Client({ connectionString: url(truncated) });
      await client.connect();
      try {
        await client.query('DELETE FROM audit WHERE seq >= $1', [anchor.seq - 5]);
      } finally {
        await client.end();
      }
      const shortened = await cli(['audit', 'verify', '--anchor', anchorFile, '--dir', home.dir], {
        env: { ...env, COATCHECK_DATABASE_URL: url(truncated) },
      });
      expect(shortened.code).not.toBe(0);
      expect(shortened.stdout + shortened.stderr).not.toContain(CANARY);
    }, 180_000);
  },
);

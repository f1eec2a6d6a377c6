import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import { storeContract } from './contract.js';

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-sqlite-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

storeContract('sqlite', async () => {
  const store = await openSqliteStore({ path: join(dir, `store-${n++}.db`) });
  await store.migrate();
  return store;
});

it('reports a file that is not a database as CC_ERR_STORE_CORRUPT', async () => {
  const path = join(dir, 'garbage.db');
  writeFileSync(path, Buffer.alloc(8192, 0x5a));
  await expect(
    (async () => {
      const store = await openSqliteStore({ path });
      await store.migrate();
    })(),
  ).rejects.toMatchObject({ code: 'CC_ERR_STORE_CORRUPT' });
});

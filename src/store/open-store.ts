import type { Store } from './types.js';

export type StoreOptions = { driver: 'sqlite'; path: string } | { driver: 'postgres'; url: string };

/** Open the configured adapter (the PostgreSQL driver is only loaded when used). */
export async function openStore(options: StoreOptions): Promise<Store> {
  if (options.driver === 'sqlite') {
    const { openSqliteStore } = await import('./sqlite-store.js');
    return openSqliteStore({ path: options.path });
  }
  const { openPostgresStore } = await import('./postgres-store.js');
  return openPostgresStore({ url: options.url });
}

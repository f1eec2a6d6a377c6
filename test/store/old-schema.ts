import Database from 'better-sqlite3';
import { SQLITE_MIGRATIONS } from '../../src/store/migrations.js';

/**
 * A SQLite store file as an older coatcheck left it: the migrations up to `version` applied
 * and recorded. Returns the open raw connection (close it before opening the store).
 */
export function sqliteStoreAtVersion(path: string, version: number): Database.Database {
  const db = new Database(path);
  db.exec(
    'CREATE TABLE coatcheck_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)',
  );
  for (const m of SQLITE_MIGRATIONS.filter((x) => x.version <= version)) {
    db.exec(m.sql);
    db.prepare('INSERT INTO coatcheck_migrations VALUES (?, ?, 0)').run(m.version, m.name);
  }
  return db;
}

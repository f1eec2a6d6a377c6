import { existsSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PgRecording } from '../../src/frontends/postgres/recording.js';
import { currentSecretMatcher, sharedKnownSecretIndex } from '../../src/gateway/known-secret-index.js';
import { GatewaySession } from '../../src/gateway/session.js';
import { eraseRecording, loadRecording, verifyRecordings } from '../../src/recording/archive.js';
import { PART_CHUNKS, PART_PLAIN_BYTES } from '../../src/recording/format.js';
import { SessionRecordings } from '../../src/recording/recordings.js';
import { fileRecordingStorage, type RecordingStorage } from '../../src/recording/storage.js';
import type { Context } from '../../src/server/context.js';
import { recordingArchive, recordingsDir } from '../../src/server/recordings.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'stream-canary-Mm1Nn2Bb3Vv4Cc5';

/** Wait (bounded) until `ok()` holds, turning the event loop meanwhile. */
async function until(ok: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !ok(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!ok()) throw new Error(`timed out waiting for ${what}`);
}

describe('long sessions are written in parts while they run (not held until they end), and read back whole', () => {
  let home: TestHome;
  let ctx: Context;
  beforeAll(async () => {
    home = await makeTestHome();
    ctx = await home.open();
    await ctx.vault.addSecret({ name: 'stream-secret', value: Buffer.from(CANARY), allow: [] }, 'admin:test');
  });
  afterAll(async () => {
    await ctx.close();
    home.remove();
  });

  const service = (storage: RecordingStorage, settings: Partial<SessionRecordings['settings']> = {}) => {
    const registry = new Registry();
    return {
      registry,
      recordings: new SessionRecordings({
        store: ctx.store,
        audit: ctx.audit,
        storage,
        wrapKey: ctx.keys.index.recording,
        knownMatcher: () => currentSecretMatcher(sharedKnownSecretIndex(ctx.vault, ctx.store)),
        log: pino({ level: 'silent' }),
        registry,
        clock: ctx.clock,
        settings: {
          default: 'full',
          limits: { maxSessionBytes: 64 * 1024 * 1024, maxBodyBytes: 4096, maxRowsPerStatement: 10 },
          maxQueued: 4,
          whenFull: 'refuse',
          ...settings,
        },
      }),
    };
  };
  const dir = () => recordingsDir(ctx);
  const partsOf = (id: string) => readdirSync(dir()).filter((n) => n.startsWith(`${id}.p`));
  const close = (r: SessionRecordings, s: GatewaySession) =>
    r.hook.close(s, s.toRecord('ok', {}, ctx.clock.now()));
  /** About 1 KiB per event, each numbered; one in ten carries the canary (the writer scrubs it). */
  const event = (i: number) => ({
    i,
    text: `${i % 10 === 0 ? CANARY : ''}${i.toString(36).padStart(6, '0')}${'q'.repeat(1000)}`,
  });

  it('holds what the writer has not yet taken, not the session; the parts and the last file replay as one recording', async () => {
    const { recordings } = service(fileRecordingStorage(dir()));
    const session = new GatewaySession('http', ctx.clock);
    await recordings.begin(session, { rules: {} });
    const capture = session.recording!;
    const total = 5000; // about 5 MiB of events: four whole parts and a last file
    for (let i = 0; i < total; i++) {
      session.record('ws.message', 'in', event(i));
      // Let the writer run now and then, as a live session's turns of the event loop do.
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    await until(() => partsOf(session.id).length >= 3, 'parts written while the session runs');
    // While it runs: parts are on disk and, once the writer caught up, the session holds less
    // than a part (how much it holds meanwhile depends on how fast the writer keeps up: a
    // producer faster than the writer is bounded by maxSessionBytes alone).
    await until(() => capture.held < PART_PLAIN_BYTES, 'the writer to catch up');
    expect(capture.lines.length).toBeLessThan(PART_PLAIN_BYTES / 1000);
    expect(await ctx.store.getRecording(session.id)).toBeNull();
    close(recordings, session);
    await recordings.flush();

    const row = (await ctx.store.getRecording(session.id))!;
    const parts = partsOf(session.id).sort(
      (a, b) => Number(a.split('.p')[1]!.split('.')[0]) - Number(b.split('.p')[1]!.split('.')[0]),
    );
    expect(parts.length).toBeGreaterThanOrEqual(4);
    expect(row.chunks).toBeGreaterThan(parts.length * PART_CHUNKS);
    const sealed = (await ctx.store.tailAudit(5)).findLast((r) => r.type === 'recording.sealed')!;
    expect(sealed.data).toMatchObject({ session: session.id, parts: parts.length, events: total + 1 });
    const stored = [...parts, row.location].reduce((sum, n) => sum + readFileSync(join(dir(), n)).length, 0);
    expect(row.bytes).toBe(stored);

    const { events } = await loadRecording(recordingArchive(ctx), session.id);
    expect(events).toHaveLength(total + 1);
    expect(events.slice(0, total).map((e) => (e.data as { i: number }).i)).toEqual(
      Array.from({ length: total }, (_, i) => i),
    );
    expect(events.at(-1)!.kind).toBe('session.end');
    // Scrubbed in every part, as at close.
    for (const name of [...parts, row.location]) {
      expect(readFileSync(join(dir(), name)).toString('latin1')).not.toContain(CANARY);
    }
    const text = JSON.stringify(events);
    expect(text).not.toContain(CANARY);
    expect(text.match(/\[secret:sec_[0-9A-Za-z]+\]/g)).toHaveLength(total / 10);

    // audit verify: a removed, an edited and a swapped part are each caught.
    const archive = recordingArchive(ctx);
    const problemsOf = async () =>
      (await verifyRecordings(archive)).problems.filter((p) => p.session === session.id);
    expect(await problemsOf()).toEqual([]);
    const first = join(dir(), parts[0]!);
    const second = join(dir(), parts[1]!);
    const original = readFileSync(first);
    renameSync(first, `${first}.away`);
    expect((await problemsOf()).map((p) => p.problem)).toEqual(['removed']);
    renameSync(`${first}.away`, first);
    const edited = Buffer.from(original);
    edited[edited.length - 5] = edited[edited.length - 5]! ^ 1;
    writeFileSync(first, edited);
    expect((await problemsOf()).map((p) => p.problem)).toEqual(['edited']);
    const secondBytes = readFileSync(second);
    writeFileSync(first, secondBytes);
    writeFileSync(second, original);
    expect((await problemsOf()).map((p) => p.problem)).toEqual(['edited']);
    writeFileSync(first, original);
    writeFileSync(second, secondBytes);
    expect(await problemsOf()).toEqual([]);

    // Erasure removes every part with the last file.
    expect(await eraseRecording(archive, ctx.audit, ctx.clock, session.id, 'operator', 'admin:test')).toBe(
      true,
    );
    expect(partsOf(session.id)).toEqual([]);
    expect(existsSync(join(dir(), row.location))).toBe(false);
  });

  it('PostgreSQL: raw bytes are decoded and written part by part, statements in order', async () => {
    const { recordings } = service(fileRecordingStorage(dir()));
    const session = new GatewaySession('postgres', ctx.clock);
    await recordings.begin(session, { rules: {} });
    const pg = new PgRecording(session.recording!);
    const total = 3000;
    for (let i = 0; i < total; i++) {
      const sql = Buffer.from(`SELECT ${i} /* ${'p'.repeat(1000)} */\0`);
      const frame = Buffer.alloc(5 + sql.length);
      frame[0] = 0x51; // Query
      frame.writeUInt32BE(4 + sql.length, 1);
      sql.copy(frame, 5);
      pg.clientFrame(frame);
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    await until(() => partsOf(session.id).length >= 2, 'PostgreSQL parts');
    close(recordings, session);
    await recordings.flush();
    const { events } = await loadRecording(recordingArchive(ctx), session.id);
    const queries = events.filter((e) => e.kind === 'pg.query').map((e) => (e.data as { sql: string }).sql);
    expect(queries).toHaveLength(total);
    expect(queries.map((q) => Number(/^SELECT (\d+) /.exec(q)![1]))).toEqual(
      Array.from({ length: total }, (_, i) => i),
    );
  });

  it('a part the storage refuses: the recording is not kept, audited as write-failed, its parts removed', async () => {
    const files = fileRecordingStorage(dir());
    let puts = 0;
    const storage: RecordingStorage = {
      ...files,
      put: async (location, data) => {
        if (++puts === 2) throw new Error('disk full');
        await files.put(location, data);
      },
    };
    const { recordings, registry } = service(storage);
    const session = new GatewaySession('http', ctx.clock);
    await recordings.begin(session, { rules: {} });
    for (let i = 0; i < 3000; i++) {
      session.record('ws.message', 'in', event(i));
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    await until(() => puts >= 2, 'the refused part');
    close(recordings, session);
    await recordings.flush();
    expect(await ctx.store.getRecording(session.id)).toBeNull();
    expect(partsOf(session.id)).toEqual([]);
    const degraded = (await ctx.store.tailAudit(5)).find(
      (r) => r.type === 'recording.degraded' && (r.data as { session: string }).session === session.id,
    );
    expect(degraded?.data).toMatchObject({ action: 'dropped', reason: 'write-failed' });
    expect(await registry.metrics()).toContain(
      'coatcheck_recording_degraded_total{frontend="http",action="dropped"} 1',
    );
  });

  it('a session closing while the queue is full: its content (parts too) is dropped, audited, never silently', async () => {
    const files = fileRecordingStorage(dir());
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    // The last files wait (the queue stays full); parts go through.
    const storage: RecordingStorage = {
      ...files,
      put: async (location, data) => {
        if (!location.includes('.p')) await gate;
        await files.put(location, data);
      },
    };
    const { recordings, registry } = service(storage, { maxQueued: 1 });
    const long = new GatewaySession('http', ctx.clock);
    await recordings.begin(long, { rules: {} });
    for (let i = 0; i < 2500; i++) {
      long.record('ws.message', 'in', event(i));
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    await until(() => partsOf(long.id).length >= 1, 'a part of the long session');
    const short = new GatewaySession('http', ctx.clock);
    await recordings.begin(short, { rules: {} });
    short.record('http.request', 'in', { url: '/a' });
    close(recordings, short); // being written (held at the gate): the queue (1) is full
    close(recordings, long); // finds it full: dropped
    release();
    await recordings.flush();
    expect(await ctx.store.getRecording(long.id)).toBeNull();
    expect(await ctx.store.getRecording(short.id)).not.toBeNull();
    expect(partsOf(long.id)).toEqual([]);
    const degraded = (await ctx.store.tailAudit(10)).find(
      (r) => r.type === 'recording.degraded' && (r.data as { session: string }).session === long.id,
    );
    expect(degraded?.data).toMatchObject({ action: 'dropped', reason: 'queue-full' });
    expect(await registry.metrics()).toContain(
      'coatcheck_recording_degraded_total{frontend="http",action="dropped"} 1',
    );
  });
});

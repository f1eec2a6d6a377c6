import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { deflateRawSync } from 'node:zlib';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../src/core/errors.js';
import { recordingHook } from '../../src/gateway/hooks.js';
import { currentSecretMatcher, sharedKnownSecretIndex } from '../../src/gateway/known-secret-index.js';
import { gatewayMetricsFor } from '../../src/gateway/metrics.js';
import { createStoreRecorder, GatewaySession } from '../../src/gateway/session.js';
import { applyRetention, loadRecording, pruneSessions } from '../../src/recording/archive.js';
import {
  CHUNK_PLAIN_BYTES,
  chainNext,
  chainStart,
  chunkAad,
  dataKeyAad,
  MAGIC,
  openRecording,
  sealRecording,
} from '../../src/recording/format.js';
import { clip, type RecordingEvent } from '../../src/recording/model.js';
import { SessionRecordings } from '../../src/recording/recordings.js';
import { fileRecordingStorage, type RecordingStorage } from '../../src/recording/storage.js';
import type { Context } from '../../src/server/context.js';
import { recordingArchive, recordingsDir } from '../../src/server/recordings.js';
import { newDataKey, seal } from '../../src/vault/envelope.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const WRAP = Buffer.alloc(32, 7);
const events = (n: number, size = 10): RecordingEvent[] =>
  Array.from({ length: n }, (_, i) => ({
    at: i,
    kind: 'http.body',
    dir: 'out',
    data: { i, text: 'z'.repeat(size) },
  }));

function frame(chunks: Buffer[]): Buffer {
  return Buffer.concat([
    MAGIC,
    ...chunks.flatMap((c) => {
      const length = Buffer.alloc(4);
      length.writeUInt32BE(c.length);
      return [length, c];
    }),
  ]);
}

describe('the sealed format resists edits', () => {
  it('round-trips, chunked, and every edit fails closed', async () => {
    // Random text compresses badly: several chunks.
    const big = events(1500, 2000).map((e, i) => ({
      ...e,
      data: { text: `${i}:${Math.random().toString(36).repeat(60)}` },
    }));
    const sealed = await sealRecording('ses_a', big, WRAP);
    expect(sealed.chunks).toBeGreaterThan(2);
    expect(await openRecording('ses_a', sealed.file, sealed.hash, sealed.wrappedKey, WRAP)).toEqual(big);
    const open = (file: Buffer, id = 'ses_a', hash = sealed.hash) =>
      openRecording(id, file, hash, sealed.wrappedKey, WRAP).then(
        () => 'opened',
        (e: { code: string; message: string }) => `${e.code}: ${e.message}`,
      );
    // One flipped byte anywhere.
    for (const at of [MAGIC.length + 10, Math.floor(sealed.file.length / 2), sealed.file.length - 1]) {
      const edited = Buffer.from(sealed.file);
      edited[at] = edited[at]! ^ 1;
      expect(await open(edited)).toMatch(/^CC_ERR_RECORDING_UNREADABLE: recording ses_a: /);
    }
    // Last chunk cut off (a whole chunk, so the framing still parses): the chain says so.
    const cut = sealed.file.subarray(0, sealed.file.length - 200);
    expect(await open(cut)).toMatch(/CC_ERR_RECORDING_UNREADABLE/);
    // Another session's id: the data key's associated data does not match.
    expect(await open(sealed.file, 'ses_b', sealed.hash)).toMatch(/does not match its recorded hash/);
    // Erased: no key, nothing read.
    await expect(openRecording('ses_a', sealed.file, sealed.hash, null, WRAP)).rejects.toMatchObject({
      code: 'CC_ERR_RECORDING_UNREADABLE',
    });
  });

  it('refuses reordered chunks even with a recomputed hash, a huge length field, and a compression bomb', async () => {
    const key = newDataKey();
    const wrapped = seal(WRAP, key, dataKeyAad('ses_r'));
    const c0 = seal(
      key,
      deflateRawSync(Buffer.from('{"at":0,"kind":"a","dir":"in","data":{}}\n')),
      chunkAad('ses_r', 0),
    );
    const c1 = seal(
      key,
      deflateRawSync(Buffer.from('{"at":1,"kind":"b","dir":"in","data":{}}\n')),
      chunkAad('ses_r', 1),
    );
    const hashOf = (chunks: Buffer[]) =>
      chunks.reduce((h, c) => chainNext(h, c), chainStart('ses_r')).toString('hex');
    const ok = await openRecording('ses_r', frame([c0, c1]), hashOf([c0, c1]), wrapped, WRAP);
    expect(ok.map((e) => e.kind)).toEqual(['a', 'b']);
    // Someone who can rewrite the hash too still cannot reorder: each chunk names its index.
    await expect(openRecording('ses_r', frame([c1, c0]), hashOf([c1, c0]), wrapped, WRAP)).rejects.toThrow(
      /chunk 0 does not authenticate/,
    );
    const huge = Buffer.concat([MAGIC, Buffer.from([0xff, 0xff, 0xff, 0xff])]);
    await expect(openRecording('ses_r', huge, 'x', wrapped, WRAP)).rejects.toThrow(
      /longer than the file or the limit/,
    );
    const bomb = seal(key, deflateRawSync(Buffer.alloc(CHUNK_PLAIN_BYTES * 8, 0x20)), chunkAad('ses_r', 0));
    await expect(openRecording('ses_r', frame([bomb]), hashOf([bomb]), wrapped, WRAP)).rejects.toThrow(
      /chunk 0 does not decompress/,
    );
  });

  it('clips payloads at the limit, at a character boundary, binary as base64', () => {
    expect(clip(Buffer.from('héllo'), 2)).toEqual({ text: 'h', bytes: 6, truncated: true });
    expect(clip(Buffer.from('héllo'), 3)).toEqual({ text: 'hé', bytes: 6, truncated: true });
    expect(clip(Buffer.from([0xff, 0x00, 0x01]), 10)).toEqual({ base64: '/wAB', bytes: 3 });
    expect(clip('x'.repeat(100), 10)).toEqual({ text: 'x'.repeat(10), bytes: 100, truncated: true });
    expect(clip('', 10)).toEqual({ text: '', bytes: 0 });
  });
});

describe('session recordings: caps, the bounded queue, retention', () => {
  let home: TestHome;
  let ctx: Context;
  beforeAll(async () => {
    home = await makeTestHome();
    ctx = await home.open();
  });
  afterAll(async () => {
    await ctx.close();
    home.remove();
  });

  const service = (
    storage: RecordingStorage,
    settings: Partial<SessionRecordings['settings']> = {},
    knownMatcher = () => currentSecretMatcher(sharedKnownSecretIndex(ctx.vault, ctx.store)),
  ) => {
    const registry = new Registry();
    return {
      registry,
      recordings: new SessionRecordings({
        store: ctx.store,
        audit: ctx.audit,
        storage,
        wrapKey: ctx.keys.index.recording,
        knownMatcher,
        log: pino({ level: 'silent' }),
        registry,
        clock: ctx.clock,
        settings: {
          default: 'full',
          limits: { maxSessionBytes: 64 * 1024, maxBodyBytes: 1024, maxRowsPerStatement: 10 },
          maxQueued: 1,
          whenFull: 'refuse',
          ...settings,
        },
      }),
    };
  };
  /** File storage whose writes wait until released: fills the queue. */
  const held = () => {
    const files = fileRecordingStorage(recordingsDir(ctx));
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => {
      release = () => resolve();
    });
    const storage: RecordingStorage = {
      ...files,
      put: async (location, data) => {
        await gate;
        await files.put(location, data);
      },
    };
    return { storage, release: () => release() };
  };
  const close = (r: SessionRecordings, s: GatewaySession) =>
    r.hook.close(s, s.toRecord('ok', {}, ctx.clock.now()));

  it('with the queue full, refuses a full session (audited, counted) or degrades it to metadata', async () => {
    for (const whenFull of ['refuse', 'metadata'] as const) {
      const { storage, release } = held();
      const { recordings, registry } = service(storage, { whenFull });
      const first = new GatewaySession('http', ctx.clock);
      await recordings.begin(first, { rules: {} });
      first.record('http.request', 'in', { url: '/a' });
      close(recordings, first); // being written (held): the queue (1) is full
      const third = new GatewaySession('http', ctx.clock);
      third.connection = 'api';
      const began = recordings.begin(third, { rules: {} });
      if (whenFull === 'refuse') {
        await expect(began).rejects.toMatchObject({ code: 'CC_ERR_RECORDING_BACKLOG' });
      } else {
        await began;
        expect(third.recordingMode).toBe('metadata');
        expect(third.recording).toBeNull();
      }
      const action = whenFull === 'refuse' ? 'refused' : 'metadata';
      expect(await registry.metrics()).toContain(
        `coatcheck_recording_degraded_total{frontend="http",action="${action}"} 1`,
      );
      const tail = await ctx.store.tailAudit(5);
      expect(
        tail.find(
          (r) => r.type === 'recording.degraded' && (r.data as { session: string }).session === third.id,
        )?.data,
      ).toEqual({
        session: third.id,
        frontend: 'http',
        connection: 'api',
        action,
        reason: 'queue-full',
      });
      release();
      await recordings.flush();
    }
  });

  it('drops a recording (audited) when the known-secret index cannot say it is current, rather than store it unscrubbed', async () => {
    const storage = fileRecordingStorage(recordingsDir(ctx));
    const canary = `stale-index-canary-${Date.now()}`;
    // What the shared index answers while stale: the scrub cannot run.
    const { recordings } = service(storage, { maxQueued: 4 }, async () => {
      throw new CoatcheckError('CC_ERR_GATEWAY_INSPECTION_FAILED', 'the known-secret index is stale');
    });
    const session = new GatewaySession('http', ctx.clock);
    await recordings.begin(session, { rules: {} });
    session.record('http.response', 'out', { body: canary });
    close(recordings, session);
    await recordings.flush();
    const tail = await ctx.store.tailAudit(10);
    expect(
      tail.find(
        (r) => r.type === 'recording.degraded' && (r.data as { session: string }).session === session.id,
      )?.data,
    ).toMatchObject({ action: 'dropped', reason: 'write-failed' });
    expect(await storage.get(storage.locate(session.id), 1 << 20)).toBeNull();
  });

  it('caps a session at maxSessionBytes: later events are counted and one marker says so', async () => {
    const { recordings } = service(fileRecordingStorage(recordingsDir(ctx)), { maxQueued: 10 });
    const session = new GatewaySession('postgres', ctx.clock);
    await recordings.begin(session, { rules: { recording: 'full' } });
    for (let i = 0; i < 200; i++) session.record('pg.query', 'in', { sql: `SELECT ${'x'.repeat(1000)}` });
    expect(session.recording!.dropped).toBeGreaterThan(100);
    close(recordings, session);
    await recordings.flush();
    const { events: kept } = await loadRecording(recordingArchive(ctx), session.id);
    expect(kept.filter((e) => e.kind === 'recording.truncated')).toHaveLength(1);
    // 64 KiB of about 1 KiB events, the marker and the end.
    expect(kept.length).toBeGreaterThan(55);
    expect(kept.length).toBeLessThan(70);
    const sealed = (await ctx.store.tailAudit(3)).findLast((r) => r.type === 'recording.sealed')!;
    expect((sealed.data as { dropped: number }).dropped).toBeGreaterThan(100);
  });

  it('off and metadata keep no full recording; off keeps no session row either', async () => {
    const { recordings, registry } = service(fileRecordingStorage(recordingsDir(ctx)), { maxQueued: 10 });
    const recorder = createStoreRecorder(ctx.store, pino({ level: 'silent' }), gatewayMetricsFor(registry));
    for (const mode of ['off', 'metadata'] as const) {
      const session = new GatewaySession('http', ctx.clock);
      await recordings.begin(session, { rules: { recording: mode } });
      session.record('http.request', 'in', { url: '/x' });
      expect(session.recording).toBeNull();
      expect(session.recordingMode).toBe(mode);
      close(recordings, session);
      const record = session.toRecord('ok', {}, ctx.clock.now());
      recordingHook(recorder).close(session, record);
      await recordings.flush();
      await recorder.flush();
      expect(await ctx.store.getRecording(session.id)).toBeNull();
      expect(await ctx.store.getSession(session.id)).toEqual(mode === 'off' ? null : record);
    }
  });

  it('retention erases by age, then the oldest beyond the size budget: key destroyed, file removed, audited', async () => {
    const { recordings } = service(fileRecordingStorage(recordingsDir(ctx)), { maxQueued: 10 });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const session = new GatewaySession('http', ctx.clock);
      await recordings.begin(session, { rules: { recording: 'full' } });
      session.record('http.request', 'in', { url: `/${i}` });
      close(recordings, session);
      await recordings.flush();
      ids.push(session.id);
    }
    const archive = recordingArchive(ctx);
    const live = await ctx.store.listRecordings({ live: true, limit: 100 });
    const budget = live.filter((r) => ids.includes(r.id)).reduce((s, r) => s + r.bytes, 0) - 1;
    // Nothing is old; the budget forces out exactly the oldest (the other tests' recordings first).
    const result = await applyRetention(
      archive,
      ctx.audit,
      ctx.clock,
      { maxAgeMs: 3_600_000, maxBytes: budget },
      'gateway:test',
    );
    expect(result.erased).toContain(ids[0]);
    expect(result.erased).not.toContain(ids[2]);
    const row = (await ctx.store.getRecording(ids[0]!))!;
    expect(row.wrappedKey).toBeNull();
    expect(existsSync(join(recordingsDir(ctx), row.location))).toBe(false);
    expect(
      (await ctx.store.tailAudit(20)).some(
        (r) => r.type === 'recording.erased' && (r.data as { session: string }).session === ids[0],
      ),
    ).toBe(true);
    // Everything older than 0 ms goes.
    const all = await applyRetention(
      archive,
      ctx.audit,
      ctx.clock,
      { maxAgeMs: -1, maxBytes: Number.MAX_SAFE_INTEGER },
      'gateway:test',
    );
    expect(all.erased).toContain(ids[2]);
    expect(await ctx.store.listRecordings({ live: true, limit: 100 })).toEqual([]);
  });

  it('retention deletes session rows older than maxAge in one audited step, and keeps the rest', async () => {
    const now = ctx.clock.now();
    const row = (id: string, startedAt: number) => ({
      id,
      frontend: 'http',
      principal: null,
      connection: 'api',
      startedAt,
      endedAt: startedAt + 3,
      outcome: 'ok',
      summary: { method: 'GET', status: 200 },
    });
    const old = ['ses_old_1', 'ses_old_2', 'ses_old_3'];
    for (const [i, id] of old.entries()) await ctx.store.insertSession(row(id, now - 7_200_000 - i));
    await ctx.store.insertSession(row('ses_recent', now - 60_000));
    const limits = { maxAgeMs: 3_600_000, maxBytes: Number.MAX_SAFE_INTEGER };
    const result = await applyRetention(recordingArchive(ctx), ctx.audit, ctx.clock, limits, 'gateway:test');
    expect(result.sessionsPruned).toBe(3);
    for (const id of old) expect(await ctx.store.getSession(id)).toBeNull();
    expect(await ctx.store.getSession('ses_recent')).not.toBeNull();
    const pruned = (await ctx.store.tailAudit(10)).filter((r) => r.type === 'sessions.pruned');
    const record = pruned.at(-1)?.data as { before: number; count: number };
    expect(record.count).toBe(3);
    expect(record.before).toBeGreaterThanOrEqual(now - 3_600_000);
    expect(record.before).toBeLessThanOrEqual(ctx.clock.now() - 3_600_000);
    // Nothing left to prune: no record.
    const again = await applyRetention(recordingArchive(ctx), ctx.audit, ctx.clock, limits, 'gateway:test');
    expect(again.sessionsPruned).toBe(0);
    expect((await ctx.store.tailAudit(10)).filter((r) => r.type === 'sessions.pruned')).toHaveLength(
      pruned.length,
    );
    // A backlog goes in batches, each its own transaction and record.
    for (let i = 0; i < 5; i++) await ctx.store.insertSession(row(`ses_backlog_${i}`, now - 7_200_000 - i));
    expect(await pruneSessions(ctx.store, ctx.audit, now - 3_600_000, 'gateway:test', 2)).toBe(5);
    const counts = (await ctx.store.tailAudit(10))
      .filter((r) => r.type === 'sessions.pruned')
      .slice(pruned.length)
      .map((r) => (r.data as { count: number }).count);
    expect(counts).toEqual([2, 2, 1]);
  });
});

import { execFile } from 'node:child_process';
import {
  appendFileSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import pino from 'pino';
import { Registry } from 'prom-client';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentRef } from '../../../src/core/principal.js';
import { GatewayDriver } from '../../../src/gateway/driver.js';
import { currentSecretMatcher, sharedKnownSecretIndex } from '../../../src/gateway/known-secret-index.js';
import { GatewaySession } from '../../../src/gateway/session.js';
import { SessionRecordings } from '../../../src/recording/recordings.js';
import { fileRecordingStorage } from '../../../src/recording/storage.js';
import type { Context } from '../../../src/server/context.js';
import type { HttpFrontend } from '../../../src/server/frontends.js';
import { httpGateway } from '../../../src/server/frontends.js';
import { recordingStorage, recordingsDir, sessionRecordings } from '../../../src/server/recordings.js';
import { CLI_ENTRY, cli } from '../../helpers/cli.js';
import { makeTestHome, type TestHome } from '../../helpers/home.js';
import { startUpstream, type Upstream } from '../http/harness.js';

const require = createRequire(import.meta.url);
const S3rver = require('s3rver') as new (
  options: Record<string, unknown>,
) => {
  run(): Promise<{ address: string; port: number }>;
  close(): Promise<void>;
};
const { DUMMY_ACCOUNT } = require('s3rver/lib/models/account') as {
  DUMMY_ACCOUNT: { createKeyPair(id: string, secret: string): void };
};

/** A secret the upstream echoes: never in an object, a log, an export or the audit log. */
const CANARY = 'rec-s3-canary-Aa1Bb2Cc3Dd4Ee5';
/** The object store's secret access key (in the vault): never logged, audited or recorded. */
const S3_SECRET = 'rec-s3-key-canary-Zz9Yy8Xx7Ww6Vv5';
const S3_KEY_ID = 'CCRECTESTKEY0001';
const BUCKET = 'coatcheck-rec';
const PREFIX = 'gw1/rec/';

describe('recordings in an S3-compatible object store (s3rver, started by the test)', () => {
  let s3dir: string;
  let server: InstanceType<typeof S3rver>;
  let endpoint: string;
  let s3: S3Client;
  let home: TestHome;
  let ctx: Context;
  let up: Upstream;
  let driver: GatewayDriver;
  let http: HttpFrontend;
  let agentKey: string;
  let ticket: string;
  let seenBody = '';
  let logs = '';
  let sessionId = '';
  const run = (args: string[]) => cli(['--dir', home.home.dir, ...args]);
  const objects = async () =>
    ((await s3.send(new ListObjectsV2Command({ Bucket: BUCKET }))).Contents ?? []).map((o) => o.Key!);
  const object = async (Key: string) =>
    Buffer.from(
      await (await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key }))).Body!.transformToByteArray(),
    );

  beforeAll(async () => {
    s3dir = mkdtempSync(join(tmpdir(), 'coatcheck-s3-'));
    DUMMY_ACCOUNT.createKeyPair(S3_KEY_ID, S3_SECRET);
    server = new S3rver({
      address: '127.0.0.1',
      port: 0,
      silent: true,
      directory: s3dir,
      configureBuckets: [{ name: BUCKET }],
    });
    const { port } = await server.run();
    endpoint = `http://127.0.0.1:${port}`;
    s3 = new S3Client({
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: S3_KEY_ID, secretAccessKey: S3_SECRET },
    });

    home = await makeTestHome();
    appendFileSync(
      home.home.configFile,
      `recording:\n  storage:\n    kind: s3\n    endpoint: ${endpoint}\n    bucket: ${BUCKET}\n    prefix: ${PREFIX}\n    credentials:\n      secret: rec-s3\n`,
    );
    ctx = await home.open();
    await ctx.vault.addSecret(
      {
        name: 'rec-s3',
        value: Buffer.from(JSON.stringify({ accessKeyId: S3_KEY_ID, secretAccessKey: S3_SECRET })),
        allow: [],
      },
      'admin:test',
    );
    up = await startUpstream();
    up.handle('/echo', (req, res) => {
      res.setHeader('content-type', 'text/plain');
      res.end(`auth=${req.headers.authorization}\n`);
    });
    const log = pino(
      { level: 'debug' },
      new Writable({
        write(chunk: Buffer, _e, cb) {
          logs += chunk.toString();
          cb();
        },
      }),
    );
    driver = new GatewayDriver({
      registry: ctx.metrics,
      log,
      store: ctx.store,
      clock: ctx.clock,
      recordings: sessionRecordings({ ...ctx, log }),
    });
    http = await driver.start(httpGateway(ctx, { host: '127.0.0.1', port: 0 }));
    const { key, agent } = await ctx.agents.create({ name: 's3-agent' }, 'admin:test');
    agentKey = key;
    await ctx.vault.addSecret(
      { name: 'api-token', value: Buffer.from(CANARY), allow: ['api'] },
      'admin:test',
    );
    await ctx.connections.add(
      { name: 'api', type: 'http', url: up.url, rules: { recording: 'full' } },
      'admin:test',
    );
    ticket = (
      await ctx.vault.issueTicket({ secret: 'api-token', principal: agentRef(agent.id) }, 'admin:test')
    ).ticket;
    const res = await request(`${http.url}/c/api/echo?via=s3`, {
      method: 'POST',
      headers: {
        'proxy-authorization': `Bearer ${agentKey}`,
        authorization: `Bearer ${ticket}`,
        'content-type': 'text/plain',
      },
      body: `hello object store ${'x'.repeat(100)}`,
    });
    seenBody = await res.body.text();
    expect(res.statusCode).toBe(200);
    await driver.recordings!.flush();
    const listed = await ctx.store.listRecordings({ limit: 10 });
    expect(listed).toHaveLength(1);
    sessionId = listed[0]!.id;
  });

  afterAll(async () => {
    await driver?.stop();
    await ctx?.close();
    await up?.close();
    await server?.close();
    home?.remove();
    rmSync(s3dir, { recursive: true, force: true });
  });

  it('stores the sealed recording as one object under the prefix, and nothing under the home', async () => {
    const row = (await ctx.store.getRecording(sessionId))!;
    expect(row.location).toBe(`s3:${sessionId}.ccr`);
    expect(await objects()).toEqual([`${PREFIX}${sessionId}.ccr`]);
    const body = await object(`${PREFIX}${sessionId}.ccr`);
    expect(body.subarray(0, 7).toString('latin1')).toBe('CCREC1\n');
    expect(body.length).toBe(row.bytes);
    expect(() => readdirSync(recordingsDir(ctx))).toThrow(/ENOENT/);
    const sealed = (await ctx.store.tailAudit(20)).find((r) => r.type === 'recording.sealed')!;
    expect((sealed.data as { hash: string }).hash).toBe(row.hash);
  });

  it('replays and exports from the object store; the export verifies offline', async () => {
    const replay = await run(['sessions', 'replay', sessionId]);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toContain('> POST /c/api/echo?via=s3 HTTP/1.1');
    expect(replay.stdout).toContain(`> authorization: Bearer ${ticket}`);
    expect(replay.stdout).toContain('hello object store');
    expect(replay.stdout).toContain(seenBody.trim());
    const exported = await run(['--json', 'sessions', 'export', sessionId]);
    expect(exported.code).toBe(0);
    const file = join(home.dir, 's3-export.json');
    writeFileSync(file, exported.stdout);
    const check = await run(['sessions', 'verify-export', file]);
    expect(check.code).toBe(0);
    expect(check.stdout).toMatch(/^export intact/);
  });

  it('keeps both canaries out of every object, the server files, the log, the audit log and the CLI output', async () => {
    const texts = [
      logs,
      JSON.stringify(await ctx.store.readAudit(0, 10_000)),
      (await run(['--json', 'sessions', 'export', sessionId])).stdout,
      (await run(['sessions', 'replay', sessionId])).stdout,
      (await run(['audit', 'verify'])).stdout,
    ];
    for (const key of await objects()) texts.push((await object(key)).toString('latin1'));
    const walk = (dir: string): void => {
      for (const name of readdirSync(dir)) {
        const path = join(dir, name);
        if (statSync(path).isDirectory()) walk(path);
        else texts.push(readFileSync(path).toString('latin1'));
      }
    };
    walk(s3dir);
    expect(texts.length).toBeGreaterThan(6);
    for (const text of texts) {
      for (const canary of [CANARY, S3_SECRET]) {
        expect(text).not.toContain(canary);
        expect(text).not.toContain(Buffer.from(canary).toString('base64').slice(0, 20));
      }
      expect(text).not.toContain(agentKey);
    }
    // The recording holds the ticket the agent saw.
    expect(texts[2]).toContain(ticket);
  });

  it('audit verify detects an edited and a removed object, and accepts the original back', async () => {
    const key = `${PREFIX}${sessionId}.ccr`;
    expect((await run(['audit', 'verify'])).code).toBe(0);
    const original = await object(key);
    const edited = Buffer.from(original);
    edited[edited.length - 3] = edited[edited.length - 3]! ^ 0x40;
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: edited }));
    const afterEdit = await run(['audit', 'verify']);
    expect(afterEdit.code).toBe(1);
    expect(afterEdit.stdout).toContain(
      `recording damaged (edited): recording ${sessionId}: its file was changed`,
    );
    expect((await run(['sessions', 'replay', sessionId])).stderr).toContain('CC_ERR_RECORDING_UNREADABLE');
    await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: key }));
    const afterRemove = await run(['audit', 'verify']);
    expect(afterRemove.code).toBe(1);
    expect(afterRemove.stdout).toContain(
      `recording damaged (removed): recording ${sessionId}: its file is gone`,
    );
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: original }));
    expect((await run(['audit', 'verify'])).code).toBe(0);
  });

  it('bounds what it reads: an object larger than the limit is refused, not loaded', async () => {
    const storage = recordingStorage(ctx);
    const location = `s3:${sessionId}.ccr`;
    const size = (await storage.get(location, 1 << 20))!.length;
    await expect(storage.get(location, size - 1)).rejects.toMatchObject({
      code: 'CC_ERR_RECORDING_UNREADABLE',
    });
    // A location that names another prefix or leaves the prefix is refused before any request.
    for (const bad of ['s3:../x.ccr', 's3:ses_a/../../b.ccr', 's3:other/ses_a.ccr', 'ses_a.ccr/../x']) {
      await expect(storage.get(bad, 1 << 20)).rejects.toMatchObject({ code: 'CC_ERR_RECORDING_UNREADABLE' });
    }
  });

  it('a write the store refuses (wrong access key) is dropped loudly: audited as write-failed, counted, no key in the log', async () => {
    const wrongHome = { ...ctx, config: structuredClone(ctx.config) } as Context;
    const storage = wrongHome.config.recording.storage as { credentials: unknown };
    storage.credentials = { secret: 'rec-s3-wrong' };
    await ctx.vault.addSecret(
      {
        name: 'rec-s3-wrong',
        value: Buffer.from(JSON.stringify({ accessKeyId: 'NOSUCHKEY', secretAccessKey: S3_SECRET })),
        allow: [],
      },
      'admin:test',
    );
    let wrongLogs = '';
    const registry = new Registry();
    const recordings = new SessionRecordings({
      store: ctx.store,
      audit: ctx.audit,
      storage: recordingStorage(wrongHome),
      wrapKey: ctx.keys.index.recording,
      knownMatcher: () => currentSecretMatcher(sharedKnownSecretIndex(ctx.vault, ctx.store)),
      log: pino(
        { level: 'debug' },
        new Writable({
          write(chunk: Buffer, _e, cb) {
            wrongLogs += chunk.toString();
            cb();
          },
        }),
      ),
      registry,
      clock: ctx.clock,
      settings: { ...sessionRecordings(ctx).settings, default: 'full' },
    });
    const session = new GatewaySession('http', ctx.clock);
    await recordings.begin(session, { rules: {} });
    session.record('http.request', 'in', { url: '/refused-by-store' });
    recordings.hook.close(session, session.toRecord('ok', {}, ctx.clock.now()));
    await recordings.flush();
    expect(await ctx.store.getRecording(session.id)).toBeNull();
    const degraded = (await ctx.store.tailAudit(10)).find(
      (r) => r.type === 'recording.degraded' && (r.data as { session: string }).session === session.id,
    );
    expect(degraded?.data).toMatchObject({ action: 'dropped', reason: 'write-failed' });
    expect(await registry.metrics()).toContain(
      'coatcheck_recording_degraded_total{frontend="http",action="dropped"} 1',
    );
    expect(wrongLogs).toContain('CC_ERR_RECORDING_STORAGE');
    expect(wrongLogs).toContain('InvalidAccessKeyId (HTTP 403)');
    expect(wrongLogs).not.toContain(S3_SECRET);
    expect(await objects()).toEqual([`${PREFIX}${sessionId}.ccr`]);
  });

  it('a long session is stored in parts while it runs, read back whole, and erased part by part', async () => {
    const recordings = sessionRecordings(ctx);
    const session = new GatewaySession('http', ctx.clock);
    await recordings.begin(session, { rules: { recording: 'full' } });
    for (let i = 0; i < 2600; i++) {
      session.record('ws.message', 'in', {
        i,
        text: `${i}${'s'.repeat(1000)}${i % 100 === 0 ? CANARY : ''}`,
      });
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    for (let i = 0; i < 500 && !(await objects()).includes(`${PREFIX}${session.id}.p1.ccr`); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(await objects()).toContain(`${PREFIX}${session.id}.p0.ccr`);
    recordings.hook.close(session, session.toRecord('ok', {}, ctx.clock.now()));
    await recordings.flush();
    const keys = (await objects()).filter((k) => k.includes(session.id));
    expect(keys.sort()).toEqual(
      [`${PREFIX}${session.id}.ccr`, `${PREFIX}${session.id}.p0.ccr`, `${PREFIX}${session.id}.p1.ccr`].sort(),
    );
    for (const key of keys) expect((await object(key)).toString('latin1')).not.toContain(CANARY);
    const replay = await run(['--json', 'sessions', 'replay', session.id]);
    expect(replay.code).toBe(0);
    const events = (JSON.parse(replay.stdout) as { events: Array<{ data: { i?: number } }> }).events;
    expect(events.filter((e) => e.data.i !== undefined).map((e) => e.data.i)).toEqual(
      Array.from({ length: 2600 }, (_, i) => i),
    );
    expect((await run(['audit', 'verify'])).code).toBe(0);
    await s3.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: `${PREFIX}${session.id}.p1.ccr` }));
    const removed = await run(['audit', 'verify']);
    expect(removed.code).toBe(1);
    expect(removed.stdout).toContain(
      `recording damaged (removed): recording ${session.id}: its file is gone`,
    );
    expect((await run(['sessions', 'erase', session.id])).code).toBe(0);
    expect((await objects()).filter((k) => k.includes(session.id))).toEqual([]);
    expect((await run(['audit', 'verify'])).code).toBe(0);
  });

  it('a recording written to files before the switch to S3 is still read from its file', async () => {
    const before = new SessionRecordings({
      store: ctx.store,
      audit: ctx.audit,
      storage: fileRecordingStorage(recordingsDir(ctx)),
      wrapKey: ctx.keys.index.recording,
      knownMatcher: () => currentSecretMatcher(sharedKnownSecretIndex(ctx.vault, ctx.store)),
      log: pino({ level: 'silent' }),
      registry: new Registry(),
      clock: ctx.clock,
      settings: { ...sessionRecordings(ctx).settings, default: 'full' },
    });
    const session = new GatewaySession('http', ctx.clock);
    await before.begin(session, { rules: {} });
    session.record('http.request', 'in', { method: 'GET', url: '/written-to-a-file', headers: [] });
    before.hook.close(session, session.toRecord('ok', {}, ctx.clock.now()));
    await before.flush();
    expect((await ctx.store.getRecording(session.id))!.location).toBe(`${session.id}.ccr`);
    const replay = await run(['sessions', 'replay', session.id]);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toContain('/written-to-a-file');
    expect((await run(['audit', 'verify'])).code).toBe(0);
    expect((await objects()).some((k) => k.includes(session.id))).toBe(false);
    expect((await run(['sessions', 'erase', session.id])).code).toBe(0);
    expect(readdirSync(recordingsDir(ctx))).toEqual([]);
  });

  it('erasure destroys the data key and deletes the object; verify accepts the audited erasure', async () => {
    const erased = await run(['sessions', 'erase', sessionId]);
    expect(erased.code).toBe(0);
    expect((await ctx.store.getRecording(sessionId))!.wrappedKey).toBeNull();
    await expect(
      s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: `${PREFIX}${sessionId}.ccr` })),
    ).rejects.toMatchObject({ name: 'NotFound' });
    expect(await objects()).toEqual([]);
    expect((await run(['sessions', 'replay', sessionId])).stderr).toContain('CC_ERR_RECORDING_UNREADABLE');
    expect((await run(['audit', 'verify'])).code).toBe(0);
  });

  it('the S3 client loads only for commands that read recordings', async () => {
    // A child process: the CLI as a user runs it, then the module cache says what was loaded.
    const probe = (args: string[]) =>
      promisify(execFile)(
        process.execPath,
        [
          '--import',
          'tsx',
          '--input-type=module',
          '-e',
          `import { createRequire } from 'node:module';
           const { runCli } = await import(${JSON.stringify(CLI_ENTRY.replace(/main\.ts$/, 'program.ts'))});
           const { PassThrough, Readable } = await import('node:stream');
           const sink = new PassThrough(); sink.resume();
           await runCli(${JSON.stringify(['--dir', home.home.dir, ...args])}, { stdin: Readable.from([]), stdout: sink, stderr: sink, env: {} });
           const loaded = Object.keys(createRequire(import.meta.url).cache).some((k) => k.includes('@aws-sdk'));
           process.stdout.write(loaded ? 'loaded' : 'not loaded');`,
        ],
        { env: { PATH: process.env.PATH, AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' } },
      ).then((r) => r.stdout);
    expect(await probe(['sessions', 'list'])).toBe('not loaded');
    expect(await probe(['--version'])).toBe('not loaded');
    expect(await probe(['sessions', 'replay', sessionId])).toBe('loaded');
  });
});

import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../../src/admin/admin-server.js';
import { visibleControls } from '../../../src/cli/io.js';
import { agentRef } from '../../../src/core/principal.js';
import { GatewayDriver } from '../../../src/gateway/driver.js';
import { GatewaySession } from '../../../src/gateway/session.js';
import { loadRecording } from '../../../src/recording/archive.js';
import type { Context } from '../../../src/server/context.js';
import type { HttpFrontend } from '../../../src/server/frontends.js';
import { httpGateway } from '../../../src/server/frontends.js';
import { recordingArchive, recordingsDir, sessionRecordings } from '../../../src/server/recordings.js';
import { cli } from '../../helpers/cli.js';
import { makeTestHome, type TestHome } from '../../helpers/home.js';
import { startUpstream, type Upstream } from '../http/harness.js';

const CANARY = 'rec-canary-Qq1Ww2Ee3Rr4Tt5Yy6';
/** What a hostile upstream puts in its answer: an OSC 52 clipboard write and a carriage return. */
const HOSTILE = '\u001b]52;c;ZXZpbA==\u0007\roverwritten';

describe('full HTTP session recordings: recorded after reversal, sealed, replayed, exported, verified', () => {
  let home: TestHome;
  let ctx: Context;
  let up: Upstream;
  let driver: GatewayDriver;
  let http: HttpFrontend;
  let admin: AdminServer;
  let agentKey: string;
  let ticket: string;
  let seenBody = '';
  let logs = '';
  let okSession = '';
  let refusedSession = '';
  const run = (args: string[]) => cli(['--dir', home.home.dir, ...args]);

  beforeAll(async () => {
    home = await makeTestHome();
    ctx = await home.open();
    up = await startUpstream();
    // The upstream echoes the credential it received: the gateway must hand the agent a ticket instead.
    up.handle('/echo', (req, res) => {
      res.setHeader('content-type', 'text/plain');
      res.end(`auth=${req.headers.authorization}\n${HOSTILE}`);
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
      recordings: sessionRecordings(ctx),
    });
    http = await driver.start(httpGateway(ctx, { host: '127.0.0.1', port: 0 }));
    admin = await startAdminServer(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'silent' }));
    const { key, agent } = await ctx.agents.create({ name: 'rec-agent' }, 'admin:test');
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

    const ok = await request(`${http.url}/c/api/echo?q=1`, {
      method: 'POST',
      headers: {
        'proxy-authorization': `Bearer ${agentKey}`,
        authorization: `Bearer ${ticket}`,
        'content-type': 'text/plain',
      },
      body: 'hello upstream',
    });
    seenBody = await ok.body.text();
    expect(ok.statusCode).toBe(200);
    // A forged ticket (bad checksum): refused, and recorded as refused.
    const forged = `${ticket.slice(0, -1)}${ticket.endsWith('Z') ? 'Y' : 'Z'}`;
    const refused = await request(`${http.url}/c/api/echo`, {
      headers: { 'proxy-authorization': `Bearer ${agentKey}`, authorization: `Bearer ${forged}` },
    });
    await refused.body.text();
    expect(refused.statusCode).toBe(400);
    await driver.recordings!.flush();
    const listed = await ctx.store.listRecordings({ limit: 10 });
    expect(listed).toHaveLength(2);
    [refusedSession, okSession] = listed.map((r) => r.id) as [string, string];
  });

  afterAll(async () => {
    await admin?.close();
    await driver?.stop();
    await ctx?.close();
    await up?.close();
    home?.remove();
  });

  it('the upstream saw the secret; the agent and the recording saw a ticket', () => {
    expect(up.received.some((r) => r.headers.authorization === `Bearer ${CANARY}`)).toBe(true);
    expect(seenBody).not.toContain(CANARY);
    expect(seenBody).toMatch(/^auth=Bearer cct_[0-9A-Za-z]{28}\n/);
  });

  it('replays the transcript exactly as the client saw it, control characters escaped', async () => {
    const replay = await run(['sessions', 'replay', okSession]);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toContain(`> POST /c/api/echo?q=1 HTTP/1.1`);
    expect(replay.stdout).toContain(`> authorization: Bearer ${ticket}`);
    expect(replay.stdout).toContain('> proxy-authorization: [agent key]');
    expect(replay.stdout).toContain('hello upstream');
    expect(replay.stdout).toContain('< HTTP 200');
    // The body the client received, byte for byte, once terminal controls are made visible.
    expect(replay.stdout).toContain(visibleControls(seenBody));
    expect(replay.stdout).toContain('\\x1b]52;c;ZXZpbA==\\x07\\x0doverwritten');
    expect(replay.stdout).not.toMatch(/[\u001b\u0007\r]/);

    const refused = await run(['sessions', 'replay', refusedSession]);
    expect(refused.stdout).toContain('-- coatcheck refused: CC_ERR_TICKET_CHECKSUM (400)');

    const json = await run(['--json', 'sessions', 'replay', okSession]);
    const events = (
      JSON.parse(json.stdout) as { events: Array<{ kind: string; data: Record<string, unknown> }> }
    ).events;
    expect(events.map((e) => e.kind)).toEqual(['http.request', 'http.response', 'http.body', 'session.end']);
    expect((events[2]!.data.body as { text: string }).text).toBe(seenBody);

    const paced = await run(['sessions', 'replay', okSession, '--speed', '1000']);
    expect(paced.code).toBe(0);
    expect(paced.stdout).toContain(visibleControls(seenBody));
    expect((await run(['sessions', 'replay', okSession, '--speed', '0'])).code).not.toBe(0);
  });

  it('finds sessions by connection, ticket, text and time, and marks how each was recorded', async () => {
    const ids = async (args: string[]) =>
      (JSON.parse((await run(['--json', 'sessions', 'list', ...args])).stdout) as Array<{ id: string }>).map(
        (r) => r.id,
      );
    expect(await ids(['--connection', 'api'])).toEqual([refusedSession, okSession]);
    expect(await ids(['--connection', 'nope'])).toEqual([]);
    expect(await ids(['--ticket', ticket])).toEqual([okSession]);
    expect(await ids(['--text', 'hello upstream'])).toEqual([okSession]);
    expect(await ids(['--text', 'CC_ERR_TICKET_CHECKSUM'])).toEqual([refusedSession]);
    expect(await ids(['--since', new Date(Date.now() + 60_000).toISOString()])).toEqual([]);
    const all = JSON.parse((await run(['--json', 'sessions', 'list'])).stdout) as Array<{ recorded: string }>;
    expect(all.map((r) => r.recorded)).toEqual(['full', 'full']);
  });

  it('exports a bundle that verifies without the gateway, and fails when edited', async () => {
    const exported = await run(['--json', 'sessions', 'export', okSession]);
    expect(exported.code).toBe(0);
    const file = join(home.dir, 'export.json');
    writeFileSync(file, exported.stdout);
    const check = await run(['sessions', 'verify-export', file]);
    expect(check.stdout).toMatch(
      /^export intact: the sealed recording chains to the hash in audit record \d+/,
    );
    expect(check.code).toBe(0);
    const bundle = JSON.parse(exported.stdout) as {
      events: Array<{ data: Record<string, unknown> }>;
      audit: Array<{ type: string }>;
    };
    expect(bundle.audit.map((a) => a.type)).toContain('recording.sealed');
    bundle.events[0]!.data.method = 'DELETE';
    writeFileSync(file, JSON.stringify(bundle));
    const edited = await run(['sessions', 'verify-export', file]);
    expect(edited.code).toBe(1);
    expect(edited.stdout).toContain('the events differ from the sealed recording');
  });

  it('keeps canaries and the agent key out of every recording file, export, replay and log', async () => {
    const outputs = [
      (await run(['--json', 'sessions', 'export', okSession])).stdout,
      (await run(['--json', 'sessions', 'export', refusedSession])).stdout,
      (await run(['--json', 'sessions', 'replay', okSession])).stdout,
      (await run(['sessions', 'replay', refusedSession])).stdout,
      logs,
    ];
    const dir = recordingsDir(ctx);
    for (const name of readdirSync(dir)) outputs.push(readFileSync(join(dir, name)).toString('latin1'));
    for (const text of outputs) {
      expect(text).not.toContain(CANARY);
      expect(text).not.toContain(Buffer.from(CANARY).toString('base64').slice(0, 24));
      expect(text).not.toContain(agentKey);
    }
  });

  it('scrubs a known secret a front-end reported by mistake (defence in depth), counted', async () => {
    const session = new GatewaySession('http', ctx.clock);
    await driver.recordings!.begin(session, { rules: { recording: 'full' } });
    session.record('http.request', 'in', {
      url: `/leak?k=${CANARY}`,
      body: { text: `x${CANARY}y`, bytes: 1 },
    });
    driver.hooks.close(session, session.toRecord('ok', {}, ctx.clock.now()));
    await driver.recordings!.flush();
    const { events } = await loadRecording(recordingArchive(ctx), session.id);
    const text = JSON.stringify(events);
    expect(text).not.toContain(CANARY);
    expect(text).toMatch(/\/leak\?k=\[secret:sec_[0-9A-Za-z]+\]/);
    const metrics = await ctx.metrics.metrics();
    expect(metrics).toContain('coatcheck_recording_scrubbed_total{frontend="http"} 2');
  });

  it('an agent key cannot read recordings from the admin API, nor another user the files', async () => {
    for (const path of [`/v1/sessions/${okSession}/recording`, `/v1/sessions/${okSession}/export`]) {
      const res = await request(`${admin.url}${path}`, { headers: { authorization: `Bearer ${agentKey}` } });
      expect(res.statusCode).toBe(401);
      const body = await res.body.text();
      expect(body).toContain('CC_ERR_ADMIN_UNAUTHORIZED');
      expect(body).not.toContain('hello upstream');
    }
    // Through the admin API with the admin key, an all-digit search is still text.
    const listed = await request(`${admin.url}/v1/sessions?connection=api&text=400`, {
      headers: { authorization: `Bearer ${home.adminKey}` },
    });
    expect(listed.statusCode).toBe(200);
    expect(((await listed.body.json()) as Array<{ id: string }>).map((r) => r.id)).toEqual([refusedSession]);
    // On disk: the gateway's user alone may read them.
    expect(statSync(recordingsDir(ctx)).mode & 0o777).toBe(0o700);
    const modes = readdirSync(recordingsDir(ctx)).map(
      (n) => statSync(join(recordingsDir(ctx), n)).mode & 0o777,
    );
    expect(modes.length).toBeGreaterThan(0);
    expect(new Set(modes)).toEqual(new Set([0o600]));
  });

  it('audit verify detects an edited and a removed recording', async () => {
    const intact = await run(['audit', 'verify']);
    expect(intact.code).toBe(0);
    expect(intact.stdout).toMatch(/recordings intact: \d+ vouched for by the log/);
    const record = (await ctx.store.getRecording(okSession))!;
    const path = join(recordingsDir(ctx), record.location);
    const original = readFileSync(path);
    const edited = Buffer.from(original);
    edited[edited.length - 1] = edited[edited.length - 1]! ^ 1;
    writeFileSync(path, edited);
    const afterEdit = await run(['audit', 'verify']);
    expect(afterEdit.code).toBe(1);
    expect(afterEdit.stdout).toContain(
      `recording damaged (edited): recording ${okSession}: its file was changed`,
    );
    expect((await run(['sessions', 'replay', okSession])).stderr).toContain('CC_ERR_RECORDING_UNREADABLE');
    rmSync(path);
    const afterRemove = await run(['audit', 'verify']);
    expect(afterRemove.code).toBe(1);
    expect(afterRemove.stdout).toContain(
      `recording damaged (removed): recording ${okSession}: its file is gone`,
    );
    writeFileSync(path, original);
    expect((await run(['audit', 'verify'])).code).toBe(0);
  });

  it('connection add --recording sets the mode; anything else is refused', async () => {
    const added = await run([
      'connection',
      'add',
      'rec-cli',
      '--type',
      'http',
      '--url',
      up.url,
      '--recording',
      'off',
    ]);
    expect(added.code).toBe(0);
    expect((await ctx.connections.get('rec-cli'))?.rules).toEqual({ recording: 'off' });
    const bad = await run([
      'connection',
      'add',
      'rec-bad',
      '--type',
      'http',
      '--url',
      up.url,
      '--recording',
      'all',
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('CC_ERR_INVALID_ARGUMENT: --recording must be off, metadata or full');
    // A connection recorded `off` leaves no session row at all. (Not a count of rows: an
    // earlier request's row may land meanwhile, its session closing after its answer was read.)
    const res = await request(`${http.url}/c/rec-cli/echo`, {
      headers: { 'proxy-authorization': `Bearer ${agentKey}` },
    });
    expect(res.statusCode).toBe(200);
    await res.body.text();
    await new Promise((resolve) => setTimeout(resolve, 100));
    await http.recorder.flush();
    const rows = await ctx.store.listSessions({ limit: 1000 });
    expect(
      rows.filter((s) => s.connection === 'rec-cli' || JSON.stringify(s.summary).includes('rec-cli')),
    ).toEqual([]);
    // The same request on a recorded connection does leave one (the check above can fail).
    const apiRows = async () => {
      await http.recorder.flush();
      return (await ctx.store.listSessions({ limit: 1000 })).filter((s) => s.connection === 'api').length;
    };
    const apiBefore = await apiRows();
    const recorded = await request(`${http.url}/c/api/echo`, {
      headers: { 'proxy-authorization': `Bearer ${agentKey}` },
    });
    await recorded.body.text();
    await expect.poll(apiRows).toBeGreaterThan(apiBefore);
  });

  it('erasure destroys the data key: the file can no longer be read, and verify accepts the audited erasure', async () => {
    const erased = await run(['sessions', 'erase', refusedSession]);
    expect(erased.code).toBe(0);
    expect((await ctx.store.getRecording(refusedSession))!.wrappedKey).toBeNull();
    expect((await run(['sessions', 'replay', refusedSession])).stderr).toContain(
      'CC_ERR_RECORDING_UNREADABLE',
    );
    expect((await run(['audit', 'verify'])).code).toBe(0);
  });
});

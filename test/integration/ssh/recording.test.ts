import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportRecording, loadRecording, verifyExport } from '../../../src/recording/archive.js';
import { asciicast } from '../../../src/recording/asciicast.js';
import { transcript } from '../../../src/recording/transcript.js';
import { recordingArchive } from '../../../src/server/recordings.js';
import { cli } from '../../helpers/cli.js';
import {
  everyOutput,
  type SshGateway,
  startSshGateway,
  startThrowawaySshd,
  type ThrowawaySshd,
} from './harness.js';

/**
 * An SSH session recorded in full (ADR 0018): the command as the agent sent it, stdin as
 * sent, stdout and stderr as the agent received them (a secret the server printed is a
 * ticket there too), the exit status; the upstream key, the secret and the login ticket are
 * in no recording.
 */
let sshd: ThrowawaySshd;
let gw: SshGateway;
let ticket: string;
const AWS_KEY = 'AKIAQYLPMN5HHHFPZAM2';

beforeAll(async () => {
  sshd = await startThrowawaySshd();
  gw = await startSshGateway({ recordings: true });
  const builder = (await gw.createAgent('builder')).ref;
  await gw.addSecret('box-key', sshd.clientKey, ['conn:box']);
  // Known to the vault: printed by the server, it comes back as a ticket.
  await gw.addSecret('box-password', sshd.password, ['conn:box']);
  await gw.addConnection('box', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey, undefined, 'full');
  await gw.addConnection('quiet', `ssh://root@127.0.0.1:${sshd.port}`, sshd.hostKey, undefined, 'metadata');
  await gw.addSecret('quiet-key', sshd.clientKey, ['conn:quiet']);
  ticket = await gw.issue('box-key', builder, ['conn:box']);
}, 60_000);

afterAll(async () => {
  await gw?.close();
  sshd?.stop();
});

describe('ssh sessions recorded in full', { timeout: 120_000 }, () => {
  it('keeps the command, stdin, the inspected output and the exit; no secret in it', async () => {
    const path = sshd.file('rec-leak.txt', `key=${AWS_KEY}\n`);
    const r = await gw.ssh('builder%box', ticket, ['cat', '-', path], { input: 'typed by the agent\n' });
    expect(r.code).toBe(0);
    expect(r.stdout).not.toContain(AWS_KEY);
    const shownTicket = r.stdout.match(/cct_[0-9A-Za-z]{28}/)?.[0];
    expect(shownTicket).toBeDefined();
    await gw.settled();
    const archive = recordingArchive(gw.ctx);
    const rows = await gw.ctx.store.listRecordings({ connection: 'box', limit: 10 });
    expect(rows.length).toBe(1);
    const { events } = await loadRecording(archive, rows[0]!.id);
    const kinds = events.map((e) => e.kind);
    expect(kinds).toContain('ssh.exec');
    expect(kinds).toContain('ssh.exit');
    const exec = events.find((e) => e.kind === 'ssh.exec')!;
    expect(exec.dir).toBe('in');
    expect(String(exec.data.command)).toContain(path);
    const text = (stream: string) =>
      events
        .filter((e) => e.kind === 'ssh.data' && e.data.stream === stream)
        .map((e) => String((e.data.data as { text?: string }).text ?? ''))
        .join('');
    expect(text('stdin')).toBe('typed by the agent\n');
    // The recording holds what the agent received: the ticket, never the key.
    expect(text('stdout')).toBe(r.stdout);
    expect(events.find((e) => e.kind === 'ssh.exit')!.data.exit).toBe(0);
    // Replayed as a terminal showed it: the command, what was typed, the output, the exit.
    const shown = transcript(events)
      .map((l) => l.text)
      .join('\n');
    expect(shown).toContain(`$ cat - ${path}`);
    expect(shown).toContain('> typed by the agent');
    expect(shown).toContain(`key=${shownTicket}`);
    expect(shown).toContain('[exit 0]');
    const everything = `${JSON.stringify(events)}\n${await everyOutput(gw)}`;
    for (const canary of [AWS_KEY, sshd.clientKey.trim(), ticket]) expect(everything).not.toContain(canary);
  });

  it('a shell through ssh -tt is recorded as an asciicast of what the agent saw; no secret in it', async () => {
    const path = sshd.file('shell-leak.txt', `key=${AWS_KEY}\npw=${sshd.password}\n`);
    const r = await gw.ssh('builder%box', ticket, [], {
      extra: ['-tt'],
      input: `echo shell-$((6*7))\ncat ${path}\nexit 5\n`,
    });
    expect(r.code).toBe(5);
    expect(r.stdout).toContain('shell-42');
    expect(r.stdout).not.toContain(AWS_KEY);
    expect(r.stdout).not.toContain(sshd.password);
    const shownTickets = r.stdout.match(/cct_[0-9A-Za-z]{28}/g) ?? [];
    expect(shownTickets.length).toBeGreaterThanOrEqual(2);
    await gw.settled();
    const archive = recordingArchive(gw.ctx);
    const rows = await gw.ctx.store.listRecordings({ connection: 'box', limit: 10 });
    const row = rows.find((x) => x.startedAt === Math.max(...rows.map((y) => y.startedAt)))!;
    const { events } = await loadRecording(archive, row.id);
    expect(events.some((e) => e.kind === 'ssh.shell')).toBe(true);
    const cast = asciicast(events, { startedAt: row.startedAt })!;
    expect(cast).not.toBeNull();
    const [headerLine, ...frameLines] = cast.trimEnd().split('\n');
    const header = JSON.parse(headerLine!) as Record<string, unknown>;
    expect(header.version).toBe(2);
    expect(typeof header.width).toBe('number');
    expect(typeof header.height).toBe('number');
    const frames = frameLines.map((l) => JSON.parse(l) as [number, string, string]);
    // Times are seconds from the shell's start, never decreasing.
    for (let i = 1; i < frames.length; i++) expect(frames[i]![0]).toBeGreaterThanOrEqual(frames[i - 1]![0]);
    const output = frames
      .filter((f) => f[1] === 'o')
      .map((f) => f[2])
      .join('');
    // The output frames are exactly what the agent's terminal received.
    expect(output).toBe(r.stdout);
    expect(output).toContain('shell-42');
    for (const t of shownTickets) expect(output).toContain(t);
    const input = frames
      .filter((f) => f[1] === 'i')
      .map((f) => f[2])
      .join('');
    expect(input).toContain('echo shell-$((6*7))');
    // Printing the cast drives no terminal: no control character in it but newlines.
    expect(cast).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/);
    for (const canary of [AWS_KEY, sshd.password, sshd.clientKey.trim(), ticket]) {
      expect(cast).not.toContain(canary);
    }
    // The CLI renders the same cast; the transcript names the shell; export still verifies.
    const replay = await cli(['--dir', gw.dir, 'sessions', 'replay', row.id, '--asciicast']);
    expect(replay.code).toBe(0);
    expect(replay.stdout).toBe(cast);
    const text = await cli(['--dir', gw.dir, 'sessions', 'replay', row.id]);
    expect(text.stdout).toContain('-- shell (');
    expect(text.stdout).toContain('shell-42');
    expect(text.stdout).not.toContain(AWS_KEY);
    const bundle = await exportRecording(archive, row.id);
    expect(await verifyExport(bundle)).toMatchObject({ ok: true, problems: [] });
    const noShell = await cli(['--dir', gw.dir, 'sessions', 'replay', rows.at(-1)!.id, '--asciicast']);
    if (rows.length > 1) expect(noShell.stderr).toContain('CC_ERR_NOT_FOUND');
    const everything = `${cast}\n${JSON.stringify(events)}\n${await everyOutput(gw)}`;
    for (const canary of [AWS_KEY, sshd.password, sshd.clientKey.trim(), ticket]) {
      expect(everything).not.toContain(canary);
    }
  });

  it('a connection recorded as metadata keeps no full recording', async () => {
    const quietTicket = await gw.issue('quiet-key', (await gw.createAgent('q')).ref, ['conn:quiet']);
    const r = await gw.ssh('q%quiet', quietTicket, ['echo', 'not kept']);
    expect(r.stdout).toBe('not kept\n');
    await gw.settled();
    expect(await gw.ctx.store.listRecordings({ connection: 'quiet', limit: 10 })).toEqual([]);
  });
});

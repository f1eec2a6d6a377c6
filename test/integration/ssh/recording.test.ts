import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadRecording } from '../../../src/recording/archive.js';
import { transcript } from '../../../src/recording/transcript.js';
import { recordingArchive } from '../../../src/server/recordings.js';
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

  it('a connection recorded as metadata keeps no full recording', async () => {
    const quietTicket = await gw.issue('quiet-key', (await gw.createAgent('q')).ref, ['conn:quiet']);
    const r = await gw.ssh('q%quiet', quietTicket, ['echo', 'not kept']);
    expect(r.stdout).toBe('not kept\n');
    await gw.settled();
    expect(await gw.ctx.store.listRecordings({ connection: 'quiet', limit: 10 })).toEqual([]);
  });
});

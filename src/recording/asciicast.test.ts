import { describe, expect, it } from 'vitest';
import { asciicast, shellChannels } from './asciicast.js';
import type { RecordingEvent } from './model.js';

const ev = (at: number, kind: string, data: Record<string, unknown>, dir: RecordingEvent['dir'] = 'out') =>
  ({ at, kind, dir, data }) as RecordingEvent;

describe('asciicast of an SSH shell', () => {
  const events: RecordingEvent[] = [
    ev(5, 'ssh.exec', { channel: 1, command: 'id' }, 'in'),
    ev(6, 'ssh.data', { channel: 1, stream: 'stdout', data: { text: 'not the shell\n', bytes: 14 } }),
    ev(1000, 'ssh.shell', { channel: 2, pty: { term: 'xterm-256color', cols: 120, rows: 40 } }, 'in'),
    ev(1250, 'ssh.data', { channel: 2, stream: 'stdout', data: { text: '\u001b[1m$ \u001b[0m', bytes: 10 } }),
    ev(1500, 'ssh.data', { channel: 2, stream: 'stdin', data: { text: 'ls\r', bytes: 3 } }, 'in'),
    ev(1600, 'ssh.resize', { channel: 2, cols: 100, rows: 30 }, 'in'),
    // Hostile output: C1 controls, DEL, a line separator, bytes that are not UTF-8.
    ev(1700, 'ssh.data', {
      channel: 2,
      stream: 'stderr',
      data: { text: '\u009b31m\u007f\u2028x', bytes: 8 },
    }),
    ev(1800, 'ssh.data', {
      channel: 2,
      stream: 'stdout',
      data: { base64: Buffer.from([0xff, 0x41]).toString('base64'), bytes: 2 },
    }),
  ];

  it('has a v2 header from the pty and frames in seconds from the shell start, for that channel only', () => {
    const lines = asciicast(events, { startedAt: 1_700_000_000_000 })!.trimEnd().split('\n');
    expect(JSON.parse(lines[0]!)).toEqual({
      version: 2,
      width: 120,
      height: 40,
      timestamp: 1_700_000_001,
      env: { TERM: 'xterm-256color' },
    });
    const frames = lines.slice(1).map((l) => JSON.parse(l));
    expect(frames).toEqual([
      [0.25, 'o', '\u001b[1m$ \u001b[0m'],
      [0.5, 'i', 'ls\r'],
      [0.6, 'r', '100x30'],
      [0.7, 'o', '\u009b31m\u007f\u2028x'],
      [0.8, 'o', '\ufffdA'],
    ]);
  });

  it("is printable text: no control character reaches the reader's terminal", () => {
    const cast = asciicast(events)!;
    expect(cast).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029]/);
  });

  it('bounds what a hostile client put in the pty request; no shell gives null', () => {
    const hostile = [
      ev(0, 'ssh.shell', { channel: 3, pty: { term: 'x'.repeat(500), cols: -1, rows: 1e9 } }, 'in'),
    ];
    expect(shellChannels(hostile)[0]).toMatchObject({ cols: 80, rows: 24 });
    expect(shellChannels(hostile)[0]!.term!.length).toBe(64);
    expect(asciicast([events[0]!])).toBeNull();
    expect(asciicast(events, { channel: 9 })).toBeNull();
  });
});

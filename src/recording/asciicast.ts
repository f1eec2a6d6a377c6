import type { Payload, RecordingEvent } from './model.js';

/**
 * A shell session of a full recording as an asciicast v2 file
 * (https://docs.asciinema.org/manual/asciicast/v2/): a header line, then one
 * `[seconds, code, data]` line per frame — `o` what the terminal showed (stdout and stderr
 * as the agent received them: tickets, never a secret), `i` what was typed, `r` a resize.
 * Derived from the recording's `ssh.shell`, `ssh.data` and `ssh.resize` events of one
 * channel, so `sessions export` and verification see the same sealed events as always.
 *
 * The text is printable: JSON escapes C0 controls, and DEL, C1 controls and the line
 * separators are escaped here too, so printing a cast never drives the reader's terminal
 * (a player does, on purpose).
 */

export interface ShellChannel {
  readonly channel: number;
  /** Milliseconds since the session started. */
  readonly at: number;
  readonly term: string | null;
  readonly cols: number;
  readonly rows: number;
}

/** The shells a recording holds, in order. */
export function shellChannels(events: readonly RecordingEvent[]): ShellChannel[] {
  const out: ShellChannel[] = [];
  for (const event of events) {
    if (event.kind !== 'ssh.shell') continue;
    const d = event.data as {
      channel?: unknown;
      pty?: { term?: unknown; cols?: unknown; rows?: unknown } | null;
    };
    if (typeof d.channel !== 'number') continue;
    const dimension = (v: unknown, fallback: number) =>
      typeof v === 'number' && Number.isInteger(v) && v > 0 && v <= 10_000 ? v : fallback;
    out.push({
      channel: d.channel,
      at: event.at,
      term: typeof d.pty?.term === 'string' ? d.pty.term.slice(0, 64) : null,
      cols: dimension(d.pty?.cols, 80),
      rows: dimension(d.pty?.rows, 24),
    });
  }
  return out;
}

function payloadString(p: unknown): string {
  if (p === null || typeof p !== 'object') return '';
  const payload = p as Payload;
  if (payload.text !== undefined) return payload.text;
  // Not UTF-8 as recorded: decoded with replacement characters (asciicast is UTF-8 text).
  if (payload.base64 !== undefined) return Buffer.from(payload.base64, 'base64').toString('utf8');
  return '';
}

/** JSON with every character that could drive a terminal escaped. */
function printableJson(value: unknown): string {
  return JSON.stringify(value).replace(
    /[\u007f-\u009f\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/**
 * The asciicast v2 text of one shell of the recording (the first when `channel` is not
 * given), or null when the recording holds no such shell. `startedAt`: the session's start
 * (epoch ms), for the header's timestamp.
 */
export function asciicast(
  events: readonly RecordingEvent[],
  options: { startedAt?: number; channel?: number } = {},
): string | null {
  const shells = shellChannels(events);
  const shell = options.channel === undefined ? shells[0] : shells.find((s) => s.channel === options.channel);
  if (shell === undefined) return null;
  const header: Record<string, unknown> = {
    version: 2,
    width: shell.cols,
    height: shell.rows,
    ...(options.startedAt === undefined
      ? {}
      : { timestamp: Math.floor((options.startedAt + shell.at) / 1000) }),
    ...(shell.term === null ? {} : { env: { TERM: shell.term } }),
  };
  const lines = [printableJson(header)];
  const time = (at: number) => Math.max(0, Math.round(at - shell.at)) / 1000;
  for (const event of events) {
    const d = event.data as Record<string, unknown>;
    if (d.channel !== shell.channel) continue;
    if (event.kind === 'ssh.data') {
      const text = payloadString(d.data);
      if (text === '') continue;
      lines.push(printableJson([time(event.at), d.stream === 'stdin' ? 'i' : 'o', text]));
    } else if (event.kind === 'ssh.resize') {
      lines.push(printableJson([time(event.at), 'r', `${Number(d.cols)}x${Number(d.rows)}`]));
    }
  }
  return `${lines.join('\n')}\n`;
}

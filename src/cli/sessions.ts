import type { Command } from 'commander';
import type { AdminClient } from '../admin/client.js';
import type { OperationOutput } from '../admin/operations.js';
import { CoatcheckError } from '../core/errors.js';
import { asciicast } from '../recording/asciicast.js';
import type { RecordingEvent } from '../recording/model.js';
import { transcript } from '../recording/transcript.js';
import { visibleControls } from './io.js';

/** What the session commands borrow from the program: running an operation and rendering tables. */
export interface SessionCommandHelpers {
  perform<T>(
    command: Command,
    fn: (client: AdminClient) => Promise<T>,
    render: (result: T) => string,
  ): Promise<void>;
  table(rows: string[][]): string;
  /** Write to stdout now (replay at the original pace writes as it goes). */
  write(text: string): void;
  setExitCode(code: number): void;
}

function parseTime(field: string) {
  return (value: string): number => {
    const ms = /^[0-9]{1,15}$/.test(value) ? Number(value) : Date.parse(value);
    if (!Number.isFinite(ms)) {
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        `${field} must be an ISO 8601 time or epoch milliseconds`,
        {
          details: { field },
        },
      );
    }
    return ms;
  };
}

function parseSpeed(value: string): number {
  const speed = Number(value);
  if (!/^[0-9]{1,4}(\.[0-9]{1,3})?$/.test(value) || !(speed > 0) || speed > 1000) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--speed must be a number above 0 and at most 1000', {
      details: { field: '--speed' },
    });
  }
  return speed;
}

/** Longest pause between two events when replaying at the original pace. */
const MAX_PAUSE_MS = 5_000;

function parseLimit(value: string): number {
  if (!/^[1-9][0-9]{0,3}$/.test(value) || Number(value) > 1000) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--limit must be 1 to 1000', {
      details: { field: '--limit' },
    });
  }
  return Number(value);
}

const iso = (ms: number) => new Date(ms).toISOString();

export function renderSession(r: OperationOutput<'sessionShow'>): string {
  const s = r.summary as Record<string, unknown>;
  const lines = [
    `session     ${r.id}`,
    `frontend    ${r.frontend}`,
    `principal   ${r.principal ?? '-'}`,
    `connection  ${r.connection ?? '-'}`,
    `started     ${iso(r.startedAt)}`,
    `duration    ${r.endedAt - r.startedAt} ms`,
    `outcome     ${r.outcome}`,
    `request     ${String(s.method ?? '-')} ${String(s.path ?? '-')} (${Number(s.requestBytes ?? 0)} bytes)`,
    `response    ${String(s.status ?? '-')} (${Number(s.responseBytes ?? 0)} bytes, ${Number(s.responseSecrets ?? 0)} secrets replaced)`,
    `tickets     ${((s.tickets as string[] | undefined) ?? []).join(', ') || '-'}`,
    'events',
  ];
  for (const event of (s.events as Array<{ at: number; type: string; data: unknown }> | undefined) ?? []) {
    lines.push(
      `  +${String(event.at).padStart(5)} ms  ${event.type.padEnd(18)} ${JSON.stringify(event.data)}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

function header(r: {
  id: string;
  frontend: string;
  principal: string | null;
  connection: string | null;
  startedAt: number;
  hash: string;
}): string {
  return `-- session ${r.id} (${r.frontend}) ${r.principal ?? '-'} -> ${r.connection ?? '-'} at ${iso(r.startedAt)}; recording ${r.hash.slice(0, 16)}…\n`;
}

export function renderTranscript(events: readonly RecordingEvent[]): string {
  return transcript(events)
    .map((line) => `${line.text}\n`)
    .join('');
}

/** `coatcheck sessions list|show`: recorded data-path sessions (metadata, never values). */
export function registerSessionCommands(program: Command, helpers: SessionCommandHelpers): void {
  const sessions = program.command('sessions').description('recorded data-path sessions (scrubbed metadata)');
  sessions
    .command('list')
    .description(
      'recorded sessions, newest first (--connection, --ticket, --since, --until and --text list full recordings only)',
    )
    .option('--limit <n>', 'how many (1-1000)', parseLimit, 50)
    .option('--agent <name>', 'only sessions of this agent')
    .option('--connection <name>', 'only recordings of this connection')
    .option(
      '--ticket <ticket>',
      'only recordings that used or were handed this ticket (its id or the ticket)',
    )
    .option('--since <time>', 'started at or after (ISO 8601 or epoch ms)', parseTime('--since'))
    .option('--until <time>', 'started before (ISO 8601 or epoch ms)', parseTime('--until'))
    .option('--text <text>', 'recordings whose statements, URLs or bodies contain this text')
    .action(
      async (
        opts: {
          limit: number;
          agent?: string;
          connection?: string;
          ticket?: string;
          since?: number;
          until?: number;
          text?: string;
        },
        command: Command,
      ) => {
        await helpers.perform(
          command,
          (c) =>
            c.call('sessionList', {
              limit: opts.limit,
              agent: opts.agent,
              connection: opts.connection,
              ticket: opts.ticket,
              since: opts.since,
              until: opts.until,
              text: opts.text,
            }),
          (rows) =>
            helpers.table([
              ['ID', 'STARTED', 'PRINCIPAL', 'CONNECTION', 'REQUEST', 'STATUS', 'OUTCOME', 'RECORDED'],
              ...rows.map((r) => [
                r.id,
                iso(r.startedAt),
                r.principal ?? '-',
                r.connection ?? '-',
                `${String(r.method ?? '-')} ${String(r.path ?? '-')}`,
                String(r.status ?? '-'),
                r.outcome,
                r.recorded,
              ]),
            ]),
        );
      },
    );
  sessions
    .command('replay <id>')
    .description(
      'a full recording as the client saw it: psql-like for PostgreSQL, request/response for HTTP, MCP and LLM (--json: the events)',
    )
    .option('--speed <factor>', 'replay at the original pace (1), faster (>1) or slower (<1)', parseSpeed)
    .option(
      '--asciicast',
      'an SSH shell of the recording as an asciicast v2 file (asciinema play FILE plays it)',
    )
    .option('--channel <n>', 'with --asciicast: the shell channel (default: the first shell)', (v) => {
      if (!/^[1-9][0-9]{0,5}$/.test(v))
        throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--channel must be a channel number', {
          details: { field: '--channel' },
        });
      return Number(v);
    })
    .action(
      async (
        id: string,
        opts: { speed?: number; asciicast?: boolean; channel?: number },
        command: Command,
      ) => {
        const json = (command.optsWithGlobals() as { json?: boolean }).json === true;
        if (opts.asciicast === true) {
          await helpers.perform(
            command,
            async (c) => {
              const r = await c.call('sessionRecording', { id });
              const cast = asciicast(r.events, {
                startedAt: r.startedAt,
                ...(opts.channel === undefined ? {} : { channel: opts.channel }),
              });
              if (cast === null)
                throw new CoatcheckError(
                  'CC_ERR_NOT_FOUND',
                  `recording ${id} holds no SSH shell${opts.channel === undefined ? '' : ` on channel ${opts.channel}`}`,
                  { details: { id } },
                );
              return { cast };
            },
            (r) => r.cast,
          );
          return;
        }
        if (opts.speed === undefined || json) {
          await helpers.perform(
            command,
            (c) => c.call('sessionRecording', { id }),
            (r) => renderTranscript(r.events),
          );
          return;
        }
        const speed = opts.speed;
        await helpers.perform(
          command,
          async (c) => {
            const r = await c.call('sessionRecording', { id });
            helpers.write(visibleControls(header(r)));
            let last = 0;
            for (const line of transcript(r.events)) {
              const pause = Math.min(MAX_PAUSE_MS, Math.max(0, (line.at - last) / speed));
              if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause));
              last = line.at;
              helpers.write(`${visibleControls(line.text)}\n`);
            }
            return r;
          },
          () => '',
        );
      },
    );
  sessions
    .command('export <id>')
    .description(
      'a self-contained, verifiable bundle of a full recording (JSON: events, sealed file, data key, audit records)',
    )
    .action(async (id: string, _opts: unknown, command: Command) => {
      await helpers.perform(
        command,
        (c) => c.call('sessionExport', { id }),
        (bundle) => `${JSON.stringify(bundle, null, 2)}\n`,
      );
    });
  sessions
    .command('verify-export <file>')
    .description('check an exported bundle without the gateway: sealed chunks, audit hash, events')
    .action(async (file: string) => {
      const { readFile } = await import('node:fs/promises');
      const { verifyExport } = await import('../recording/archive.js');
      const text = await readFile(file, 'utf8');
      let bundle: unknown;
      try {
        bundle = JSON.parse(text);
      } catch {
        throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${file} is not JSON`, {
          details: { field: 'file' },
        });
      }
      const check = await verifyExport(bundle as Parameters<typeof verifyExport>[0]);
      helpers.write(
        visibleControls(
          check.ok
            ? `export intact: the sealed recording chains to the hash in audit record ${check.sealedAuditSeq} (record hash ${check.sealedAuditHash}); compare that record with \`coatcheck audit export\` on the gateway\n`
            : `export damaged:\n${check.problems.map((p) => `  ${p}`).join('\n')}\n`,
        ),
      );
      if (!check.ok) helpers.setExitCode(1);
    });
  sessions
    .command('erase <id>')
    .description("erase a session's full recording (its data key is destroyed; audited)")
    .action(async (id: string, _opts: unknown, command: Command) => {
      await helpers.perform(
        command,
        (c) => c.call('sessionErase', { id }),
        (r) => `erased the recording of ${r.id}\n`,
      );
    });
  sessions
    .command('retention')
    .description(
      'apply retention now: recordings (recording.retention.maxAge and maxBytes), and session rows older than maxAge',
    )
    .action(async (_opts: unknown, command: Command) => {
      await helpers.perform(
        command,
        (c) => c.call('recordingRetention', {}),
        (r) => `erased ${r.erased.length} recordings, deleted ${r.sessionsPruned} session rows\n`,
      );
    });
  sessions
    .command('show <id>')
    .description('one session and its events')
    .action(async (id: string, _opts: unknown, command: Command) => {
      await helpers.perform(command, (c) => c.call('sessionShow', { id }), renderSession);
    });
}

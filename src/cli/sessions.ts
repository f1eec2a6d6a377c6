import type { Command } from 'commander';
import type { AdminClient } from '../admin/client.js';
import type { OperationOutput } from '../admin/operations.js';
import { CoatcheckError } from '../core/errors.js';

/** What the session commands borrow from the program: running an operation and rendering tables. */
export interface SessionCommandHelpers {
  perform<T>(
    command: Command,
    fn: (client: AdminClient) => Promise<T>,
    render: (result: T) => string,
  ): Promise<void>;
  table(rows: string[][]): string;
}

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

/** `coatcheck sessions list|show`: recorded data-path sessions (metadata, never values). */
export function registerSessionCommands(program: Command, helpers: SessionCommandHelpers): void {
  const sessions = program.command('sessions').description('recorded data-path sessions (scrubbed metadata)');
  sessions
    .command('list')
    .description('recorded sessions, newest first')
    .option('--limit <n>', 'how many (1-1000)', parseLimit, 50)
    .option('--agent <name>', 'only sessions of this agent')
    .action(async (opts: { limit: number; agent?: string }, command: Command) => {
      await helpers.perform(
        command,
        (c) => c.call('sessionList', { limit: opts.limit, agent: opts.agent }),
        (rows) =>
          helpers.table([
            ['ID', 'STARTED', 'PRINCIPAL', 'CONNECTION', 'REQUEST', 'STATUS', 'OUTCOME'],
            ...rows.map((r) => [
              r.id,
              iso(r.startedAt),
              r.principal ?? '-',
              r.connection ?? '-',
              `${String(r.method ?? '-')} ${String(r.path ?? '-')}`,
              String(r.status ?? '-'),
              r.outcome,
            ]),
          ]),
      );
    });
  sessions
    .command('show <id>')
    .description('one session and its events')
    .action(async (id: string, _opts: unknown, command: Command) => {
      await helpers.perform(command, (c) => c.call('sessionShow', { id }), renderSession);
    });
}

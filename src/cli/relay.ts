import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import type { AdminClient } from '../admin/client.js';
import { CoatcheckError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { type CliIo, EXIT } from './io.js';

/** What the relay commands borrow from the program. */
export interface RelayCommandHelpers {
  perform<T>(
    command: Command,
    fn: (client: AdminClient) => Promise<T>,
    render: (result: T) => string,
  ): Promise<void>;
  table(rows: string[][]): string;
  /** Set the process's exit code (`relay run` stops with one). */
  exit(code: number): void;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

function readText(file: string, field: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${field}: cannot read ${file}`, {
      details: { field },
    });
  }
}

/**
 * `relay create | list | revoke` (admin operations, like `agent`) and `relay run`, the
 * process that runs in the targets' network and needs no home: only the gateway's
 * address, its CA and the relay key (docs/relay.md).
 */
export function registerRelayCommands(program: Command, io: CliIo, helpers: RelayCommandHelpers): void {
  const relay = program.command('relay').description('relays near the targets, dialling out to the gateway');
  relay
    .command('create <name>')
    .description('create a relay; prints its key, once')
    .action(async (name: string, _opts, command: Command) => {
      await helpers.perform(
        command,
        (c) => c.call('relayCreate', { name }),
        (r) => `${r.key}\n`,
      );
    });
  relay
    .command('list')
    .description('list relays: status, last seen, from where, on which gateway replica')
    .action(async (_opts, command: Command) => {
      await helpers.perform(
        command,
        (c) => c.call('relayList', {}),
        (rows) =>
          helpers.table([
            ['NAME', 'ID', 'STATUS', 'SESSIONS', 'LAST SEEN', 'FROM', 'REPLICA'],
            ...rows.map((r) => [
              r.name,
              r.id,
              r.status,
              r.sessions === undefined ? '-' : String(r.sessions),
              r.lastSeenAt ?? '-',
              r.lastAddress ?? '-',
              r.lastReplica ?? '-',
            ]),
          ]),
      );
    });
  relay
    .command('revoke <name>')
    .description('revoke a relay: its sessions drop at once, its key is refused')
    .action(async (name: string, _opts, command: Command) => {
      await helpers.perform(
        command,
        (c) => c.call('relayRevoke', { name }),
        (r) => `revoked relay ${r.name} (${r.id})\n`,
      );
    });
  relay
    .command('run')
    .description('run a relay: dial out to the gateway and carry its upstream connections')
    .requiredOption(
      '--gateway <url>',
      "the gateway's relay listener, https://HOST:PORT (serve --listen-relay)",
    )
    .requiredOption('--key-file <file>', 'the relay key `relay create` printed (or set COATCHECK_RELAY_KEY)')
    .requiredOption(
      '--ca <file>',
      "the gateway's CA certificate (`coatcheck ca export`): the only CA trusted",
    )
    .option(
      '--allow <target>',
      'a target the relay may open: HOST:PORT, HOST:* or *.DOMAIN:PORT (repeatable; default: any)',
      collect,
    )
    .option('--max-streams <n>', 'most upstream connections carried at once', (v) => Number(v))
    .option('--log-level <level>', 'info, warn, error or debug', 'info')
    .action(async (opts) => {
      const { runRelay } = await import('../relay/run-relay.js');
      const key = (io.env.COATCHECK_RELAY_KEY ?? readText(opts.keyFile, '--key-file')).trim();
      const ca = readText(opts.ca, '--ca');
      if (/PRIVATE KEY/.test(ca) || !/-----BEGIN CERTIFICATE-----/.test(ca))
        throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--ca must hold PEM certificates only', {
          details: { field: '--ca' },
        });
      if (opts.maxStreams !== undefined && !(Number.isInteger(opts.maxStreams) && opts.maxStreams >= 1))
        throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--max-streams must be a positive integer', {
          details: { field: '--max-streams' },
        });
      // The relay's log: JSON lines on stderr. It never holds the key or the bytes carried.
      const log = createLogger({ level: String(opts.logLevel), destination: io.stderr });
      const running = runRelay({
        gateway: opts.gateway,
        key,
        ca,
        allow: (opts.allow as string[] | undefined) ?? [],
        log,
        ...(opts.maxStreams === undefined ? {} : { maxStreams: opts.maxStreams }),
      });
      const stop = () => void running.stop();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      const result = await running.done;
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      if (result.code !== null) {
        io.stderr.write(`coatcheck relay: the gateway refused the relay key (${result.code}); stopping\n`);
        helpers.exit(EXIT.failed);
      }
    });
}

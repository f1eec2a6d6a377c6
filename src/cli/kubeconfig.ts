import { type Command, Option } from 'commander';
import { CoatcheckError } from '../core/errors.js';
import type { SessionCommandHelpers } from './sessions.js';

const DEFAULT_GATEWAY = 'https://127.0.0.1:7443';

function parsePositiveInt(value: string): number {
  if (!/^[1-9][0-9]{0,9}$/.test(value)) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--uses must be a positive integer', {
      details: { field: '--uses' },
    });
  }
  return Number(value);
}

/** `coatcheck kubeconfig AGENT CONNECTION`: issues a ticket for the connection's credential and prints the kubeconfig. */
export function registerKubeconfigCommand(
  program: Command,
  helpers: Pick<SessionCommandHelpers, 'perform'>,
): void {
  program
    .command('kubeconfig <agent> <connection>')
    .description(
      "issue a ticket for a kubernetes connection's credential to AGENT and print a kubeconfig that points kubectl at the gateway",
    )
    .option('--ttl <duration>', 'lifetime of the ticket, like 8h (default from config)')
    .addOption(new Option('--uses <n>', 'maximum number of requests').argParser(parsePositiveInt))
    .option(
      '--gateway <url>',
      `the gateway's Kubernetes listener (default: the running server's, else ${DEFAULT_GATEWAY})`,
    )
    .action(
      async (
        agent: string,
        connection: string,
        opts: { ttl?: string; uses?: number; gateway?: string },
        command: Command,
      ) => {
        if (opts.gateway !== undefined && !/^https:\/\/[A-Za-z0-9.:[\]-]{1,300}\/?$/.test(opts.gateway)) {
          throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--gateway must be https://HOST:PORT', {
            details: { field: '--gateway' },
          });
        }
        // yaml loads only for this command (every other command, --version included, skips it).
        const { renderKubeconfig } = await import('./kubeconfig-render.js');
        await helpers.perform(
          command,
          (c) => c.call('kubeconfig', { agent, connection, ttl: opts.ttl, uses: opts.uses }),
          (r) =>
            renderKubeconfig({
              agent: r.agent,
              connection: r.connection,
              gateway: opts.gateway ?? r.gateway ?? DEFAULT_GATEWAY,
              ticket: r.ticket,
              ca: r.certificate,
            }),
        );
      },
    );
}

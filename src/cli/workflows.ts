import { type Command, Option } from 'commander';
import type { AdminClient } from '../admin/client.js';
import type { OperationOutput } from '../admin/operations.js';
import { CoatcheckError } from '../core/errors.js';

/** What the workflow commands borrow from the program: running an operation and rendering tables. */
export interface WorkflowCommandHelpers {
  perform<T>(
    command: Command,
    fn: (client: AdminClient) => Promise<T>,
    render: (result: T) => string,
  ): Promise<void>;
  table(rows: string[][]): string;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

function parseUses(value: string): number {
  if (!/^[1-9][0-9]{0,9}$/.test(value)) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--uses must be a whole number of at least 1', {
      details: { field: '--uses' },
    });
  }
  return Number(value);
}

/** Quote a value for a POSIX shell only when it needs it (tickets and keys never do). */
function shellValue(value: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]*$/.test(value) ? value : `'${value.replace(/'/g, `'\\''`)}'`;
}

/** KEY=VALUE lines, one per variable: `env $(cat file)`, `docker run --env-file`, or `set -a; . file`. */
export function renderEnv(env: Readonly<Record<string, string>>): string {
  return Object.entries(env)
    .map(([key, value]) => `${key}=${shellValue(value)}\n`)
    .join('');
}

function usesText(uses: number, maxUses: number | null): string {
  return `${uses}/${maxUses ?? '∞'} uses`;
}

/** The tree `workflow show` prints: nodes, their tickets, and what each did with them. */
export function renderTree(tree: OperationOutput<'workflowShow'>): string {
  const lines: string[] = [];
  for (const node of tree.nodes) {
    const pad = '  '.repeat(node.depth);
    const deadline = node.expiresAt === null ? '' : `, deadline ${node.expiresAt}`;
    lines.push(
      `${pad}${node.parentId === null ? 'workflow' : 'subtask'} ${node.name} ${node.id} (${node.status}${deadline})`,
    );
    if (node.parentId === null) lines.push(`${pad}  started by ${node.startedBy} at ${node.createdAt}`);
    for (const t of node.tickets) {
      lines.push(
        `${pad}  ticket ${t.id} ${t.secret ?? '(erased)'} -> ${t.destinations.join(', ')} (${t.status}, ${usesText(t.uses, t.maxUses)}${t.parentId === null ? '' : `, from ${t.parentId}`})`,
      );
    }
    for (const e of node.events) {
      const what =
        e.kind === 'exchange'
          ? `exchanged ${e.secret ?? '?'} (${e.ticket ?? '-'})`
          : e.kind === 'credential'
            ? `credential ${e.secret ?? '?'} injected`
            : e.kind === 'reissued'
              ? `new ticket ${e.ticket ?? '-'} for a secret found (${e.secret ?? '?'})`
              : e.kind === 'denied'
                ? 'denied by policy'
                : `refused ${e.code ?? '?'}${e.ticket === null ? '' : ` (${e.ticket}${e.ticketOwner === null ? '' : ` of ${e.ticketOwner}`})`}`;
      const where = [e.target, e.operation].filter((x) => x !== null).join(': ');
      const by = e.actor === node.principal ? '' : ` by ${e.actor}`;
      lines.push(`${pad}  ${e.at} ${what}${by}${where === '' ? '' : ` at ${where}`}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

export function registerWorkflowCommands(program: Command, helpers: WorkflowCommandHelpers): void {
  const { perform } = helpers;
  const workflow = program
    .command('workflow')
    .description('workflow runs and their subtasks: narrowed tickets, own identities, one audit tree');

  workflow
    .command('start <name>')
    .description('start a workflow run for an agent; prints its id (--json adds its key and tickets)')
    .requiredOption('--agent <agent>', 'the agent the run is started for (its groups carry over)')
    .option('--secret <name>', 'a secret the run gets a ticket for (repeatable)', collect)
    .option('--dest <dest>', "destination, within each secret's --allow (repeatable; default: all)", collect)
    .option('--ttl <duration>', 'how long the run lives, like 1h (default: tickets.defaultTtl)')
    .option('--env', 'print the env block (key, tickets, gateway) instead of the id')
    .action(async (name: string, opts, command: Command) => {
      await perform(
        command,
        (c) =>
          c.call('workflowStart', {
            name,
            agent: opts.agent,
            secrets: opts.secret,
            destinations: opts.dest,
            ttl: opts.ttl,
          }),
        (r) => (opts.env ? renderEnv(r.env) : `${r.workflow.id}\n`),
      );
    });

  workflow
    .command('spawn <workflowOrSubtaskId>')
    .description(
      "spawn a subtask with tickets narrowed from its parent's; prints its env block (KEY=VALUE lines)",
    )
    .requiredOption('--name <name>', 'what the subtask is for')
    .option('--secret <name>', "a secret of the parent's it gets (repeatable; default: all of them)", collect)
    .option('--dest <dest>', "destination, within the parent's (repeatable)", collect)
    .option('--ttl <duration>', "deadline from now, no later than the parent's (default: the parent's)")
    .addOption(
      new Option('--uses <n>', 'most exchanges per ticket, no more than the parent has left').argParser(
        parseUses,
      ),
    )
    .action(async (parent: string, opts, command: Command) => {
      await perform(
        command,
        (c) =>
          c.call('workflowSpawn', {
            parent,
            name: opts.name,
            secrets: opts.secret,
            destinations: opts.dest,
            ttl: opts.ttl,
            uses: opts.uses,
          }),
        (r) => renderEnv(r.env),
      );
    });

  workflow
    .command('end <id>')
    .description('end a workflow or subtask and everything under it (keys stop working, tickets expire)')
    .action(async (id: string, _opts, command: Command) => {
      await perform(
        command,
        (c) => c.call('workflowEnd', { id }),
        (r) =>
          r.ended.length === 0
            ? `${r.id} had already ended\n`
            : `ended ${r.ended.length} node(s): ${r.ended.join(', ')}; ${r.tickets.length} ticket(s) expired\n`,
      );
    });

  workflow
    .command('revoke <id>')
    .description('revoke a workflow or subtask and everything under it (keys and tickets revoked)')
    .action(async (id: string, _opts, command: Command) => {
      await perform(
        command,
        (c) => c.call('workflowRevoke', { id }),
        (r) =>
          `revoked ${r.ended.length} node(s): ${r.ended.join(', ') || '-'}; ${r.tickets.length} ticket(s)\n`,
      );
    });

  workflow
    .command('list')
    .description('workflow runs, newest first (their ids for workflow show)')
    .action(async (_opts, command: Command) => {
      await perform(
        command,
        (c) => c.call('workflowList', {}),
        (runs) =>
          helpers.table([
            ['ID', 'NAME', 'STATUS', 'STARTED BY', 'CREATED', 'DEADLINE'],
            ...runs.map((r) => [r.id, r.name, r.status, r.startedBy, r.createdAt, r.expiresAt ?? '-']),
          ]),
      );
    });

  workflow
    .command('show <id>')
    .description('the tree: nodes, tickets, which subtask exchanged which secret where and when, refusals')
    .action(async (id: string, _opts, command: Command) => {
      await perform(command, (c) => c.call('workflowShow', { id }), renderTree);
    });
}

import type { Command } from 'commander';
import type { ApprovalView } from '../approvals/approvals.js';
import { visibleControls as controlFree } from './io.js';
import type { SessionCommandHelpers } from './sessions.js';

export function renderApproval(a: ApprovalView): string {
  return [
    `approval    ${a.id}`,
    `status      ${a.status}`,
    `requester   ${controlFree(a.requesterName)} (${a.requester})`,
    `operation   ${a.operation.action} on ${a.operation.connection}`,
    `            ${controlFree(a.operation.summary)}`,
    `approvers   ${a.approvers.join(', ') || 'any'} (${a.quorum} needed)`,
    `use         ${a.singleUse ? 'single use' : 'until expiry'}`,
    `created     ${a.createdAt}`,
    `expires     ${a.expiresAt}`,
    ...a.decisions.map(
      (d) =>
        `decision    ${d.decision} by ${controlFree(d.name)} at ${d.at}${d.reason ? `: ${controlFree(d.reason)}` : ''}`,
    ),
    ...(a.preview === null
      ? []
      : [
          `preview     (cleaned: tickets by id, secrets masked; display only, the approval binds the exact operation)`,
          ...a.preview.split('\n').map((line) => `  ${controlFree(line)}`),
          ...(a.previewTruncated ? ['  [the stored preview was cut at 64 KiB]'] : []),
        ]),
    '',
  ].join('\n');
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

export function registerApprovalCommands(
  program: Command,
  helpers: Pick<SessionCommandHelpers, 'perform' | 'table'>,
): void {
  const { perform, table } = helpers;
  const approvals = program.command('approvals').description('just-in-time approvals of exact operations');
  approvals
    .command('list')
    .description('approval requests, newest first')
    .option('--status <status>', 'pending | approved | denied | expired | used')
    .action(async (opts, command: Command) => {
      await perform(
        command,
        (c) => c.call('approvalList', { status: opts.status }),
        (rows) =>
          table([
            ['ID', 'STATUS', 'REQUESTER', 'ACTION', 'CONNECTION', 'SUMMARY'],
            ...rows.map((a) => [
              a.id,
              a.status,
              a.requesterName,
              a.operation.action,
              a.operation.connection,
              controlFree(a.operation.summary.slice(0, 60)),
            ]),
          ]),
      );
    });
  approvals
    .command('show <id>')
    .description('one request: the exact operation, approvers and decisions')
    .action(async (id: string, _opts, command: Command) => {
      await perform(command, (c) => c.call('approvalShow', { id }), renderApproval);
    });
  approvals
    .command('approve <id>')
    .description('approve a pending request (single use unless --for)')
    .option(
      '--for <duration>',
      'keep the approval valid for this long (like 30m), for repeats of the same operation',
    )
    .option('--as <name>', 'the human approving (recorded); default: the admin key')
    .option(
      '--group <group>',
      'a group the approver is in, for requests that name approver groups (repeatable)',
      collect,
    )
    .action(async (id: string, opts, command: Command) => {
      await perform(
        command,
        (c) => c.call('approvalApprove', { id, for: opts.for, as: opts.as, groups: opts.group }),
        (a) =>
          `${a.status === 'approved' ? 'approved' : `recorded approval (${a.decisions.length} of ${a.quorum})`} ${a.id}\n`,
      );
    });
  approvals
    .command('deny <id>')
    .description('deny a pending request')
    .option('--reason <text>', "why (recorded, shown to the requester's operator)")
    .option('--as <name>', 'the human denying (recorded)')
    .action(async (id: string, opts, command: Command) => {
      await perform(
        command,
        (c) => c.call('approvalDeny', { id, reason: opts.reason, as: opts.as }),
        (a) => `denied ${a.id}\n`,
      );
    });
}

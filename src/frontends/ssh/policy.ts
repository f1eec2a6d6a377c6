import { createHash } from 'node:crypto';
import type { ApprovalView } from '../../approvals/approvals.js';
import { type GateServices, gate } from '../../approvals/gate.js';
import type { Decide, Operation } from '../../gateway/pipeline.js';
import type { CedarValue } from '../../policy/policy-engine.js';
import { keyedHash } from '../../vault/envelope.js';

/**
 * The facts of one SSH operation, as policy sees them. `command` is the line as the
 * gateway forwards it (re-quoted argv, or the raw line for ssh:exec-raw); `shown` is the
 * same cleaned of tickets, secrets and findings, for audit and approvers.
 */
export interface SshOperationFacts {
  readonly command?: string;
  readonly shown?: string;
  readonly program?: string;
  readonly args?: readonly string[];
  readonly targetHost?: string;
  readonly targetPort?: number;
  /** Told the approval id when the operation starts waiting for a human. */
  readonly onHold?: (approval: ApprovalView) => void;
}

/** The facts ride on the Operation object the pipeline hands back to `decide` (never in its attributes). */
const FACTS = new WeakMap<Operation, SshOperationFacts>();

export function sshOperation(
  action: string,
  description: string,
  facts: SshOperationFacts,
  preview?: () => string,
): Operation {
  const operation: Operation = {
    action,
    description,
    attributes: {},
    ...(preview === undefined ? {} : { preview }),
  };
  FACTS.set(operation, facts);
  return operation;
}

function detailHash(key: Buffer | undefined, text: string): string {
  if (key !== undefined) return keyedHash(key, `approval-detail:${text}`);
  return createHash('sha256').update(text).digest('hex');
}

/**
 * The pipeline's policy step for SSH: Cedar decides `ssh:exec` (per command, with
 * `command`, `program` and `args` in the context), `ssh:exec-raw`, `ssh:shell`,
 * `ssh:sftp` and `ssh:forward` (with `target_host`, `target_port`). An approval binds the
 * whole command line as forwarded (a keyed hash of it; approvers read the cleaned text).
 */
export function createSshDecide(services: GateServices): Decide {
  return async (input) => {
    const facts = FACTS.get(input.operation) ?? {};
    const context: Record<string, CedarValue> = {};
    if (facts.command !== undefined) context.command = facts.command;
    if (facts.program !== undefined) context.program = facts.program;
    if (facts.args !== undefined) context.args = [...facts.args];
    if (facts.targetHost !== undefined) context.target_host = facts.targetHost;
    if (facts.targetPort !== undefined) context.target_port = facts.targetPort;
    if (input.principal.kind === 'subtask') {
      for (const key of ['workflow', 'subtask'] as const) {
        const value = input.principal.attributes[key];
        if (typeof value === 'string') context[key] = value;
      }
    }
    const detail: Record<string, string> = {};
    if (facts.shown !== undefined) detail.command = facts.shown;
    if (facts.command !== undefined) detail.command_hash = detailHash(services.detailKey, facts.command);
    if (facts.targetHost !== undefined) detail.target = `${facts.targetHost}:${facts.targetPort ?? 0}`;
    const result = await gate(services, {
      principal: input.principal,
      action: input.operation.action,
      resource: { type: 'Connection', id: input.connection.name, attrs: { type: input.connection.type } },
      context,
      operation: {
        kind: 'ssh',
        connection: input.connection.name,
        action: input.operation.action,
        summary: input.operation.description,
        detail,
        ...(input.operation.preview === undefined ? {} : { preview: input.operation.preview }),
      },
      ...(facts.onHold === undefined ? {} : { onHold: facts.onHold }),
      signal: input.signal,
    });
    return {
      verdict: 'allow',
      reasons: [
        ...result.decision.policies,
        ...(result.approval === null ? [] : [`approval:${result.approval.id}`]),
      ],
      recorded: result.recorded,
    };
  };
}

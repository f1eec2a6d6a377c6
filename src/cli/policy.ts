import type { Command } from 'commander';
import { resolveHome } from '../config/home.js';
import { CoatcheckError } from '../core/errors.js';
import type { CedarValue, Decision, PolicyRequest } from '../policy/policy-engine.js';
import type { PolicyHolder } from '../policy/policy-holder.js';
import { ACTIONS } from '../policy/schema.js';
import { type CliIo, EXIT } from './io.js';

const ENTITY_RE = /^([A-Za-z]+)::"([^"\\]{1,256})"$/;

function entity(text: string, field: string, types: readonly string[]): { type: string; id: string } {
  const match = ENTITY_RE.exec(text.trim());
  if (!match || !types.includes(match[1]!)) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      `${field} must look like ${types[0]}::"name" (one of ${types.join(', ')})`,
      {
        details: { field },
      },
    );
  }
  return { type: match[1]!, id: match[2]! };
}

function action(text: string): string {
  const match = /^Action::"([^"]+)"$/.exec(text.trim());
  const id = match ? match[1]! : text.trim();
  if (!(ACTIONS as readonly string[]).includes(id)) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `--action must be one of ${ACTIONS.join(', ')}`, {
      details: { field: '--action' },
    });
  }
  return id;
}

function contextOf(text: string | undefined): Record<string, CedarValue> {
  if (text === undefined) return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--context must be a JSON object', {
      details: { field: '--context' },
    });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--context must be a JSON object', {
      details: { field: '--context' },
    });
  }
  return value as Record<string, CedarValue>;
}

function atOf(text: string | undefined, field: string): number | undefined {
  if (text === undefined) return undefined;
  const at = Date.parse(text);
  if (Number.isNaN(at))
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${field} must be an ISO date and time`, {
      details: { field },
    });
  return at;
}

/** The policy set to check against: --policy, else the home's config, else the built-in one. */
async function holderFor(options: { policy?: string; dir?: string }, io: CliIo): Promise<PolicyHolder> {
  // Loaded here, not at the top: the policy engine (Cedar, WebAssembly) is the slowest
  // module to load, and only these commands need it.
  const { PolicyHolder } = await import('../policy/policy-holder.js');
  if (options.policy !== undefined)
    return new PolicyHolder(options.policy, { timeZone: 'UTC', baseDir: process.cwd() });
  const home = resolveHome(options.dir, io.env);
  try {
    const { loadConfigFile } = await import('../config/load-config.js');
    const config = await loadConfigFile(home.configFile, io.env);
    return new PolicyHolder(config.policy.path, { timeZone: config.policy.timeZone, baseDir: home.dir });
  } catch (error) {
    if (error instanceof CoatcheckError && error.code === 'CC_ERR_HOME_MISSING') {
      return new PolicyHolder(null, { timeZone: 'UTC', baseDir: process.cwd() });
    }
    throw error;
  }
}

function buildRequest(input: {
  principal: string;
  groups?: string[];
  action: string;
  resource: string;
  context?: Record<string, CedarValue>;
  at?: number;
}): PolicyRequest {
  const principal = entity(input.principal, '--principal', ['Agent', 'Human', 'Subtask']);
  const resource = entity(input.resource, '--resource', ['Connection', 'Secret']);
  return {
    principal: {
      kind: principal.type === 'Agent' ? 'agent' : 'oidc',
      type: principal.type as 'Agent',
      name: principal.id,
      groups: input.groups ?? [],
    },
    action: action(input.action),
    resource: resource as PolicyRequest['resource'],
    context: input.context,
    now: input.at,
  };
}

/** Groups of a known agent, from the store (through the running server when there is one); null when unknown. */
export type AgentGroups = (name: string, command: Command) => Promise<readonly string[] | null>;

export function registerPolicyCommands(
  program: Command,
  io: CliIo,
  setExit: (code: number) => void,
  agentGroups?: AgentGroups,
): void {
  const write = (text: string) => io.stdout.write(text);
  const policy = program
    .command('policy')
    .description('Cedar policies: explain a decision, test a policy set');

  policy
    .command('check')
    .description('print the decision (allow | deny | approval) and the policies behind it')
    .option('--policy <path>', "a .cedar file or folder (default: the config's, else the built-in policy)")
    .requiredOption('--principal <entity>', 'Agent::"name", Human::"name" or Subtask::"id"')
    .option('--group <group>', 'a group the principal is in (repeatable)', (v: string, p: string[] = []) => [
      ...p,
      v,
    ])
    .requiredOption('--action <action>', 'Action::"sql:write", or just sql:write')
    .requiredOption('--resource <entity>', 'Connection::"name" or Secret::"name"')
    .option('--context <json>', 'request context, like \'{"statement": "DELETE FROM t"}\'')
    .option('--at <iso-time>', 'evaluate as if at this time (hour and weekday come from it)')
    .action(async (opts, command: Command) => {
      const globals = command.optsWithGlobals() as { json?: boolean; dir?: string };
      // A known agent is decided with its real groups, as the gateway would; --group adds to them.
      let groups: string[] = opts.group ?? [];
      let groupsFrom: 'flags' | 'store' = 'flags';
      const agent = /^Agent::"([^"]{1,128})"$/.exec(opts.principal);
      if (agent !== null && agentGroups !== undefined) {
        const stored = await agentGroups(agent[1]!, command).catch(() => null);
        if (stored !== null) {
          groups = [...new Set([...stored, ...groups])];
          groupsFrom = 'store';
        }
      }
      const holder = await holderFor({ policy: opts.policy, dir: globals.dir }, io);
      try {
        const decision: Decision = holder.engine.decide(
          buildRequest({
            principal: opts.principal,
            groups,
            action: opts.action,
            resource: opts.resource,
            context: contextOf(opts.context),
            at: atOf(opts.at, '--at'),
          }),
        );
        const result = { ...decision, source: holder.engine.source, groups, groupsFrom };
        if (globals.json) {
          write(`${JSON.stringify(result, null, 2)}\n`);
          return;
        }
        const lines: string[] = [decision.effect];
        lines.push(
          `  policies: ${decision.policies.join(', ') || (decision.effect === 'deny' ? '(none permitted it: default deny)' : '-')}`,
        );
        lines.push(
          `  groups: ${groups.length > 0 ? groups.join(', ') : '(none)'}${groupsFrom === 'store' ? " (the agent's groups in the store" + (opts.group ? ' and --group)' : ')') : ''}`,
        );
        if (decision.approvers.length > 0) lines.push(`  approvers: ${decision.approvers.join(', ')}`);
        if (decision.mask.length > 0) lines.push(`  mask: ${decision.mask.join(', ')}`);
        for (const error of decision.errors) lines.push(`  error: ${error}`);
        lines.push(
          `  policy set: ${holder.engine.source === 'builtin' ? 'built-in (no policy configured)' : holder.path}`,
        );
        write(`${lines.join('\n')}\n`);
      } finally {
        holder.close();
      }
    });

  policy
    .command('test <file>')
    .description('run a YAML or JSON list of expected decisions; exit 1 if any differs')
    .option('--policy <path>', "a .cedar file or folder (default: the config's)")
    .action(async (file: string, opts, command: Command) => {
      const globals = command.optsWithGlobals() as { json?: boolean; dir?: string };
      const { readTestCases } = await import('./policy-test-cases.js');
      const cases = await readTestCases(file);
      const holder = await holderFor({ policy: opts.policy, dir: globals.dir }, io);
      try {
        const results = cases.map((c, index) => {
          const decision = holder.engine.decide(
            buildRequest({
              ...c,
              context: c.context as Record<string, CedarValue> | undefined,
              at: atOf(c.at, `[${index}].at`),
            }),
          );
          return {
            name: c.name ?? `case ${index + 1}`,
            expected: c.expect,
            actual: decision.effect,
            policies: decision.policies,
            pass: decision.effect === c.expect,
          };
        });
        const failed = results.filter((r) => !r.pass).length;
        if (globals.json)
          write(`${JSON.stringify({ passed: results.length - failed, failed, results }, null, 2)}\n`);
        else {
          for (const r of results) {
            write(
              `${r.pass ? 'pass' : 'FAIL'}  ${r.name}: expected ${r.expected}, got ${r.actual}${r.policies.length ? ` (${r.policies.join(', ')})` : ''}\n`,
            );
          }
          write(`${results.length - failed} passed, ${failed} failed\n`);
        }
        if (failed > 0) setExit(EXIT.failed);
      } finally {
        holder.close();
      }
    });
}

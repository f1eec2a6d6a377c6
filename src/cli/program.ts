import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import type { AdminClient } from '../admin/client.js';
import type { OperationOutput } from '../admin/operations.js';
import { readAdminKey, resolveHome } from '../config/home.js';
import { CoatcheckError, toCoatcheckError } from '../core/errors.js';
import { newIncidentId } from '../core/ids.js';
import { stdioUrl } from '../frontends/mcp/command.js';
import { type CliIo, EXIT, exitCodeFor, readAllStdin, visibleControls } from './io.js';
import { liveServer } from './live-server.js';

interface GlobalOptions {
  dir?: string;
  json?: boolean;
  server?: string;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

function parsePositiveInt(value: string): number {
  if (!/^[1-9][0-9]{0,9}$/.test(value)) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--uses must be a whole number of at least 1', {
      details: { field: '--uses' },
    });
  }
  return Number(value);
}

/** The subcommand words of argv (up to the first option), for the usage hint. */
function commandPath(argv: readonly string[]): string {
  const words: string[] = [];
  for (const word of argv) {
    if (word.startsWith('-') || words.length >= 2 || !/^[a-z][a-z-]{0,30}$/.test(word)) break;
    words.push(word);
  }
  return words.join(' ');
}

const TOP_LEVEL_COMMANDS = new Set([
  'init',
  'serve',
  'secret',
  'connection',
  'agent',
  'token',
  'audit',
  'backup',
  'restore',
  'sessions',
  'workflow',
  'relay',
  'scan',
  'scrub',
  'tokenize',
  'approvals',
  'mcp',
  'policy',
  'ca',
  'ssh',
  'env',
  'kubeconfig',
  'keys',
]);

/**
 * Which command groups to define. Defining all of them (about a hundred commands with their
 * options) is a good part of a short command's start, so a run that names a known command
 * defines only that group. Help, a bare `coatcheck`, and an unknown word define every group,
 * so help lists them all and a typo gets commander's suggestion.
 */
function commandFilter(argv: readonly string[]): (...names: string[]) => boolean {
  let first: string | null = null;
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i]!;
    if (word === '--dir' || word === '--server') {
      i++; // the option's value
      continue;
    }
    if (word.startsWith('-')) continue;
    first = word;
    break;
  }
  const help = argv.includes('--help') || argv.includes('-h');
  // `--version` alone prints the version and needs no command at all.
  if (first === null && !help && (argv.includes('--version') || argv.includes('-V'))) return () => false;
  if (first === null || !TOP_LEVEL_COMMANDS.has(first) || help) return () => true;
  const selected = first;
  return (...names) => names.includes(selected);
}

/** The admin URL of the server this home's `serve` wrote down, if its process is still alive. */
function runningServerUrl(serverFile: string): string | null {
  return liveServer(serverFile)?.admin ?? null;
}

/**
 * Reach the operations: through a running server's admin API (so its caches and key
 * stay coherent), or directly against the store when none runs. One implementation.
 */
async function connect(options: GlobalOptions, io: CliIo): Promise<AdminClient> {
  const home = resolveHome(options.dir, io.env);
  const serverUrl =
    options.server ?? (io.env.COATCHECK_ADMIN_URL || null) ?? runningServerUrl(home.serverFile);
  if (serverUrl !== null) {
    let parsed: URL | null = null;
    try {
      parsed = new URL(serverUrl);
    } catch {
      parsed = null;
    }
    if (parsed === null || (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')) {
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        '--server (or COATCHECK_ADMIN_URL) must be an http:// or https:// URL, like http://127.0.0.1:7070',
        { details: { field: '--server' } },
      );
    }
    const key = readAdminKey(home, io.env);
    if (key === null) {
      throw new CoatcheckError(
        'CC_ERR_ADMIN_UNAUTHORIZED',
        `no admin key: set COATCHECK_ADMIN_KEY or run in the home (${home.adminKeyFile})`,
      );
    }
    const { createRemoteClient } = await import('../admin/client.js');
    return createRemoteClient(serverUrl, key);
  }
  const [{ createLocalClient }, { openContext }] = await Promise.all([
    import('../admin/client.js'),
    import('../server/context.js'),
  ]);
  return createLocalClient(await openContext(home, { env: io.env }));
}

type Renderer<T> = (result: T) => string;

/** `--url`, or for an mcp connection `--command` (stored as a stdio: URL, docs/mcp.md). */
function connectionUrl(type: string, url: string | undefined, command: string | undefined): string {
  if (command !== undefined) {
    if (type !== 'mcp' || url !== undefined) {
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        '--command is for mcp connections, instead of --url',
        {
          details: { field: '--command' },
        },
      );
    }
    return stdioUrl(command);
  }
  if (url === undefined) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      '--url is required (or --command for an mcp connection)',
      {
        details: { field: '--url' },
      },
    );
  }
  return url;
}

/** A CA file for `connection add --ca`: PEM certificates only (a key here would be stored in clear). */
function readCaFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `--ca: cannot read ${file}`, {
      details: { field: '--ca' },
    });
  }
  if (/PRIVATE KEY/.test(text) || !/^\s*-----BEGIN CERTIFICATE-----/.test(text)) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--ca must hold PEM certificates only', {
      details: { field: '--ca' },
    });
  }
  return `${text.trim()}\n`;
}

function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return (
    rows
      .map((r) =>
        r
          .map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!)))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  let exitCode: number = EXIT.ok;
  /** Resources commands opened lazily (the tokenizing client), closed when the run ends. */
  const closeAfterRun: Array<() => Promise<void>> = [];
  const write = (text: string) => io.stdout.write(text);

  const program = new Command('coatcheck')
    .description('A gateway that gives AI agents claim tickets instead of secrets.')
    .version('0.1.0')
    .option('--dir <dir>', 'coatcheck home (default: $COATCHECK_HOME, else ./.coatcheck)')
    .option('--json', 'print one JSON document')
    .option(
      '--server <url>',
      "admin API of a running server (default: $COATCHECK_ADMIN_URL, else the home's running server)",
    )
    .exitOverride()
    // Usage errors are reported once, below, as one line with a code and a hint (and as
    // JSON with --json); commander's own message is kept, its help dump is not printed.
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: () => undefined,
    })
    .showHelpAfterError(false);

  const globals = (command: Command) => command.optsWithGlobals() as GlobalOptions;
  const wanted = commandFilter(argv);

  /** Run an operation and print its result (human text, or JSON with --json). */
  async function perform<T>(
    command: Command,
    fn: (client: AdminClient) => Promise<T>,
    render: Renderer<T>,
  ): Promise<void> {
    const options = globals(command);
    const client = await connect(options, io);
    try {
      const result = await fn(client);
      // Human output passes visibleControls as a last net: renderers print agent-influenced text.
      write(options.json ? `${JSON.stringify(result, null, 2)}\n` : visibleControls(render(result)));
    } finally {
      await client.close();
    }
  }

  if (wanted('init')) {
    program
      .command('init')
      .description('create a coatcheck home: config, master key (0600), admin key (0600), store')
      .action(async (_opts, command: Command) => {
        const options = globals(command);
        const { initHome } = await import('../server/context.js');
        const result = await initHome(resolveHome(options.dir, io.env), { env: io.env });
        const out = {
          home: result.home.dir,
          config: result.home.configFile,
          masterKey:
            result.masterKeySource === 'env'
              ? io.env.COATCHECK_MASTER_KEY_FILE
                ? `COATCHECK_MASTER_KEY_FILE (${io.env.COATCHECK_MASTER_KEY_FILE})`
                : 'COATCHECK_MASTER_KEY'
              : result.home.masterKeyFile,
          adminKeyFile: result.adminKeySource === 'env' ? 'COATCHECK_ADMIN_KEY' : result.home.adminKeyFile,
          store: result.store,
        };
        write(
          options.json
            ? `${JSON.stringify(out, null, 2)}\n`
            : `initialized coatcheck home ${out.home}\n  config      ${out.config}\n  master key  ${out.masterKey}\n  admin key   ${out.adminKeyFile}\n  store       ${out.store}\n`,
        );
      });
  }

  if (wanted('serve')) {
    program
      .command('serve')
      .description('run the gateway (admin API; front-ends as configured)')
      .option('--listen-admin <addr>', 'admin API address (overrides the config)')
      .option('--listen-http <addr>', 'HTTP front-end address (overrides the config)')
      .option('--listen-postgres <addr>', 'PostgreSQL front-end address (overrides the config)')
      .option('--listen-proxy <addr>', 'forward proxy address, HTTPS_PROXY (overrides the config)')
      .option('--listen-k8s <addr>', 'Kubernetes API front-end address, for kubectl (overrides the config)')
      .option('--listen-ssh <addr>', 'SSH front-end address (overrides the config)')
      .option('--listen-relay <addr>', 'relay listener address, relays dial in here (overrides the config)')
      .option('--upstream-ca <file>', 'extra CA certificates (PEM) trusted for forward-proxy upstreams')
      .option('--init', 'create the home first if it does not exist')
      .option('--policy <path>', 'a .cedar file or a folder of them (overrides the config)')
      .option(
        '--workers <n>',
        'gateway processes behind the listeners: a number, or auto for one per core (default 1; COATCHECK_WORKERS)',
      )
      .action(async (opts, command: Command) => {
        const { serveCommand } = await import('./serve.js');
        exitCode = await serveCommand({ ...globals(command), ...opts }, io);
      });
  }

  if (wanted('secret')) {
    // ---- secrets
    const secret = program.command('secret').description('secrets in the vault');
    secret
      .command('add <name>')
      .description('store a secret; the value is read from stdin (or --file), never from an argument')
      .option(
        '--allow <dest>',
        'a destination it may be released to: connection name or host pattern (repeatable)',
        collect,
      )
      .option(
        '--allow-placement <list>',
        'where else a ticket for it may stand besides credential positions: header,query,body,path (repeatable)',
        collect,
      )
      .option(
        '--allow-sql <connection>',
        'allow its tickets inside SQL text on this connection (repeatable)',
        collect,
      )
      .option('--allow-plaintext', 'accept http:// destinations to hosts that are not loopback')
      .option('--kind <kind>', 'what it is (api-key, password, ...)')
      .option('--file <path>', 'read the value from this file instead of stdin')
      .option('--keep-newline', 'keep one trailing newline (stripped by default)')
      .action(async (name: string, opts, command: Command) => {
        let value: Buffer;
        if (opts.file !== undefined) {
          try {
            value = readFileSync(opts.file);
          } catch {
            throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--file cannot be read', {
              details: { field: '--file' },
            });
          }
        } else {
          if (io.stdin.isTTY) io.stderr.write('reading the secret value from stdin; end with Ctrl-D\n');
          value = await readAllStdin(io, 70 * 1024);
        }
        if (!opts.keepNewline) {
          if (value.at(-1) === 0x0a) value = value.subarray(0, value.at(-2) === 0x0d ? -2 : -1);
        }
        await perform(
          command,
          (c) =>
            c.call('secretAdd', {
              name,
              valueBase64: value.toString('base64'),
              kind: opts.kind,
              allow: opts.allow ?? [],
              ...(opts.allowPlacement === undefined ? {} : { placements: opts.allowPlacement }),
              ...(opts.allowSql === undefined ? {} : { allowSql: opts.allowSql }),
              ...(opts.allowPlaintext ? { allowPlaintext: true } : {}),
            }),
          (r) =>
            `added secret ${r.name} (${r.id}, ${r.fingerprint})\n  allow: ${r.allow.join(', ') || '(nowhere yet)'}\n  placements: ${r.placements.join(', ')}\n`,
        );
      });
    secret
      .command('update <name>')
      .description('change where a secret may be released (the value stays as it is)')
      .option('--allow <dest>', 'replace its destinations (repeatable)', collect)
      .option(
        '--allow-placement <list>',
        'replace its placements: credential plus header,query,body,path (repeatable)',
        collect,
      )
      .option(
        '--allow-sql <connection>',
        'allow its tickets inside SQL text on this connection (repeatable)',
        collect,
      )
      .option('--allow-plaintext', 'accept http:// destinations to hosts that are not loopback')
      .action(async (name: string, opts, command: Command) => {
        await perform(
          command,
          (c) =>
            c.call('secretUpdate', {
              name,
              ...(opts.allow === undefined ? {} : { allow: opts.allow }),
              ...(opts.allowPlacement === undefined ? {} : { placements: opts.allowPlacement }),
              ...(opts.allowSql === undefined ? {} : { allowSql: opts.allowSql }),
              ...(opts.allowPlaintext ? { allowPlaintext: true } : {}),
            }),
          (r) =>
            `updated secret ${r.name} (${r.id})\n  allow: ${r.allow.join(', ') || '(nowhere yet)'}\n  placements: ${r.placements.join(', ')}\n`,
        );
      });
    secret
      .command('list')
      .description('list secrets (names, destinations, fingerprints; never values)')
      .action(async (_opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('secretList', {}),
          (rows) =>
            table([
              ['NAME', 'ID', 'KIND', 'FINGERPRINT', 'ALLOW', 'PLACEMENTS'],
              ...rows.map((r) => [
                r.name,
                r.id,
                r.kind,
                r.fingerprint,
                r.allow.join(','),
                r.placements.join(','),
              ]),
            ]),
        );
      });
    secret
      .command('rm <name>')
      .description('erase a secret: its data key is destroyed and every ticket for it stops working')
      .option('--force', 'erase even if a connection uses it')
      .action(async (name: string, opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('secretRemove', { name, force: opts.force ?? false }),
          (r) => `erased secret ${r.name} (${r.id})\n`,
        );
      });
  }

  if (wanted('connection')) {
    // ---- connections
    const connection = program
      .command('connection')
      .description('named targets and the credentials the gateway injects');
    connection
      .command('add <name>')
      .description('register a connection')
      .requiredOption('--type <type>', 'http | postgres | mcp | llm | kubernetes')
      .option('--url <url>', 'where it points (no credentials in it)')
      .option(
        '--command <command>',
        "mcp: a stdio MCP server the gateway launches, like 'node server.js' (instead of --url)",
      )
      .option('--credential <secret>', 'secret the gateway uses to log in upstream')
      .option(
        '--ca <file>',
        "kubernetes: the API server's CA certificate (PEM) its TLS certificate is verified against",
      )
      .option(
        '--inject-header <header>',
        "header to add, like 'Authorization: Bearer {{secret:NAME}}' (repeatable)",
        collect,
      )
      .option(
        '--read-only',
        'postgres: refuse every statement that may write (writes, DDL, privilege, unknown functions)',
      )
      .option('--block-ddl', 'postgres: refuse schema and privilege changes')
      .option(
        '--require-approval-for-writes',
        'postgres: writes need a human approval (refused until approvals exist)',
      )
      .option('--row-limit <rows>', 'postgres: most rows one statement returns', (v) => Number(v))
      .option(
        '--mask-column <pattern>',
        "postgres: mask columns whose name matches, like '*email*' (repeatable)",
        collect,
      )
      .option('--no-scan-secrets', 'postgres: do not replace known vault secrets found in results')
      .option(
        '--database <name>',
        "postgres: another database clients may pick as '<connection>/<database>' ('*' for any; repeatable)",
        collect,
      )
      .option(
        '--host-key <key>',
        "ssh: the upstream's host key, a line of `ssh-keyscan -t ed25519 HOST` ('ssh-ed25519 AAAA…') or its SHA256: fingerprint; or tofu (the key presented at the first connection is pinned, audited)",
      )
      .option(
        '--recording <mode>',
        'session recording: off | metadata | full (default: recording.default in the config)',
      )
      .option('--via <relay>', 'reach the upstream through this relay (`relay create`, docs/relay.md)')
      .action(async (name: string, opts, command: Command) => {
        const rules: Record<string, unknown> = {};
        if (typeof opts.hostKey === 'string') rules.hostKey = pinnedHostKey(opts.hostKey);
        if (opts.recording !== undefined) {
          if (!['off', 'metadata', 'full'].includes(String(opts.recording))) {
            throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--recording must be off, metadata or full', {
              details: { field: '--recording' },
            });
          }
          rules.recording = opts.recording;
        }
        if (opts.readOnly === true) rules.readOnly = true;
        if (opts.blockDdl === true) rules.blockDdl = true;
        if (opts.requireApprovalForWrites === true) rules.requireApprovalForWrites = true;
        if (opts.rowLimit !== undefined) {
          if (!Number.isInteger(opts.rowLimit) || opts.rowLimit < 1) {
            throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--row-limit must be a positive integer', {
              details: { field: '--row-limit' },
            });
          }
          rules.rowLimit = opts.rowLimit;
        }
        if (Array.isArray(opts.maskColumn) && opts.maskColumn.length > 0) rules.maskColumns = opts.maskColumn;
        if (opts.scanSecrets === false) rules.scanSecrets = false;
        if (Array.isArray(opts.database) && opts.database.length > 0) rules.databases = opts.database;
        if (typeof opts.ca === 'string') rules.ca = readCaFile(opts.ca);
        const injectHeaders: Record<string, string> = {};
        for (const header of (opts.injectHeader as string[] | undefined) ?? []) {
          const colon = header.indexOf(':');
          if (colon <= 0) {
            throw new CoatcheckError(
              'CC_ERR_INVALID_ARGUMENT',
              "--inject-header must look like 'Name: value'",
              { details: { field: '--inject-header' } },
            );
          }
          injectHeaders[header.slice(0, colon).trim()] = header.slice(colon + 1).trim();
        }
        await perform(
          command,
          (c) =>
            c.call('connectionAdd', {
              name,
              type: opts.type,
              url: connectionUrl(opts.type, opts.url, opts.command),
              credential: opts.credential,
              injectHeaders,
              ...(Object.keys(rules).length > 0 ? { rules } : {}),
              ...(typeof opts.via === 'string' ? { via: opts.via } : {}),
            }),
          (r) =>
            `added connection ${r.name} (${r.type} ${r.url}${r.via === null ? '' : ` via relay ${r.via}`})\n`,
        );
      });
    connection
      .command('list')
      .description('list connections')
      .action(async (_opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('connectionList', {}),
          (rows) =>
            table([
              ['NAME', 'TYPE', 'URL', 'CREDENTIAL', 'VIA', 'SOURCE'],
              ...rows.map((r) => [r.name, r.type, r.url, r.credential ?? '-', r.via ?? '-', r.source]),
            ]),
        );
      });
    connection
      .command('rm <name>')
      .description('remove a connection added with `connection add`')
      .action(async (name: string, _opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('connectionRemove', { name }),
          (r) => `removed connection ${r.name}\n`,
        );
      });
  }

  if (wanted('agent')) {
    // ---- agents
    const agent = program.command('agent').description('agent identities and their keys');
    agent
      .command('create <name>')
      .description('create an agent; prints its key, once')
      .option('--group <group>', 'group membership (repeatable)', collect)
      .option('--ttl <duration>', 'key lifetime, like 8h or 30d')
      .action(async (name: string, opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('agentCreate', { name, groups: opts.group, ttl: opts.ttl }),
          (r) => `${r.key}\n`,
        );
      });
    agent
      .command('list')
      .description('list agents')
      .action(async (_opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('agentList', {}),
          (rows) =>
            table([
              ['NAME', 'ID', 'GROUPS', 'STATUS', 'EXPIRES'],
              ...rows.map((r) => [r.name, r.id, r.groups.join(','), r.status, r.expiresAt ?? '-']),
            ]),
        );
      });
    agent
      .command('revoke <name>')
      .description('revoke an agent; its key stops working')
      .action(async (name: string, _opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('agentRevoke', { name }),
          (r) => `revoked agent ${r.name} (${r.id})\n`,
        );
      });

    agent
      .command('add-ssh-key <name> <pubkey-file>')
      .description(
        'register an SSH public key (a .pub file) to an agent: it logs in to the SSH front-end with it',
      )
      .action(async (name: string, file: string, _opts, command: Command) => {
        let text: string;
        try {
          // Bounded: a public key line is a few KiB at most.
          const bytes = readFileSync(file);
          if (bytes.length > 16 * 1024) throw new Error('too long');
          text = bytes.toString('utf8');
        } catch {
          throw new CoatcheckError(
            'CC_ERR_INVALID_ARGUMENT',
            'PUBKEY_FILE cannot be read (or is longer than 16 KiB)',
            { details: { field: 'pubkey-file' } },
          );
        }
        await perform(
          command,
          (c) => c.call('agentSshKeyAdd', { name, publicKey: text }),
          (r) => `registered ${r.type} key ${r.fingerprint} to agent ${r.agent} (${r.id})\n`,
        );
      });
    agent
      .command('list-ssh-keys <name>')
      .description("list an agent's SSH keys")
      .option('--all', 'include removed keys')
      .action(async (name: string, opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('agentSshKeyList', { name, all: opts.all === true }),
          (rows) =>
            table([
              ['FINGERPRINT', 'TYPE', 'ID', 'COMMENT', 'ADDED', 'REMOVED'],
              ...rows.map((r) => [
                r.fingerprint,
                r.type,
                r.id,
                r.comment || '-',
                r.createdAt,
                r.removedAt ?? '-',
              ]),
            ]),
        );
      });
    agent
      .command('remove-ssh-key <name> <key>')
      .description("remove an agent's SSH key (its SHA256:… fingerprint or id); its SSH sessions end")
      .action(async (name: string, key: string, _opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('agentSshKeyRemove', { name, key }),
          (r) => `removed key ${r.fingerprint} of agent ${r.agent}\n`,
        );
      });
  }

  if (wanted('token')) {
    // ---- tokens
    const token = program.command('token').description('tickets: issue, narrow, inspect, revoke');
    const ticketLine = (r: OperationOutput<'tokenIssue'>) => `${r.ticket}\n`;
    token
      .command('issue')
      .description('issue a ticket for a secret, bound to an agent; prints the ticket alone')
      .requiredOption('--secret <name>', 'the secret it stands for')
      .requiredOption('--to <agent>', 'the agent it is bound to')
      .option(
        '--dest <dest>',
        "destination, within the secret's --allow (repeatable; default: all of them)",
        collect,
      )
      .option('--ttl <duration>', 'lifetime, like 15m (default from config)')
      .addOption(new Option('--uses <n>', 'maximum number of exchanges').argParser(parsePositiveInt))
      .action(async (opts, command: Command) => {
        await perform(
          command,
          (c) =>
            c.call('tokenIssue', {
              secret: opts.secret,
              to: opts.to,
              destinations: opts.dest,
              ttl: opts.ttl,
              uses: opts.uses,
            }),
          ticketLine,
        );
      });
    token
      .command('narrow <ticket>')
      .description('derive a narrower child ticket; prints it alone')
      .option('--dest <dest>', "destination within the parent's (repeatable)", collect)
      .option('--ttl <duration>', "lifetime, ending no later than the parent's")
      .addOption(
        new Option('--uses <n>', 'maximum exchanges, no more than the parent has left').argParser(
          parsePositiveInt,
        ),
      )
      .action(async (ticket: string, opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('tokenNarrow', { ticket, destinations: opts.dest, ttl: opts.ttl, uses: opts.uses }),
          ticketLine,
        );
      });
    token
      .command('inspect <ticketOrId>')
      .description("show a ticket's scope and status")
      .action(async (ticket: string, _opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('tokenInspect', { ticket }),
          (r) =>
            [
              `ticket       ${r.id}`,
              `status       ${r.status}`,
              `secret       ${r.secret ?? '(erased)'} (${r.secretId})`,
              `principal    ${r.principal}`,
              `destinations ${r.destinations.join(', ')}`,
              `expires      ${r.expiresAt ?? 'never'}`,
              `uses         ${r.uses}${r.maxUses === null ? '' : ` of ${r.maxUses}`}`,
              `parent       ${r.parentId ?? '-'}`,
              `chain        ${r.chain.join(' <- ')}`,
              '',
            ].join('\n'),
        );
      });
    token
      .command('revoke <ticketOrId>')
      .description('revoke a ticket and every ticket narrowed from it')
      .action(async (ticket: string, _opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('tokenRevoke', { ticket }),
          (r) =>
            `revoked ${r.revoked.length} ticket(s): ${r.revoked.join(', ') || `(${r.id} was already revoked)`}\n`,
        );
      });
    token
      .command('list')
      .description('list tickets (ids and scope; tickets themselves are never stored)')
      .option('--secret <name>', 'only tickets for this secret')
      .option('--agent <name>', 'only tickets bound to this agent')
      .option('--all', 'include revoked and expired tickets')
      .action(async (opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('tokenList', { secret: opts.secret, agent: opts.agent, all: opts.all }),
          (rows) =>
            table([
              ['ID', 'SECRET', 'PRINCIPAL', 'STATUS', 'EXPIRES', 'USES'],
              ...rows.map((r) => [
                r.id,
                r.secret ?? '-',
                r.principal,
                r.status,
                r.expiresAt ?? '-',
                `${r.uses}/${r.maxUses ?? '∞'}`,
              ]),
            ]),
        );
      });
  }

  if (wanted('audit')) {
    // ---- audit
    const audit = program.command('audit').description('the hash-chained audit log');
    const auditLine = (r: {
      seq: number;
      ts: number;
      type: string;
      actor: string;
      data: Record<string, unknown>;
    }) =>
      `${String(r.seq).padStart(6)} ${new Date(r.ts).toISOString()} ${r.type.padEnd(18)} ${r.actor.padEnd(24)} ${JSON.stringify(r.data)}\n`;
    audit
      .command('tail')
      .description('the last records')
      .option('-n, --lines <n>', 'how many', '20')
      .action(async (opts, command: Command) => {
        const limit = Number(opts.lines);
        if (!Number.isSafeInteger(limit) || limit < 1 || limit > 10_000) {
          throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--lines must be 1 to 10000', {
            details: { field: '--lines' },
          });
        }
        await perform(
          command,
          (c) => c.call('auditTail', { limit }),
          (rows) => rows.map(auditLine).join(''),
        );
      });
    audit
      .command('export')
      .description('every record, in order (JSON Lines with --json)')
      .action(async (_opts, command: Command) => {
        const options = globals(command);
        const client = await connect(options, io);
        try {
          let after = 0;
          for (;;) {
            const page = await client.call('auditExport', { after, limit: 1000 });
            for (const record of page)
              write(options.json ? `${JSON.stringify(record)}\n` : visibleControls(auditLine(record)));
            if (page.length < 1000) break;
            after = page.at(-1)!.seq;
          }
        } finally {
          await client.close();
        }
      });
    audit
      .command('verify')
      .description('check the hash chain; exit 0 when intact, 1 and the first bad record when not')
      .option(
        '--anchor <file>',
        'also prove the log reaches the head in this anchor file (from backup or audit anchor)',
      )
      .action(async (opts: { anchor?: string }, command: Command) => {
        const options = globals(command);
        const { readAnchor } = await import('../admin/backup.js');
        const anchor = opts.anchor === undefined ? undefined : readAnchor(resolve(opts.anchor));
        const client = await connect(options, io);
        try {
          const r = await client.call('auditVerify', anchor === undefined ? {} : { anchor });
          write(
            options.json
              ? `${JSON.stringify(r, null, 2)}\n`
              : visibleControls(
                  (r.ok
                    ? `audit log intact: ${r.records} records${anchor === undefined ? '' : `, reaching the anchor (record ${anchor.seq})`}\n`
                    : `audit log damaged at record ${r.seq} (${r.problem}): ${r.message}\n`) +
                    (r.recordings.problems.length === 0
                      ? // A log without full recordings says nothing of them.
                        r.recordings.checked === 0
                        ? ''
                        : `recordings intact: ${r.recordings.checked} vouched for by the log\n`
                      : r.recordings.problems
                          .map((p) => `recording damaged (${p.problem}): ${p.message}\n`)
                          .join('')),
                ),
          );
          if (!r.ok || r.recordings.problems.length > 0) exitCode = EXIT.failed;
        } finally {
          await client.close();
        }
      });
    audit
      .command('anchor')
      .description('print the current audit head (seq and hash) as JSON, to keep outside the store')
      .action(async (_opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('auditAnchor', {}),
          (r) => `${JSON.stringify(r)}\n`,
        );
      });
  }

  if (wanted('backup')) {
    // ---- backup and restore
    program
      .command('backup')
      .description('write a consistent copy of the SQLite store (while serving) and PATH.anchor.json')
      .argument('<path>', 'a new file (never overwritten)')
      .action(async (path: string, _opts, command: Command) => {
        await perform(
          command,
          (c) => c.call('backup', { path: resolve(path) }),
          (r) =>
            `backup written: ${r.path}\n  anchor      ${r.anchorFile} (audit record ${r.seq})\n  master key  ${r.masterKey} (keep the key file that has this id)\n`,
        );
      });
  }
  if (wanted('restore')) {
    program
      .command('restore')
      .description(
        'restore a backup into this home, whose store file must be missing; verifies it against its anchor',
      )
      .argument('<backup>', 'a file written by coatcheck backup')
      .action(async (backup: string, _opts, command: Command) => {
        const options = globals(command);
        const home = resolveHome(options.dir, io.env);
        if (runningServerUrl(home.serverFile) !== null)
          throw new CoatcheckError('CC_ERR_SERVER_RUNNING', 'stop the server on this home before restoring');
        const { restoreStore } = await import('../admin/backup.js');
        const r = await restoreStore(home, resolve(backup), io.env);
        write(
          options.json
            ? `${JSON.stringify(r, null, 2)}\n`
            : `restored ${r.store}: audit log intact (${r.verify.ok ? r.verify.records : 0} records${r.anchored ? ', reaching its anchor' : '; no anchor file found, completeness not proven'})\n`,
        );
      });
  }

  if (wanted('sessions')) {
    (await import('./sessions.js')).registerSessionCommands(program, {
      perform,
      table,
      write,
      setExitCode: (code) => {
        exitCode = code;
      },
    });
  }
  if (wanted('workflow')) {
    (await import('./workflows.js')).registerWorkflowCommands(program, { perform, table });
  }
  if (wanted('relay')) {
    (await import('./relay.js')).registerRelayCommands(program, io, {
      perform,
      table,
      exit: (code) => {
        exitCode = code;
      },
    });
  }
  if (wanted('scan', 'scrub', 'tokenize')) {
    // scan, scrub, tokenize: the detector. scrub and tokenize clean text with the vault's
    // secrets too, through the textClean operation (the running server's admin API, or the
    // store in process): the CLI sends text and gets it back cleaned, never a secret value.
    let cleanClient: Promise<AdminClient> | null = null;
    (await import('../detect/cli.js')).registerDetectCommands(program, {
      stdin: io.stdin,
      stdout: io.stdout,
      stderr: io.stderr as CliIo['stderr'] & { isTTY?: boolean },
      setExitCode: (code) => {
        exitCode = code;
      },
      version: '0.1.0',
      async cleaner() {
        const options = program.opts() as GlobalOptions;
        const home = resolveHome(options.dir, io.env);
        // No home and no server named: there is no vault here, so no secret to know.
        if (!existsSync(home.configFile) && options.server === undefined && !io.env.COATCHECK_ADMIN_URL)
          return null;
        cleanClient ??= connect(options, io);
        const client = await cleanClient;
        return async (text, request) =>
          (
            await client.call('textClean', {
              text,
              mode: request.mode,
              lines: request.lines,
              pii: request.pii,
              ...(request.to === undefined ? {} : { to: request.to }),
              ...(request.destinations === undefined ? {} : { destinations: [...request.destinations] }),
              source: request.source,
            })
          ).text;
      },
    });
    closeAfterRun.push(async () => {
      if (cleanClient !== null) await (await cleanClient).close();
    });
  }
  if (wanted('approvals')) {
    (await import('./approvals.js')).registerApprovalCommands(program, { perform, table });
  }
  if (wanted('mcp')) {
    (await import('./mcp.js')).registerMcpCommands(program, io, async () => {
      const { openContext } = await import('../server/context.js');
      return openContext(resolveHome((program.opts() as GlobalOptions).dir, io.env), { env: io.env });
    });
  }
  if (wanted('policy')) {
    (await import('./policy.js')).registerPolicyCommands(
      program,
      io,
      (code) => {
        exitCode = code;
      },
      async (name, command) => {
        const home = resolveHome(globals(command).dir, io.env);
        if (!existsSync(home.configFile) && globals(command).server === undefined) return null;
        const client = await connect(globals(command), io);
        try {
          const agents = (await client.call('agentList', {})) as ReadonlyArray<{
            name: string;
            groups: readonly string[];
          }>;
          return agents.find((a) => a.name === name)?.groups ?? null;
        } finally {
          await client.close();
        }
      },
    );
  }
  if (wanted('ca', 'ssh', 'env')) {
    (await import('./proxy.js')).registerProxyCommands(program, { perform }, io);
  }
  if (wanted('kubeconfig')) {
    (await import('./kubeconfig.js')).registerKubeconfigCommand(program, { perform });
  }

  if (wanted('keys')) {
    // ---- keys
    program
      .command('keys')
      .description('master key management')
      .command('rotate')
      .description(
        'rotate the master key: add a new key, make it the one new data is sealed under, rewrap every data key, retire the old key (kept for backups); resumes a rotation in progress',
      )
      .option(
        '--prepare',
        'stop after adding the new key (copy its file to replicas that do not share the keys directory, then run `keys rotate` again)',
      )
      .action(async (opts: { prepare?: boolean }, command: Command) => {
        await perform(
          command,
          (c) => c.call('keysRotate', opts.prepare === true ? { until: 'added' } : {}),
          (r) =>
            r.phase === 'added'
              ? `added master key ${r.newKey} (${r.keyFile}); ${r.previousKey} still seals new data\n` +
                'every replica must be able to read that file; then run `coatcheck keys rotate` to finish\n'
              : `rotated master key ${r.previousKey} -> ${r.newKey} (${r.dataKeysRewrapped} data keys rewrapped${r.resumed ? ', resumed' : ''})\n` +
                `  new key file  ${r.keyFile}\n  ${r.previousKey} is retired; keep its key file for backups taken before now\n`,
        );
      });
  }

  try {
    await program.parseAsync([...argv], { from: 'user' });
    for (const close of closeAfterRun) await close();
    return exitCode;
  } catch (error) {
    for (const close of closeAfterRun) await close().catch(() => undefined);
    if (error instanceof CommanderError) {
      if (
        error.code === 'commander.helpDisplayed' ||
        error.code === 'commander.version' ||
        error.code === 'commander.help'
      )
        return EXIT.ok;
      const message = error.message.replace(/^error: /, '').trim();
      const usage = new CoatcheckError('CC_ERR_INVALID_ARGUMENT', message, { details: { field: null } });
      if (argv.includes('--json')) io.stdout.write(`${JSON.stringify({ error: usage.toJSON() }, null, 2)}\n`);
      else {
        const words = commandPath(argv)
          .split(' ')
          .filter((w) => w !== '');
        if (error.code === 'commander.unknownCommand') words.pop();
        const where = words.join(' ');
        io.stderr.write(
          `coatcheck: CC_ERR_INVALID_ARGUMENT: ${message}\n  (see: coatcheck ${where === '' ? '' : `${where} `}--help)\n`,
        );
      }
      return EXIT.usage;
    }
    const incident = newIncidentId();
    const failure = toCoatcheckError(error, incident);
    const json = argv.includes('--json');
    if (failure.code === 'CC_ERR_INTERNAL') {
      io.stderr.write(
        `coatcheck: internal error (incident ${incident}): ${(error as Error)?.name ?? 'Error'}\n`,
      );
    }
    if (json) io.stdout.write(`${JSON.stringify({ error: failure.toJSON() }, null, 2)}\n`);
    else io.stderr.write(`coatcheck: ${failure.code}: ${failure.message}\n`);
    return exitCodeFor(failure);
  }
}

/** `--host-key`: a fingerprint as is; from a known_hosts or ssh-keyscan line, the key type and its base64. */
function pinnedHostKey(text: string): string {
  const words = text.trim().split(/\s+/);
  if (words.length === 1) return words[0]!;
  const at = words.findIndex((w) => /^(ssh-|ecdsa-sha2-)/.test(w));
  return at === -1 || at + 1 >= words.length ? text.trim() : `${words[at]} ${words[at + 1]}`;
}

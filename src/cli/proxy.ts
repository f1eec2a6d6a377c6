import { rootCertificates } from 'node:tls';
import type { Command } from 'commander';
import { resolveHome, writeFileDurably } from '../config/home.js';
import { CoatcheckError } from '../core/errors.js';
import type { SessionCommandHelpers } from './sessions.js';

const DEFAULT_PROXY = '127.0.0.1:7090';
/** Left in the block when the agent key is not at hand: the shell or compose file fills it in. */
// biome-ignore lint/suspicious/noTemplateCurlyInString: a shell variable reference, printed as is
export const AGENT_KEY_REFERENCE = '${COATCHECK_AGENT_KEY}';

export interface ProxyEnvInput {
  readonly agent: string;
  /** HOST:PORT of the forward proxy. */
  readonly proxy: string;
  /** The agent key, or null to leave a `${COATCHECK_AGENT_KEY}` reference for the shell to fill. */
  readonly agentKey: string | null;
  /** The CA certificate alone (Node's NODE_EXTRA_CA_CERTS adds to its roots). */
  readonly caFile: string;
  /** The CA plus the public roots (SSL_CERT_FILE and friends replace the roots). */
  readonly bundleFile: string;
  /** HOST:PORT of the gateway's own listeners, which must not go through the proxy. */
  readonly noProxy?: readonly string[];
}

export const ENV_SHELLS = ['sh', 'fish', 'powershell', 'dotenv'] as const;
export type EnvShell = (typeof ENV_SHELLS)[number];

/** A value for one shell, with the agent-key reference left for that shell to expand. */
function quoteFor(shell: EnvShell, parts: ReadonlyArray<string | typeof KEY_REF>): string {
  const literal = (text: string) =>
    shell === 'sh'
      ? text.replace(/[\\"$`]/g, (c) => `\\${c}`)
      : shell === 'fish'
        ? text.replace(/[\\"$]/g, (c) => `\\${c}`)
        : shell === 'powershell'
          ? text.replace(/[`"$]/g, (c) => `\`${c}`)
          : text;
  const ref = {
    sh: AGENT_KEY_REFERENCE,
    fish: '$COATCHECK_AGENT_KEY',
    powershell: '$env:COATCHECK_AGENT_KEY',
    dotenv: AGENT_KEY_REFERENCE,
  }[shell];
  const body = parts.map((p) => (p === KEY_REF ? ref : literal(p))).join('');
  return shell === 'dotenv' ? body : `"${body}"`;
}

const KEY_REF = Symbol('agent key reference');

/**
 * The environment block for an agent's process or container: exported variables in the
 * chosen shell's syntax (sh: `export K="v"`, so child processes such as git and curl see
 * them), or dotenv `K=v` lines for `--env-file`. NO_PROXY names the gateway's own
 * listeners, so a client does not send the gateway's own URLs through the proxy.
 */
export function proxyEnvLines(input: ProxyEnvInput, shell: EnvShell = 'sh'): string {
  const keyPart = input.agentKey === null ? KEY_REF : encodeURIComponent(input.agentKey);
  const url: Array<string | typeof KEY_REF> = [
    `http://${encodeURIComponent(input.agent)}:`,
    keyPart,
    `@${input.proxy}`,
  ];
  const noProxy = [...new Set(input.noProxy ?? [])].join(',');
  const vars: Array<[string, Array<string | typeof KEY_REF>]> = [
    ['HTTPS_PROXY', url],
    ['HTTP_PROXY', url],
    ['https_proxy', url],
    ['http_proxy', url],
    ...(noProxy === ''
      ? []
      : ([
          ['NO_PROXY', [noProxy]],
          ['no_proxy', [noProxy]],
        ] as Array<[string, string[]]>)),
    ['NODE_EXTRA_CA_CERTS', [input.caFile]],
    ['SSL_CERT_FILE', [input.bundleFile]],
    ['REQUESTS_CA_BUNDLE', [input.bundleFile]],
    ['CURL_CA_BUNDLE', [input.bundleFile]],
    ['GIT_SSL_CAINFO', [input.bundleFile]],
  ];
  const line = ([name, parts]: [string, Array<string | typeof KEY_REF>]) => {
    const value = quoteFor(shell, parts);
    switch (shell) {
      case 'sh':
        return `export ${name}=${value}`;
      case 'fish':
        return `set -gx ${name} ${value}`;
      case 'powershell':
        return `$env:${name} = ${value}`;
      case 'dotenv':
        return `${name}=${value}`;
    }
  };
  return `${vars.map(line).join('\n')}\n`;
}

export function registerProxyCommands(
  program: Command,
  helpers: Pick<SessionCommandHelpers, 'perform'>,
  io: { env: NodeJS.ProcessEnv; stderr: { write(text: string): unknown } },
): void {
  const { perform } = helpers;
  program
    .command('ca')
    .description("the forward proxy's certificate authority")
    .command('export')
    .description('print the CA certificate (PEM) for clients to trust; the key never leaves the vault')
    .action(async (_opts, command: Command) => {
      await perform(
        command,
        (c) => c.call('caExport', {}),
        (r) => r.certificate,
      );
    });

  program
    .command('ssh')
    .description("the SSH front-end's host key")
    .command('host-key')
    .description("print the SSH front-end's public host key (for known_hosts) and its fingerprint")
    .option('--rotate', 'replace it first (audited; a running SSH listener serves it after a restart)')
    .action(async (opts: { rotate?: boolean }, command: Command) => {
      await perform(
        command,
        (c) => c.call(opts.rotate === true ? 'sshHostKeyRotate' : 'sshHostKey', {}),
        (r) => `${r.public}\n${r.fingerprint}\n`,
      );
    });

  program
    .command('env <agent>')
    .description(
      "print the environment block (proxy variables, CA paths) for an agent's process; writes the CA files into the home",
    )
    .option(
      '--proxy <addr>',
      `forward proxy address (default: listen.proxy in the config, else ${DEFAULT_PROXY})`,
    )
    .option('--ca-dir <dir>', 'where to write proxy-ca.pem and proxy-ca-bundle.pem (default: the home)')
    .option(
      '--shell <shell>',
      `output syntax: ${ENV_SHELLS.join(' | ')} (dotenv: KEY=VALUE for --env-file)`,
      'sh',
    )
    .action(
      async (agent: string, opts: { proxy?: string; caDir?: string; shell: string }, command: Command) => {
        if (!(ENV_SHELLS as readonly string[]).includes(opts.shell)) {
          throw new CoatcheckError(
            'CC_ERR_INVALID_ARGUMENT',
            `--shell must be one of ${ENV_SHELLS.join(', ')}`,
            {
              details: { field: '--shell' },
            },
          );
        }
        const globals = command.optsWithGlobals() as { dir?: string };
        await perform(
          command,
          (c) => c.call('agentEnv', { name: agent }),
          (r) => {
            const dir = opts.caDir ?? resolveHome(globals.dir, io.env).dir;
            const caFile = `${dir.replace(/\/$/, '')}/proxy-ca.pem`;
            const bundleFile = `${dir.replace(/\/$/, '')}/proxy-ca-bundle.pem`;
            const proxy = opts.proxy ?? r.proxy ?? DEFAULT_PROXY;
            if (!/^[A-Za-z0-9.:[\]-]{1,300}$/.test(proxy)) {
              throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', '--proxy must be HOST:PORT', {
                details: { field: '--proxy' },
              });
            }
            writeFileDurably(caFile, r.certificate, 0o644);
            writeFileDurably(bundleFile, `${r.certificate}${rootCertificates.join('\n')}\n`, 0o644);
            const agentKey = io.env.COATCHECK_AGENT_KEY?.trim() || null;
            if (agentKey === null)
              io.stderr.write(
                `note: the agent key is left as ${AGENT_KEY_REFERENCE}; set it in the environment that reads this block\n`,
              );
            const noProxy = (r.gateway ?? []).filter((a) => a !== proxy);
            return proxyEnvLines(
              { agent: r.agent, proxy, agentKey, caFile, bundleFile, noProxy },
              opts.shell as EnvShell,
            );
          },
        );
      },
    );
}

import { createServer, type Server } from 'node:net';
import type { Logger } from 'pino';
import ssh2 from 'ssh2';
import { createPreviewScrubber } from '../../approvals/preview.js';
import { CoatcheckError } from '../../core/errors.js';
import type { FrontendDeps } from '../../gateway/deps.js';
import { chainInspectors, createDetectorInspector } from '../../gateway/detector-inspector.js';
import { type Frontend, GatewayDriver, type Mount } from '../../gateway/driver.js';
import {
  createIndexedInspector,
  currentKnownSecrets,
  sharedKnownSecretIndex,
} from '../../gateway/known-secret-index.js';
import type { Decide, ExchangePipeline } from '../../gateway/pipeline.js';
import type { Recorder } from '../../gateway/session.js';
import type { SessionRecordings } from '../../recording/recordings.js';
import { openSshHostKey } from '../../vault/ssh-host-key.js';
import { type SshAdapterOptions, SshConnection } from './adapter.js';
import { createSshDecide } from './policy.js';
import { tuneSshSocket } from './socket.js';

export interface SshOptions extends SshAdapterOptions {
  readonly maxConnections: number;
}

export const DEFAULT_SSH_OPTIONS: SshOptions = {
  maxConnections: 1000,
  loginTimeoutMs: 30_000,
  upstreamTimeoutMs: 10_000,
  maxLoginAttempts: 3,
  recordOutputBytes: 4096,
  flushIdleMs: 25,
  maxChannels: 32,
};

export interface SshFrontend {
  readonly host: string;
  readonly port: number;
  /** The gateway's host key: `ssh-ed25519 AAAA…` and its `SHA256:` fingerprint (for known_hosts). */
  readonly hostKey: { readonly public: string; readonly fingerprint: string };
  readonly pipeline: ExchangePipeline;
  readonly recorder: Recorder;
  /** Live client connections. */
  readonly live: ReadonlySet<SshConnection>;
  close(drainMs?: number): Promise<void>;
}

export interface SshFrontendOverrides {
  readonly decide?: Decide;
  readonly options?: Partial<SshOptions>;
  /** Full session recordings (ADR 0018) for the driver this starts; `serve` passes its own. */
  readonly recordings?: SessionRecordings;
}

/** The SSH front-end on a driver of its own (tests, embedding). */
export async function startSshFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  log: Logger,
  overrides: SshFrontendOverrides = {},
): Promise<SshFrontend> {
  const driver = new GatewayDriver({
    registry: deps.metrics,
    log,
    store: deps.store,
    clock: deps.clock,
    ...(overrides.recordings === undefined ? {} : { recordings: overrides.recordings }),
  });
  return driver.start(sshFrontend(deps, listen, overrides));
}

/**
 * The SSH front-end as the driver runs it (docs/frontends/ssh.md): ssh2's server protocol
 * on sockets the driver's listener accepts; the adapter (adapter.ts) logs in, opens the
 * upstream and decides every channel.
 */
export function sshFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  overrides: SshFrontendOverrides = {},
): Frontend<SshFrontend> {
  return { name: 'ssh', start: (mount) => mountSsh(mount, deps, listen, overrides) };
}

async function mountSsh(
  mount: Mount,
  deps: FrontendDeps,
  listen: { host: string; port: number },
  overrides: SshFrontendOverrides,
): Promise<SshFrontend> {
  const options: SshOptions = { ...DEFAULT_SSH_OPTIONS, ...overrides.options };
  const hostKey = await openSshHostKey(deps.store, deps.keys.masters);
  const pipeline = mount.pipeline('ssh', {
    vault: deps.vault,
    agents: deps.identity,
    connections: deps.connections,
    audit: deps.audit,
    store: deps.store,
    clock: deps.clock,
    // Known secrets and detector findings in stdout/stderr become tickets, as on the other paths.
    inspector: chainInspectors(
      // The shared index (ADR 0021): a secret added or erased is applied alone, never a rebuild of the whole set.
      createIndexedInspector(sharedKnownSecretIndex(deps.vault, deps.store)),
      createDetectorInspector(),
    ),
    decide: overrides.decide ?? createSshDecide(deps.gate),
  });
  const clean = createPreviewScrubber(deps.vault, () =>
    currentKnownSecrets(sharedKnownSecretIndex(deps.vault, deps.store)),
  );
  const live = new Set<SshConnection>();
  const ssh = new ssh2.Server({
    hostKeys: [hostKey.private],
    ident: 'coatcheck',
    // No banner or greeting carries anything about the upstream.
  });
  hostKey.private.fill(0);
  ssh.on('error', () => undefined);
  ssh.on('connection', (client, info) => {
    const connection = new SshConnection(
      {
        pipeline,
        dial: deps.upstream,
        store: deps.store,
        audit: deps.audit,
        clock: deps.clock,
        log: mount.log,
        clean,
        policyConfigured: () =>
          overrides.decide !== undefined ||
          deps.gate.policy.engine.source !== 'builtin' ||
          deps.gate.policy.path !== null,
        fail: (error) => mount.fail(error),
      },
      options,
      client,
      `${info.ip}:${info.port}`,
    );
    live.add(connection);
    void mount.serve(
      () => client.end(),
      async () => {
        try {
          await connection.run();
        } finally {
          live.delete(connection);
        }
      },
    );
  });
  const server: Server = createServer((socket) => {
    tuneSshSocket(socket);
    ssh.injectSocket(socket);
  });
  mount.onDeadline(() => {
    for (const connection of live) connection.session.terminate('CC_ERR_GATEWAY_STOPPING');
  });
  const address = await mount.listen(server, listen, {
    maxConnections: options.maxConnections,
    tooMany: () =>
      new CoatcheckError('CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS', 'coatcheck: too many connections'),
    refuse: (socket) => socket.destroy(),
    listenError: (error) =>
      new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        `--listen-ssh: cannot listen on ${listen.host}:${listen.port}`,
        {
          cause: error,
          details: { field: '--listen-ssh' },
        },
      ),
  });
  return {
    host: listen.host,
    port: address.port,
    hostKey: { public: hostKey.public, fingerprint: hostKey.fingerprint },
    pipeline,
    recorder: mount.recorder,
    live,
    close: (drainMs = 0) => mount.stop(drainMs),
  };
}

import type { Connections, ConnectionView } from '../../connections/connections.js';
import type { Store } from '../../store/types.js';
import { type Destination, matchesTarget, parseDestination } from '../../vault/destinations.js';
import type { Vault } from '../../vault/vault.js';

export interface HostBinding {
  /** A live secret's host pattern or an http connection's URL covers this host and port: intercept. */
  readonly bound: boolean;
  /** The http connection whose URL is on this host and port (its injected headers apply), if any. */
  readonly connection: ConnectionView | null;
}

export interface HostBindings {
  /** `scheme`: `https` for CONNECT tunnels (intercepted as TLS), `http` for plain absolute-form requests. */
  resolve(host: string, port: number, scheme?: 'http' | 'https'): Promise<HostBinding>;
  close(): void;
}

function urlAuthority(url: string): { scheme: string; host: string; port: number } | null {
  try {
    const parsed = new URL(url);
    const port = parsed.port !== '' ? Number(parsed.port) : parsed.protocol === 'https:' ? 443 : 80;
    return {
      scheme: parsed.protocol.replace(/:$/, ''),
      host: parsed.hostname.replace(/^\[|\]$/g, '').toLowerCase(),
      port,
    };
  } catch {
    return null;
  }
}

/**
 * Which hosts the forward proxy intercepts: those a live secret may be released to
 * (`secret add NAME --allow api.example.com`, `*.example.com`) and those an http
 * connection points at. Read from the vault and connections, cached briefly and dropped
 * on any store change (a new secret or connection is seen at once on this replica,
 * within `ttlMs` on others).
 */
export function createHostBindings(
  vault: Pick<Vault, 'listSecrets'>,
  connections: Pick<Connections, 'list'>,
  store: Pick<Store, 'subscribe'>,
  options: { ttlMs?: number } = {},
): HostBindings {
  const ttlMs = options.ttlMs ?? 1000;
  interface Snapshot {
    readonly at: number;
    readonly hosts: Destination[];
    readonly conns: ConnectionView[];
  }
  let cached: Snapshot | null = null;
  let loading: Promise<Snapshot> | null = null;
  const unsubscribe = store.subscribe(() => {
    cached = null;
  });
  const load = async (): Promise<Snapshot> => {
    const [secrets, conns] = await Promise.all([vault.listSecrets(), connections.list()]);
    const hosts: Destination[] = [];
    for (const secret of secrets) {
      for (const allow of secret.allow) {
        const dest = parseDestination(allow);
        if (dest.kind === 'host') hosts.push(dest);
      }
    }
    return { at: Date.now(), hosts, conns: conns.filter((c) => c.type === 'http') };
  };
  return {
    async resolve(host, port, scheme = 'https') {
      let snapshot = cached;
      if (snapshot === null || Date.now() - snapshot.at > ttlMs) {
        loading ??= load().finally(() => {
          loading = null;
        });
        snapshot = await loading;
        cached = snapshot;
      }
      // Scheme, host and port: an https connection or secret does not make its host's plain-http side (or other ports) forwardable.
      const target = { scheme, host, port };
      const connection =
        snapshot.conns.find((c) => {
          const authority = urlAuthority(c.url);
          return (
            authority !== null &&
            authority.scheme === scheme &&
            authority.host === host.toLowerCase() &&
            authority.port === port
          );
        }) ?? null;
      const bound = connection !== null || snapshot.hosts.some((dest) => matchesTarget(dest, target));
      return { bound, connection };
    },
    close: unsubscribe,
  };
}

import type { Connections, ConnectionView } from '../../connections/connections.js';
import type { Store, StoreChange } from '../../store/types.js';
import { type Destination, parseDestination } from '../../vault/destinations.js';
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

const authorityKey = (scheme: string, host: string, port: number) => `${scheme}://${host}:${port}`;

/** Index keys of one host destination: `=` exact host, `*` a wildcard's parent domain. */
function destinationKey(dest: Extract<Destination, { kind: 'host' }>): string {
  return `${dest.wildcard ? '*' : '='}${authorityKey(dest.scheme, dest.host, dest.port)}`;
}

/** The host destinations of a secret's allow list, as index keys. */
function keysOf(allow: readonly string[]): string[] {
  const keys: string[] = [];
  for (const text of allow) {
    const dest = parseDestination(text);
    if (dest.kind === 'host') keys.push(destinationKey(dest));
  }
  return keys;
}

/**
 * Which hosts the forward proxy intercepts: those a live secret may be released to
 * (`secret add NAME --allow api.example.com`, `*.example.com`) and those an http
 * connection points at.
 *
 * Kept as an index updated from the store's change feed: an added, changed or erased
 * secret is read alone (by id), so a change costs the same with 100k secrets as with one,
 * and a ticket revocation or approval costs nothing; a lookup costs one map probe per
 * label of the host. The whole list is read at start and after a `resync` (or, while
 * the feed is not current, at most once per `ttlMs`: changes from other replicas may
 * have been missed). A change on this replica is seen by the next lookup.
 */
export function createHostBindings(
  vault: Pick<Vault, 'listSecrets'>,
  connections: Pick<Connections, 'list'>,
  store: Pick<Store, 'subscribe' | 'getSecretById' | 'feedCurrent'>,
  options: { ttlMs?: number } = {},
): HostBindings {
  const ttlMs = options.ttlMs ?? 1000;
  // Index key -> how many secrets name it; secret id -> its keys (to take them out again).
  let hosts: Map<string, number> | null = null;
  let keysBySecret = new Map<string, string[]>();
  let hostsLoadedAt = 0;
  // http connections by authority (the first by name, as the list is sorted).
  let conns: Map<string, ConnectionView> | null = null;
  // Loads and per-secret updates run one after another, in the order the changes came.
  let work: Promise<void> = Promise.resolve();
  let closed = false;

  const count = (key: string, by: number) => {
    const next = (hosts!.get(key) ?? 0) + by;
    if (next <= 0) hosts!.delete(key);
    else hosts!.set(key, next);
  };
  const forget = (id: string) => {
    for (const key of keysBySecret.get(id) ?? []) count(key, -1);
    keysBySecret.delete(id);
  };
  const remember = (id: string, allow: readonly string[]) => {
    const keys = keysOf(allow);
    keysBySecret.set(id, keys);
    for (const key of keys) count(key, 1);
  };

  const loadHosts = async () => {
    const secrets = await vault.listSecrets();
    hosts = new Map();
    keysBySecret = new Map();
    for (const secret of secrets) remember(secret.id, secret.allow);
    hostsLoadedAt = Date.now();
  };
  const loadConns = async () => {
    const next = new Map<string, ConnectionView>();
    for (const c of await connections.list()) {
      if (c.type !== 'http') continue;
      const authority = urlAuthority(c.url);
      if (authority === null) continue;
      const key = authorityKey(authority.scheme, authority.host, authority.port);
      if (!next.has(key)) next.set(key, c);
    }
    conns = next;
  };
  const refreshSecret = async (id: string) => {
    if (hosts === null) return; // the next full load reads it
    const record = await store.getSecretById(id);
    forget(id);
    if (record !== null && record.erasedAt === null) remember(id, record.allow);
  };
  const enqueue = (step: () => Promise<void>) => {
    // A failed step leaves the index unknown: the next lookup reads everything again.
    work = work.then(step).catch(() => {
      hosts = null;
      conns = null;
    });
  };

  const unsubscribe = store.subscribe((change: StoreChange) => {
    switch (change.type) {
      case 'secret.added':
      case 'secret.updated': {
        const { id } = change;
        enqueue(() => refreshSecret(id));
        return;
      }
      case 'secret.erased': {
        const { id } = change;
        enqueue(async () => {
          if (hosts !== null) forget(id);
        });
        return;
      }
      case 'connection.changed':
        conns = null;
        return;
      case 'resync':
        hosts = null;
        conns = null;
        return;
      default:
        // Revocations, approvals, workflows, relays, keys: no destination changes.
        return;
    }
  });

  return {
    async resolve(host, port, scheme = 'https') {
      if (closed) return { bound: false, connection: null };
      // Without a current feed, changes made elsewhere may be unheard: read again, as before the index.
      if (hosts !== null && !store.feedCurrent() && Date.now() - hostsLoadedAt > ttlMs) hosts = null;
      const loadMissing = async () => {
        if (hosts === null) await loadHosts();
        if (conns === null) await loadConns();
      };
      if (hosts === null || conns === null) enqueue(loadMissing);
      await work;
      // The queued load failed (the queue swallows errors to keep going) or a resync came in
      // meanwhile: read now, so that a store error reaches the caller, which refuses.
      // (Another resync may land during that read: read until both are there.)
      while (hosts === null || conns === null) await loadMissing();
      const index = hosts;
      const name = host.toLowerCase().replace(/\.$/, '');
      // Scheme, host and port: an https connection or secret does not make its host's plain-http side (or other ports) forwardable.
      const connection = conns.get(authorityKey(scheme, name, port)) ?? null;
      let bound = connection !== null || index.has(`=${authorityKey(scheme, name, port)}`);
      // `*.example.com` covers every name below example.com (any depth), not example.com itself.
      for (let dot = name.indexOf('.'); !bound && dot !== -1; dot = name.indexOf('.', dot + 1)) {
        bound = index.has(`*${authorityKey(scheme, name.slice(dot + 1), port)}`);
      }
      return { bound, connection };
    },
    close() {
      closed = true;
      unsubscribe();
    },
  };
}

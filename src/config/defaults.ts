// Config facts that need no validator: commands that only read a checked config (see
// load-config.ts) start without loading zod or the YAML parser.

export const LISTEN_ADDRESS_RE = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/;

/** HOST:PORT with a port of at most 65535 (the same rule as the config schema's `listen.*`). */
export function isListenAddress(text: string): boolean {
  return LISTEN_ADDRESS_RE.test(text) && Number(text.slice(text.lastIndexOf(':') + 1)) <= 65535;
}

export const CONNECTION_TYPES = ['http', 'postgres', 'mysql', 'ssh', 'mcp', 'llm', 'kubernetes'] as const;

export const DEFAULT_CONFIG_YAML = `# coatcheck configuration. Every field is optional; these are the defaults.
# Docs: docs/configuration.md

store:
  driver: sqlite          # sqlite (embedded) or postgres (COATCHECK_DATABASE_URL)
  path: coatcheck.db      # relative to this directory

keys:
  dir: keys               # master key files (<kid>.key); see docs/operations.md, key rotation

listen:
  admin: 127.0.0.1:7070   # admin API (CLI and console)
  # http: 127.0.0.1:7080  # HTTP front-end
  # postgres: 127.0.0.1:7432
  # proxy: 127.0.0.1:7090  # forward proxy (HTTPS_PROXY); see docs/frontends/forward-proxy.md
  # kubernetes: 127.0.0.1:7443  # Kubernetes API front-end; see docs/frontends/kubernetes.md
  acceptors: 4            # descriptors per listener: new connections a busy turn accepts

tickets:
  defaultTtl: 1h
  maxTtl: 30d
  cacheMs: 5000
  foundTtl: 15m           # tickets for secrets found in responses that no request ticket explains

agents:
  maxTtl: 90d

audit:
  groupCommitMs: 0        # 0: the next turn of the event loop (2 ms while it is saturated); N: wait N ms
  maxBatch: 512

http:
  bodyLimit: 8388608      # bytes; larger request bodies get 413 CC_ERR_BODY_TOO_LARGE
  upstreamTimeoutMs: 30000
  # upstreamCaFile: /path/to/extra-ca.pem
  maxTicketsPerRequest: 64
  detectSecrets: true     # unknown secrets in responses become tickets too
  maxInFlightBodyBytes: 67108864          # all request bodies buffered at once; beyond: 503
  maxInFlightBodyBytesPerAgent: 16777216  # one agent's bodies buffered at once; beyond: 429

foundSecrets:
  maxPerPrincipal: 100    # new secrets registered from responses per principal and window
  window: 1h

admin:
  allowedHosts: []        # Host names the admin listener answers to; empty: listen address, localhost, 127.0.0.1, [::1]

proxy:
  unboundHosts: refuse    # hosts no secret or connection is bound to: refuse or tunnel
  # upstreamCaFile: /path/to/extra-ca.pem

log:
  level: info

# connections:
#   - name: github
#     type: http
#     url: https://api.github.com
#     injectHeaders:
#       Authorization: "Bearer {{secret:github-token}}"
connections: []
`;

/**
 * Every error coatcheck shows a user carries a stable `code` (CC_ERR_<AREA>_<CONDITION>).
 * Codes are never renamed once published; docs/errors.md lists each one (a test keeps the
 * two in step). Messages name ids, fields and fingerprints — never secret values.
 */

export interface ErrorCodeInfo {
  /** HTTP status the admin API and HTTP front-end answer with. */
  readonly status: number;
  readonly description: string;
  readonly solution: string;
}

export const ERROR_CODES = {
  CC_ERR_SERVER_RUNNING: {
    status: 409,
    description:
      'Another `coatcheck serve` is already running on this home (its pid is alive); two servers on one home would fight over the store and server.json.',
    solution: 'Stop the running server first, or use another --dir.',
  },
  CC_ERR_LISTEN_ADDRESS_IN_USE: {
    status: 500,
    description: 'A listen address given to `serve` is already in use by another process.',
    solution:
      'Choose another port (--listen-http, --listen-admin, --listen-postgres, --listen-proxy) or stop the other process.',
  },
  CC_ERR_BACKUP_UNSUPPORTED: {
    status: 400,
    description: '`coatcheck backup` copies SQLite stores only.',
    solution:
      'Back up a PostgreSQL store with pg_dump and keep the output of `coatcheck audit anchor` beside it.',
  },
  CC_ERR_BACKUP_INVALID: {
    status: 400,
    description:
      'A backup or restore could not proceed: the target exists, the backup is not a coatcheck store, or it does not match its anchor.',
    solution:
      'Read the message: choose a new path, move the old store away deliberately, or use the backup that matches the anchor.',
  },
  CC_ERR_CREDENTIAL_DESTINATION: {
    status: 403,
    description:
      "A connection's credential or injected-header secret does not allow that connection among its destinations; the secret's allow list binds every release path.",
    solution:
      'Add the connection (conn:NAME) or its host to the secret with `coatcheck secret update NAME --allow …`.',
  },
  CC_ERR_INTERNAL: {
    status: 500,
    description: 'An unexpected fault. The message carries an incident id that also appears in the log.',
    solution: 'Look up the incident id in the gateway log and report it.',
  },
  CC_ERR_INVALID_ARGUMENT: {
    status: 400,
    description: 'A command or API argument is missing or malformed; the message names the field.',
    solution: 'Fix the named argument.',
  },
  CC_ERR_NOT_FOUND: {
    status: 404,
    description: 'The named secret, connection, agent, ticket or route does not exist.',
    solution: 'Check the name or id (list commands show what exists).',
  },
  CC_ERR_ALREADY_EXISTS: {
    status: 409,
    description: 'A secret, connection or agent with that name already exists.',
    solution: 'Pick another name, or remove the existing one first.',
  },
  CC_ERR_CONFIG_INVALID: {
    status: 500,
    description: 'The config file does not validate; the message names the file, line and field.',
    solution: 'Fix the named field in the config file.',
  },
  CC_ERR_HOME_MISSING: {
    status: 500,
    description: 'The coatcheck home directory (or its config file) does not exist.',
    solution: 'Run `coatcheck init` (or pass --dir / set COATCHECK_HOME).',
  },
  CC_ERR_HOME_EXISTS: {
    status: 409,
    description: '`coatcheck init` found an existing home and refuses to overwrite it.',
    solution: 'Use another --dir, or remove the old home deliberately.',
  },
  CC_ERR_KEYS_ROTATION_PENDING: {
    status: 409,
    description:
      'Another rotation changed the keyring while this one ran (two `keys rotate` at once), so this one stopped before its next phase.',
    solution: 'Run `coatcheck keys rotate` again: it resumes the rotation in progress from its last phase.',
  },
  CC_ERR_MASTER_KEY_MISSING: {
    status: 500,
    description: 'No master key: COATCHECK_MASTER_KEY is unset and the key file is absent.',
    solution: 'Set COATCHECK_MASTER_KEY or restore the master.key file.',
  },
  CC_ERR_MASTER_KEY_INVALID: {
    status: 500,
    description: 'The master key is not 32 bytes of base64, or its file is readable by others.',
    solution: 'Provide the key exactly as `coatcheck init` or `keys rotate` wrote it; chmod 600 the file.',
  },
  CC_ERR_MASTER_KEY_UNAVAILABLE: {
    status: 503,
    description:
      "Data is sealed (or must now be sealed) under a master key whose id is not in this replica's keyring, even after reloading the key files once. Nothing is released or written.",
    solution:
      'Copy the key file with that id (`<kid>.key`) into the keys directory (keys.dir) of this replica, or into the home a backup is restored to; the replica picks it up without restart.',
  },
  CC_ERR_MASTER_KEY_WRONG: {
    status: 500,
    description:
      "None of the master keys given holds the key id the store's index key is sealed under (they belong to another store).",
    solution:
      'Provide the key the message names: COATCHECK_MASTER_KEY, master.key, or its `<kid>.key` file in the keys directory.',
  },
  CC_ERR_STORE_CORRUPT: {
    status: 500,
    description: 'A stored record failed its integrity check (authenticated encryption or structure).',
    solution: 'Restore the store from a backup; run `coatcheck audit verify` to see what changed.',
  },
  CC_ERR_STORE_MISSING: {
    status: 500,
    description:
      'The configured SQLite store file does not exist. A server never creates an empty store in place of a missing one (that would hide lost data).',
    solution:
      'Restore the store file (or fix store.path in coatcheck.yaml); `coatcheck init` creates a new home.',
  },
  CC_ERR_STORE_UNAVAILABLE: {
    status: 503,
    description: 'The data store cannot be reached or written.',
    solution: 'Check the database (COATCHECK_DATABASE_URL) or the data directory and its disk.',
  },
  CC_ERR_STORE_SCHEMA_NEWER: {
    status: 500,
    description: 'The store was migrated by a newer coatcheck than this one.',
    solution: 'Upgrade coatcheck.',
  },
  CC_ERR_SECRET_EMPTY: {
    status: 400,
    description: 'A secret value read from stdin or a file was empty.',
    solution: 'Pipe the value in: `printf %s "$VALUE" | coatcheck secret add NAME`.',
  },
  CC_ERR_SECRET_TOO_LARGE: {
    status: 413,
    description: 'A secret value exceeds the 64 KiB limit.',
    solution: 'Store a smaller value (a key, not a document).',
  },
  CC_ERR_SECRET_IN_USE: {
    status: 409,
    description: 'The secret is the credential of a connection and cannot be removed.',
    solution: 'Remove or change the connection first, or pass --force.',
  },
  CC_ERR_DEST_PLAINTEXT: {
    status: 400,
    description:
      'A destination names `http://` to a host that is not loopback: the secret would cross the network in clear.',
    solution:
      'Use `https://` (the default), or add the secret with `--allow-plaintext` if plaintext to that host is truly intended.',
  },
  CC_ERR_PLACEMENT_INVALID: {
    status: 400,
    description:
      'A placement is not one of credential, header, query, body, path, or sql bound to a connection.',
    solution: 'Use `--allow-placement header,query,body,path` and `--allow-sql CONNECTION`.',
  },
  CC_ERR_DEST_INVALID: {
    status: 400,
    description: 'A destination is neither a connection name nor a host pattern.',
    solution: 'Use a connection name (`github`), a host (`api.example.com`), or a pattern (`*.example.com`).',
  },
  CC_ERR_TICKET_MALFORMED: {
    status: 400,
    description: 'The text is not shaped like a ticket (`cct_` + 28 base62 characters).',
    solution: 'Pass the ticket exactly as `token issue` printed it.',
  },
  CC_ERR_TICKET_CHECKSUM: {
    status: 400,
    description: 'The ticket is shaped right but its checksum does not match: it was mistyped or altered.',
    solution: 'Copy the ticket again from where it was issued.',
  },
  CC_ERR_TICKET_UNKNOWN: {
    status: 403,
    description: 'No such ticket exists in this store.',
    solution: 'Issue a ticket with `coatcheck token issue`.',
  },
  CC_ERR_TICKET_REVOKED: {
    status: 403,
    description: 'The ticket, or one of its ancestors, was revoked.',
    solution: 'Ask for a new ticket.',
  },
  CC_ERR_TICKET_EXPIRED: {
    status: 403,
    description: 'The ticket is past its expiry.',
    solution: 'Ask for a new ticket.',
  },
  CC_ERR_TICKET_EXHAUSTED: {
    status: 403,
    description: 'The ticket (or an ancestor it was narrowed from) has no uses left.',
    solution: 'Ask for a new ticket.',
  },
  CC_ERR_TICKET_WRONG_PRINCIPAL: {
    status: 403,
    description: 'The ticket is bound to another principal than the one presenting it.',
    solution: 'Each agent must use tickets issued to it.',
  },
  CC_ERR_TICKET_PLACEMENT: {
    status: 403,
    description:
      'The ticket stands where its secret may not be released (a body, query, other header, URL path or SQL text): the target could reflect the secret back.',
    solution:
      'Put the ticket in a credential position (Authorization, the URL user info, a login password), or add the secret with `--allow-placement` / `--allow-sql` if that placement is intended.',
  },
  CC_ERR_TICKET_WRONG_DESTINATION: {
    status: 403,
    description: 'The ticket may not be released towards this destination.',
    solution: "Issue a ticket whose --dest covers the destination (within the secret's --allow).",
  },
  CC_ERR_TICKET_SECRET_ERASED: {
    status: 403,
    description: 'The secret the ticket stood for was deleted and its data key destroyed.',
    solution: 'The ticket can never work again; register a new secret.',
  },
  CC_ERR_TICKET_WIDENING: {
    status: 400,
    description:
      'A narrowed ticket would be wider than its parent (later expiry, more uses, other destination) or a ticket wider than its secret.',
    solution: 'Ask only for a subset of what the parent ticket (or the secret) allows.',
  },
  CC_ERR_AGENT_UNKNOWN: {
    status: 401,
    description: 'The agent key is not known (or the agent name does not exist).',
    solution: 'Create the agent with `coatcheck agent create` and use the key it printed.',
  },
  CC_ERR_AGENT_KEY_MALFORMED: {
    status: 401,
    description:
      'The agent key is not shaped like one (`cca_` + 43 base62 characters) or its checksum fails.',
    solution: 'Pass the key exactly as `agent create` printed it.',
  },
  CC_ERR_AGENT_EXPIRED: {
    status: 401,
    description: 'The agent key is past its expiry.',
    solution: 'Create a new agent key.',
  },
  CC_ERR_AGENT_REVOKED: {
    status: 401,
    description: 'The agent was revoked.',
    solution: 'Create a new agent.',
  },
  CC_ERR_RELAY_UNKNOWN: {
    status: 401,
    description: 'The relay key is not known, or no relay has that name.',
    solution: 'Create the relay with `coatcheck relay create NAME` and give `relay run` the key it printed.',
  },
  CC_ERR_RELAY_KEY_MALFORMED: {
    status: 401,
    description:
      'The relay key is not shaped like one (`ccr_` + 43 base62 characters) or its checksum fails.',
    solution: 'Pass the key file exactly as `relay create` printed it.',
  },
  CC_ERR_RELAY_REVOKED: {
    status: 401,
    description: 'The relay was revoked: its sessions were dropped and it may not connect again.',
    solution: 'Create a new relay (`relay create`) and point the connections at it with --via.',
  },
  CC_ERR_RELAY_UNAVAILABLE: {
    status: 502,
    description:
      'The connection goes through a relay (`--via`) and no session of that relay is connected to this gateway, or every session failed to open the stream.',
    solution:
      'Start `coatcheck relay run` in the network of the target, and check its log and `coatcheck relay list`.',
  },
  CC_ERR_RELAY_TARGET_REFUSED: {
    status: 502,
    description:
      "The relay could not open the upstream: the target refused or did not answer, or it is outside the relay's --allow list.",
    solution: "Check the connection's URL from inside the relay's network, and the relay's --allow flags.",
  },
  CC_ERR_RELAY_STREAM_LOST: {
    status: 502,
    description:
      "The relay's session ended while an upstream connection was open through it (the relay stopped, lost its network, or was revoked).",
    solution:
      'Retry: new connections go through another session of the relay, or the same relay once it has reconnected.',
  },
  CC_ERR_RELAY_HANDSHAKE: {
    status: 400,
    description: 'A relay session did not start as the relay protocol requires (ADR 0025).',
    solution:
      'Run `coatcheck relay run` of the same version as the gateway against the --listen-relay address.',
  },
  CC_ERR_ADMIN_UNAUTHORIZED: {
    status: 401,
    description: 'The admin API request lacks a valid admin key.',
    solution: 'Send `Authorization: Bearer <admin key>` (the key file is in the coatcheck home).',
  },
  CC_ERR_METRICS_UNAVAILABLE: {
    status: 503,
    description:
      "`serve --workers`: the workers' metrics could not be gathered (a worker did not answer the primary within 5 s: restarting, stuck or gone), so /metrics has no sum to give.",
    solution:
      'Scrape again; if it keeps failing, look in the log for a worker that exits or restarts (a crash loop stops the server after five exits in 60 s).',
  },
  CC_ERR_AUDIT_UNAVAILABLE: {
    status: 503,
    description: 'The audit log could not be written, so the operation was refused (fail closed).',
    solution: 'Restore the store; nothing was released while the audit log was down.',
  },
  CC_ERR_AUDIT_TAMPERED: {
    status: 500,
    description: '`audit verify` found an edited, removed, inserted or reordered record.',
    solution: 'Investigate the named record; restore the audit log from a trusted copy.',
  },
  CC_ERR_SERVER_UNREACHABLE: {
    status: 503,
    description: 'The CLI was told to use a running server that does not answer.',
    solution: 'Start `coatcheck serve`, or unset COATCHECK_ADMIN_URL to use the store directly.',
  },
  CC_ERR_BODY_TOO_LARGE: {
    status: 413,
    description: 'A request body exceeds the configured limit.',
    solution: 'Send a smaller body or raise the limit in the config.',
  },
  CC_ERR_HTTP_PROXY_AUTH_REQUIRED: {
    status: 407,
    description: 'A request to the HTTP front-end carried no agent key.',
    solution: 'Send `Proxy-Authorization: Bearer <agent key>` with every request.',
  },
  CC_ERR_HTTP_BAD_REQUEST: {
    status: 400,
    description:
      'The HTTP front-end could not route or parse the request (path outside /c/<connection>/, dot segments, malformed body framing).',
    solution: 'Send requests to /c/<connection>/<path> with a well-formed path.',
  },
  CC_ERR_HTTP_UNSUPPORTED: {
    status: 501,
    description:
      'The request uses an HTTP feature the front-end does not carry (CONNECT, protocol upgrades).',
    solution: 'Use plain HTTP requests through /c/<connection>/.',
  },
  CC_ERR_HTTP_AGENT_KEY_FORWARDED: {
    status: 400,
    description:
      'The request carries the agent key somewhere other than Proxy-Authorization (a header, the query or the body); it would have reached the upstream, so the request was refused.',
    solution: 'Send the agent key only in Proxy-Authorization; use tickets for upstream credentials.',
  },
  CC_ERR_HTTP_TOO_MANY_TICKETS: {
    status: 400,
    description: 'A request carried more distinct tickets than http.maxTicketsPerRequest allows.',
    solution: 'Send fewer tickets per request, or raise the limit in the config.',
  },
  CC_ERR_HTTP_BODY_BUDGET: {
    status: 503,
    description:
      'The gateway already holds `http.maxInFlightBodyBytes` of request bodies in memory; this request was refused before its body was buffered.',
    solution: 'Retry later, send smaller bodies, or raise `http.maxInFlightBodyBytes`.',
  },
  CC_ERR_HTTP_AGENT_BODY_BUDGET: {
    status: 429,
    description:
      "The agent's requests in flight already hold `http.maxInFlightBodyBytesPerAgent` of request bodies; this one was refused before its body was buffered.",
    solution: 'Send fewer large requests at once, or raise `http.maxInFlightBodyBytesPerAgent`.',
  },
  CC_ERR_FOUND_SECRETS_LIMIT: {
    status: 429,
    description:
      'Responses to this principal contained more new secrets than `foundSecrets.maxPerPrincipal` allows per `foundSecrets.window`; the response was refused rather than passed on with the secret in it.',
    solution: 'Find out why the upstream returns so many secrets; raise the limit only if that is expected.',
  },
  CC_ERR_ADMIN_HOST_REFUSED: {
    status: 421,
    description:
      'The admin listener was reached under a Host name not in `admin.allowedHosts` (a DNS rebinding page, or a name the operator did not configure).',
    solution:
      'Use a configured name (by default the listen address, localhost, 127.0.0.1 or [::1]) or add the name to `admin.allowedHosts`.',
  },
  CC_ERR_ADMIN_BAD_PATH: {
    status: 400,
    description:
      'The admin request path is malformed (a bad percent escape, invalid UTF-8, or not an absolute path).',
    solution: 'Percent-encode the path correctly.',
  },
  CC_ERR_HTTP_INJECTION_UNSAFE: {
    status: 502,
    description:
      'A released secret cannot be placed where its ticket stood (a header value would contain a line break or NUL).',
    solution: 'Store a value that is valid in an HTTP header, or send the ticket in the body.',
  },
  CC_ERR_PROXY_HOST_REFUSED: {
    status: 403,
    description:
      'The forward proxy was asked for a host no secret or connection is bound to, and `proxy.unboundHosts` is `refuse` (the default): the gateway does not open channels it cannot see into.',
    solution:
      'Bind a secret (`secret add NAME --allow HOST`) or an http connection to the host, set `proxy.unboundHosts: tunnel`, or keep the host out of the proxy with NO_PROXY.',
  },
  CC_ERR_PROXY_UPSTREAM_CERTIFICATE: {
    status: 502,
    description:
      'An intercepted upstream presented a TLS certificate the gateway cannot verify (unknown issuer, wrong name, expired). Nothing was sent to it.',
    solution:
      'Fix the upstream certificate, or trust its CA with `serve --upstream-ca FILE` (or `proxy.upstreamCaFile`).',
  },
  CC_ERR_GATEWAY_MISCONFIGURED: {
    status: 500,
    description:
      'A front-end was started without a required shared service (a wiring fault, found at start).',
    solution: 'Report it: the composition root must pass every service.',
  },
  CC_ERR_GATEWAY_STOPPING: {
    status: 503,
    description:
      'The gateway is shutting down: it finishes the work in flight and refuses new requests and sessions. SQLSTATE 57P01 on PostgreSQL.',
    solution: 'Retry on another replica or after the restart.',
  },
  CC_ERR_RECORDING_BACKLOG: {
    status: 503,
    description:
      'The connection records sessions in full and the recording queue is full (recording.maxQueued); with recording.whenFull: refuse the session is refused rather than run unrecorded. Counted and audited (recording.degraded). SQLSTATE 53000 on PostgreSQL.',
    solution:
      'Retry shortly; if it persists, check the recordings directory (disk space, permissions) and the store, or raise recording.maxQueued.',
  },
  CC_ERR_RECORDING_STORAGE: {
    status: 503,
    description:
      'The S3-compatible object store that holds recordings (recording.storage) failed or refused a write, read or delete, or its access key is missing or malformed. The message names the S3 error and status, never the key.',
    solution:
      'Check recording.storage (endpoint, bucket, region), the access key (the vault secret or the environment) and that the bucket exists and accepts writes; a failed write is audited as recording.degraded (write-failed).',
  },
  CC_ERR_RECORDING_UNREADABLE: {
    status: 500,
    description:
      'A stored recording does not verify or decrypt: its file was changed, truncated or removed, or its data key was destroyed (erased).',
    solution:
      'Run `coatcheck audit verify`: it names each recording that no longer matches its audit record.',
  },
  CC_ERR_GATEWAY_TOO_MANY_CONNECTIONS: {
    status: 503,
    description:
      'A front-end listener already holds its maximum number of client connections (http.maxConnections on the HTTP listeners, postgres.maxConnections on PostgreSQL, SQLSTATE 53300).',
    solution: 'Close idle connections, or raise the limit.',
  },
  CC_ERR_GATEWAY_CONNECTION_TYPE: {
    status: 400,
    description: 'The named connection exists but is not of a type this front-end serves.',
    solution: 'Use the front-end that matches the connection type (http connections on the HTTP front-end).',
  },
  CC_ERR_GATEWAY_DENIED: {
    status: 403,
    description: 'Policy denied the operation; nothing was released.',
    solution: 'Ask an operator to allow the operation; the audit record names the policy.',
  },
  CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE: {
    status: 502,
    description: 'The upstream could not be reached, refused the connection, failed TLS, or reset it.',
    solution: "Check the connection's URL, the upstream's health and (for https) its certificate.",
  },
  CC_ERR_GATEWAY_UPSTREAM_TIMEOUT: {
    status: 504,
    description: 'The upstream did not answer (or went silent mid-body) within http.upstreamTimeoutMs.',
    solution: 'Check the upstream; raise http.upstreamTimeoutMs for slow endpoints.',
  },
  CC_ERR_GATEWAY_UPSTREAM_ENCODING: {
    status: 502,
    description:
      'The upstream answered with a content encoding the gateway cannot inspect, so the response was withheld (fail closed).',
    solution: 'Have the upstream answer with identity, gzip, deflate or br encoding.',
  },
  CC_ERR_GATEWAY_INSPECTION_FAILED: {
    status: 502,
    description:
      'The response could not be inspected or a secret in it could not be replaced by a ticket; it was withheld (fail closed).',
    solution:
      'Check the gateway log for the incident; the store must be writable to issue replacement tickets.',
  },
  CC_ERR_GATEWAY_SESSION_TERMINATED: {
    status: 403,
    description: 'A live session was ended because a ticket, agent or secret it depends on was revoked.',
    solution: 'Ask for a new ticket.',
  },
  CC_ERR_DETECT_RULE_INVALID: {
    status: 500,
    description:
      'A detection rule is malformed: its id is not kebab-case, its pattern has no capture group or an unbounded quantifier, or a keyword is not lower-case ASCII. The message names the rule id.',
    solution: 'Fix the named rule (see docs/detect.md, "How to add a rule").',
  },
  CC_ERR_DETECT_UNKNOWN_RULE: {
    status: 400,
    description:
      'The detector configuration (enable, disable or allowlist) names a rule id that does not exist.',
    solution: 'Use a rule id from the rule list in docs/detect.md.',
  },
  CC_ERR_DETECT_ALLOWLIST_INVALID: {
    status: 400,
    description:
      'An allowlist entry is malformed: a value hash that is not 64 hex digits, or a pattern that is not a valid regular expression.',
    solution:
      'Give value hashes as full SHA-256 hex digests and patterns as valid JavaScript regular expressions.',
  },
  CC_ERR_DETECT_KNOWN_SECRET_TOO_SHORT: {
    status: 400,
    description:
      'A value registered with the known-secret matcher is shorter than the minimum (8 bytes); it would match ordinary text.',
    solution:
      'Register only real secrets; short values are found by the pattern rules if they have a known shape.',
  },
  CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE: {
    status: 413,
    description: 'A value registered with the known-secret matcher exceeds 64 KiB.',
    solution: 'Register the key itself, not a document that contains it.',
  },
  CC_ERR_DETECT_TOKENIZE_FAILED: {
    status: 500,
    description:
      'The tokenize callback failed for a finding, so the text was not released (fail closed). The message names the rule id and the fingerprint.',
    solution: 'Check the vault the callback writes to; the cause is attached to the error.',
  },
  CC_ERR_DETECT_INPUT_UNREADABLE: {
    status: 400,
    description: '`coatcheck scan` could not read a path it was given; the message names the path.',
    solution: 'Check that the path exists and is readable.',
  },
  CC_ERR_DETECT_STREAM_ENDED: {
    status: 500,
    description: 'A chunk was written to a stream scanner after end() was called.',
    solution: 'Create a new scanner for each stream.',
  },
  CC_ERR_POLICY_INVALID: {
    status: 500,
    description:
      'A policy file does not parse or does not validate against the schema; the message names the file, line and policy.',
    solution: 'Fix the named policy; `coatcheck policy check --policy PATH` validates without serving.',
  },
  CC_ERR_POLICY_DENIED: {
    status: 403,
    description:
      'Policy denied the operation (no permit applied, or a forbid did); the message names the deciding policies.',
    solution: 'Ask an operator to change the policy; `coatcheck policy check` explains a decision.',
  },
  CC_ERR_APPROVAL_REQUIRED: {
    status: 403,
    description:
      'Policy requires a human approval for this exact operation; the request (id in the message) is pending and the hold time ran out.',
    solution: 'Have an approver approve it (`coatcheck approvals approve ID`), then retry.',
  },
  CC_ERR_OIDC_MALFORMED: {
    status: 401,
    description: 'The bearer token is not a well-formed JWT.',
    solution: 'Send the identity token exactly as the issuer gave it.',
  },
  CC_ERR_OIDC_EXPIRED: {
    status: 401,
    description: 'The JWT has expired (or is not yet valid), beyond the allowed clock skew.',
    solution: 'Get a fresh token from the issuer.',
  },
  CC_ERR_OIDC_ISSUER: {
    status: 401,
    description: 'The JWT was issued by an issuer that is not configured.',
    solution: 'Configure the issuer under identity.oidc, or use a token from a configured one.',
  },
  CC_ERR_OIDC_AUDIENCE: {
    status: 401,
    description: 'The JWT is not meant for this gateway (wrong audience).',
    solution: 'Request a token for the configured audience.',
  },
  CC_ERR_OIDC_UNKNOWN_KEY: {
    status: 401,
    description: 'The JWT is signed with a key the issuer does not publish (even after refreshing its JWKS).',
    solution: 'Check that the token comes from the configured issuer.',
  },
  CC_ERR_OIDC_SIGNATURE: {
    status: 401,
    description: 'The JWT signature does not verify, or a claim check failed: the token was altered.',
    solution: 'Use an unaltered token from the issuer.',
  },
  CC_ERR_OIDC_UNAVAILABLE: {
    status: 503,
    description: "The issuer's discovery document or JWKS cannot be fetched.",
    solution: 'Check the issuer URL and its reachability from the gateway.',
  },
  CC_ERR_PG_PROTOCOL: {
    status: 400,
    description:
      'A PostgreSQL client sent a malformed or unexpected message (bad length, truncated field, a message out of turn). The client gets SQLSTATE 08P01 and the connection is closed.',
    solution: 'Use a conforming PostgreSQL client or driver; the gateway log names the message type.',
  },
  CC_ERR_PG_MESSAGE_TOO_LARGE: {
    status: 413,
    description:
      'A PostgreSQL message declared a length above postgres.maxMessageBytes (10 KiB for a startup packet, 8 KiB for any message before login); it was refused before anything was allocated. SQLSTATE 08P01, connection closed.',
    solution: 'Send smaller messages (split large COPY data), or raise postgres.maxMessageBytes.',
  },
  CC_ERR_PG_UNSUPPORTED: {
    status: 501,
    description:
      'The client asked for something the PostgreSQL front-end does not carry: protocol version 2, a replication connection, the FunctionCall message. SQLSTATE 0A000.',
    solution: 'Use protocol 3 and ordinary SQL (SELECT f(...) instead of the fast-path function call).',
  },
  CC_ERR_PG_TLS_REQUIRED: {
    status: 403,
    description:
      'The client tried to log in without TLS on a non-loopback PostgreSQL listener; the password (a ticket or agent key) would travel in clear. SQLSTATE 28000.',
    solution: 'Connect with sslmode=require (or verify-full with the gateway certificate).',
  },
  CC_ERR_SSH_LOGIN_FAILED: {
    status: 401,
    description:
      'The SSH login was refused: the user name is not AGENT%CONNECTION of a live agent and an ssh connection, or the password is neither a ticket bound to that agent and connection nor (under a configured policy) the key of that agent, or the SSH key is not registered to that agent or the agent holds no live ticket for the connection. The audit record (ssh.login.refused) carries the precise reason.',
    solution:
      'Connect as `ssh -p PORT AGENT%CONNECTION@GATEWAY` with a ticket issued to the agent with --dest conn:CONNECTION as the password, or with a key registered to the agent (`agent add-ssh-key`) while it holds such a ticket.',
  },
  CC_ERR_SSH_KEY_INVALID: {
    status: 400,
    description:
      'The SSH public key given to `agent add-ssh-key` is not one OpenSSH public key line of a supported type (ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa of 2048 bits or more): a private key, several keys, authorized_keys options, a certificate, or a damaged key.',
    solution:
      'Give the .pub file of the key (`ssh-keygen -t ed25519 -f agent_key` writes agent_key.pub); keep the private key with the agent.',
  },
  CC_ERR_SSH_KEY_UNKNOWN: {
    status: 401,
    description:
      'An SSH public-key login presented a key that is not registered to the agent named in the user name (never registered, registered to another agent, or removed), or its signature did not verify. Reported as the reason of CC_ERR_SSH_LOGIN_FAILED.',
    solution:
      'Register the public key to the agent (`coatcheck agent add-ssh-key AGENT KEY.pub`) and log in as that agent, offering only that key (ssh -i KEY -o IdentitiesOnly=yes).',
  },
  CC_ERR_SSH_KEY_REMOVED: {
    status: 401,
    description:
      "The agent's SSH key that opened this session was removed (`agent remove-ssh-key`); the session was ended on every replica.",
    solution: 'Register a key again if the agent should keep access, or log in with a ticket.',
  },
  CC_ERR_SSH_KEY_NO_TICKET: {
    status: 403,
    description:
      "An agent logged in to the SSH front-end with its registered key, but holds no live ticket for this connection's credential (--credential) bound to the connection: the key identifies the agent, a ticket is still what grants the connection. Reported as the reason of CC_ERR_SSH_LOGIN_FAILED.",
    solution:
      "Issue the agent a ticket for the connection's credential secret with --dest conn:CONNECTION (`coatcheck token issue --secret SECRET --to AGENT --dest conn:CONNECTION`), or log in with a ticket as the password.",
  },
  CC_ERR_SSH_COMMAND_UNCLASSIFIED: {
    status: 403,
    description:
      'An SSH exec command line uses shell syntax the gateway does not classify exactly (control operators, redirections, substitutions, expansions, globs, line breaks, an assignment before the program), so policy could not decide on what the upstream shell would run. Refused unless a configured policy permits ssh:exec-raw.',
    solution:
      "Send one simple command of plain or quoted words (`ssh … git log --oneline -5`, quoting arguments with '…'), or have the operator permit ssh:exec-raw for this agent and connection.",
  },
  CC_ERR_SSH_REQUEST_REFUSED: {
    status: 403,
    description:
      'The SSH client asked for something the gateway never carries: agent forwarding, X11 forwarding, environment variables (SendEnv/SetEnv), remote port forwarding, a Unix socket forward, or a subsystem other than sftp.',
    solution:
      'Do without it (ForwardAgent no, ForwardX11 no, no SendEnv/SetEnv); pass values as command arguments instead.',
  },
  CC_ERR_SSH_UPSTREAM_HOST_KEY: {
    status: 502,
    description:
      "The upstream SSH server presented a host key other than the one pinned on the connection (--host-key). The gateway refused to log in to it: it may be an impostor, or the server's key changed.",
    solution:
      "Check the server's key out of band (ssh-keyscan on the server's network, its console); if it changed legitimately, re-add the connection with the new --host-key.",
  },
  CC_ERR_SSH_UPSTREAM_FAILED: {
    status: 502,
    description:
      'The gateway could not open the upstream SSH session: the server did not answer, refused the credential, or refused the channel.',
    solution:
      "Check the connection's URL (ssh://USER@HOST:PORT), that its credential (a private key or a password) is accepted by that user, and the server's logs.",
  },
  CC_ERR_PG_LOGIN_FAILED: {
    status: 401,
    description:
      'The PostgreSQL login was refused: the user is not a live agent, or the password is neither a ticket bound to that agent and connection nor the key of that agent. SQLSTATE 28P01; the audit record carries the precise reason.',
    solution:
      "Connect as the agent the ticket was issued to, with a ticket issued with --dest <connection>, or with that agent's key.",
  },
  CC_ERR_PG_DATABASE_INVALID: {
    status: 400,
    description:
      'The database name of a PostgreSQL login does not name a postgres connection (or names a database the connection does not allow). SQLSTATE 3D000.',
    solution: 'Use the connection name as the database (`postgresql://AGENT:TICKET@HOST/CONNECTION`).',
  },
  CC_ERR_PG_STATEMENT_DENIED: {
    status: 403,
    description:
      "A statement was refused by the connection's rules (read-only, block DDL); the message names the rule and the statement class. SQLSTATE 42501; the session stays usable.",
    solution: 'Run statements the connection allows, or ask an operator to change its rules.',
  },
  CC_ERR_PG_APPROVAL_REQUIRED: {
    status: 403,
    description:
      'The connection requires a human approval for writes, and approvals are not available yet: the write was refused. SQLSTATE 42501; the session stays usable.',
    solution: 'Ask an operator to run the write, or to lift requireApprovalForWrites on the connection.',
  },
  CC_ERR_PG_STATEMENT_UNPARSABLE: {
    status: 400,
    description:
      'A statement could not be parsed by the PostgreSQL parser, so it cannot be classified and was refused (never guessed). SQLSTATE 42601.',
    solution: 'Fix the SQL syntax; the message gives the parser error position.',
  },
  CC_ERR_PG_UPSTREAM_UNREACHABLE: {
    status: 502,
    description:
      "The gateway could not reach the connection's PostgreSQL server, or TLS to it failed (verify-full). SQLSTATE 08001.",
    solution: "Check the connection's URL, the server's health and its certificate.",
  },
  CC_ERR_PG_UPSTREAM_AUTH: {
    status: 502,
    description:
      "The upstream PostgreSQL server refused the connection's credential, or asked for an authentication method the gateway does not speak (only SCRAM-SHA-256, md5 and password). SQLSTATE 08004.",
    solution: "Check the secret named by the connection's --credential and the server's pg_hba.conf.",
  },
  CC_ERR_PG_MASKING_FAILED: {
    status: 502,
    description:
      'A result value could not be masked or a secret in it could not be replaced by a ticket; the session was ended rather than let it through (fail closed). SQLSTATE XX000.',
    solution:
      'Check the gateway log for the incident; the store must be writable to issue replacement tickets.',
  },
  CC_ERR_PG_MASK_LINEAGE: {
    status: 403,
    description:
      'A statement reads a relation that has masked columns, and the gateway cannot tell which output columns derive from them (an unknown function over a whole row, a relation the catalog does not describe, a statement form lineage does not cover). It was refused rather than run unmasked. SQLSTATE 42501; the session stays usable.',
    solution:
      'Select the columns you need by name (masked ones come back masked), or ask an operator to lift the mask rule for this connection.',
  },
  CC_ERR_PG_MASKED_ERROR: {
    status: 502,
    description:
      'A statement that reads a masked column failed (or raised a notice) upstream; its message, detail, hint and context were withheld, since a server error can quote the masked value (a failed cast, a unique violation). Only the severity and SQLSTATE are kept.',
    solution: 'Rewrite the statement so it does not fail; the SQLSTATE says which class of error occurred.',
  },
  CC_ERR_PG_TOO_MANY_CONNECTIONS: {
    status: 503,
    description: 'The PostgreSQL listener already serves postgres.maxConnections clients. SQLSTATE 53300.',
    solution: 'Close idle sessions, or raise postgres.maxConnections.',
  },
  CC_ERR_PG_SETTING_PINNED: {
    status: 403,
    description:
      'A statement (SET, SET LOCAL, set_config(), ALTER ROLE/DATABASE/SYSTEM ... SET) would change a setting the gateway pins for the session: client_encoding, standard_conforming_strings, backslash_quote (they change how the server reads statement text) or search_path. A set_config() whose setting name is not a constant is refused the same way. SQLSTATE 42501; the session stays usable. Also sent (FATAL) when the upstream reports such a setting changed.',
    solution:
      "Do not change these settings through the gateway; the connection's rules.searchPath sets the search path.",
  },
  CC_ERR_PG_ENCODING_UNSUPPORTED: {
    status: 400,
    description:
      'The client asked for a client_encoding other than UTF8 (or SQL_ASCII, served as UTF8). The gateway reads statements as UTF-8 and pins the upstream session to it. SQLSTATE 22023, connection closed.',
    solution: 'Connect with client_encoding=UTF8 (PGCLIENTENCODING=UTF8).',
  },
  CC_ERR_PG_TEXT_INVALID: {
    status: 400,
    description:
      'A Query or Parse message carries statement text that is not valid UTF-8: the gateway and the server could read it differently, so the session is ended. SQLSTATE 22021.',
    solution: 'Send statement text in UTF-8; pass binary data as bound parameters.',
  },
  CC_ERR_PG_SYNTAX_UNSUPPORTED: {
    status: 400,
    description:
      "A statement uses syntax that the upstream's PostgreSQL version reads differently from the gateway's parser (for example SQL/JSON constructors, which an older server reads as calls of same-named functions), or the upstream's version is unknown. SQLSTATE 0A000; the session stays usable.",
    solution: 'Use syntax the upstream version has (the message names both versions).',
  },
  CC_ERR_PG_UPSTREAM_VERSION: {
    status: 502,
    description:
      'The upstream PostgreSQL server reported no server_version, a major version outside those the gateway parser is checked against (13 to 17), or session settings other than the pinned ones. SQLSTATE 08004.',
    solution:
      'Use a supported PostgreSQL version; check that the server accepts the pinned startup settings.',
  },
  CC_ERR_PG_STATEMENT_TOO_LARGE: {
    status: 413,
    description:
      'A query text exceeds postgres.maxStatementBytes or holds more than postgres.maxStatementsPerQuery statements (semicolons): it is refused before it is parsed, so one client cannot stall the others. SQLSTATE 54000; the session stays usable.',
    solution: 'Split the query, pass large values as bound parameters, or raise the limits.',
  },
  CC_ERR_PG_KEY_LOGIN_NOT_PERMITTED: {
    status: 403,
    description:
      'An agent logged in to a PostgreSQL connection with its agent key under the built-in policy. A key is not bound to any connection, so it opens one only where a configured policy permits sql:session; otherwise the login needs a ticket bound to that agent and connection. Reported as the reason of CC_ERR_PG_LOGIN_FAILED (SQLSTATE 28P01).',
    solution:
      'Log in with a ticket issued to the agent for this connection (--dest conn:NAME), or configure a policy that permits sql:session.',
  },
  CC_ERR_PG_LOGIN_PENDING_LIMIT: {
    status: 503,
    description:
      'Too many connections from this source are still logging in (postgres.maxPendingLoginsPerSource); the new one is refused. When all sources together reach postgres.maxPendingLogins, the oldest login still in progress is closed instead. SQLSTATE 53300.',
    solution: 'Finish or close logins in progress; raise the limits if a real client pool needs more.',
  },
  CC_ERR_APPROVAL_DENIED: {
    status: 403,
    description: 'An approver denied this exact operation.',
    solution: 'Do not retry the same operation; ask the approver why (the reason is in the approval record).',
  },
  CC_ERR_APPROVAL_SELF: {
    status: 403,
    description: 'The identity that requested an operation cannot approve it.',
    solution: 'Another approver must decide.',
  },
  CC_ERR_APPROVAL_NOT_APPROVER: {
    status: 403,
    description:
      'The approver is not in any of the groups the policy names (@approvers), or already approved.',
    solution: 'Ask a member of the named groups.',
  },
  CC_ERR_APPROVAL_NOT_PENDING: {
    status: 409,
    description: 'The approval request was already decided, used, or has expired.',
    solution: 'Retry the operation to create a new request.',
  },
  CC_ERR_LLM_SCAN_FAILED: {
    status: 502,
    description:
      'The LLM prompt guard could not scan or tokenize the request (detector or vault failure); it was not sent to the model provider.',
    solution:
      'Check the gateway log for the incident and retry; the guard never forwards an unscanned prompt.',
  },
  CC_ERR_LLM_BAD_REQUEST: {
    status: 400,
    description:
      'The LLM request is not a JSON object the guard can walk (malformed JSON, a non-JSON content type, or nesting too deep).',
    solution: 'Send the provider API request as JSON (application/json).',
  },
  CC_ERR_LLM_ATTACHMENT_SECRET: {
    status: 422,
    description:
      'A base64 attachment (image or file data) in the request contains a secret; attachments cannot be rewritten, so the request is refused.',
    solution: 'Remove the secret from the attachment, or send it as text (where it is replaced by a ticket).',
  },
  CC_ERR_LLM_ROUTE: {
    status: 404,
    description:
      'The path under /llm/<connection>/ is not an API the guard serves (/v1/chat/completions, /v1/responses, /v1/messages, /v1/models).',
    solution: 'Point the SDK base URL at http://<gateway>/llm/<connection>/v1.',
  },
  CC_ERR_MCP_UPSTREAM_FAILED: {
    status: 502,
    description:
      'The MCP server behind the connection could not be started, crashed, or closed the session; the call was not completed.',
    solution:
      'Check the MCP server (its command or URL) and the gateway log; a new MCP session starts it again.',
  },
  CC_ERR_MCP_TOOL_FORBIDDEN: {
    status: 403,
    description:
      'Policy does not allow this principal to call the named MCP tool (mcp:call with context.tool).',
    solution: 'Ask an operator to permit the tool in policy, or use another tool.',
  },
  CC_ERR_MCP_BAD_COMMAND: {
    status: 400,
    description: 'The --command of an MCP connection is empty or has an unterminated quote.',
    solution: "Give the command and its arguments, quoted as in a shell: --command 'node server.js --flag'.",
  },
  CC_ERR_WORKFLOW_KEY_MALFORMED: {
    status: 401,
    description:
      'The credential starts like a subtask key (`ccs_`) but is malformed or its checksum does not match.',
    solution: 'Pass the COATCHECK_SUBTASK_KEY exactly as `workflow spawn` printed it.',
  },
  CC_ERR_WORKFLOW_UNKNOWN: {
    status: 401,
    description: 'The subtask key is not known to this gateway.',
    solution: 'Spawn the subtask again (`coatcheck workflow spawn`) and use the key it prints.',
  },
  CC_ERR_WORKFLOW_ENDED: {
    status: 401,
    description:
      'The workflow or subtask (or one of its ancestors) was ended; its key and tickets no longer work.',
    solution: 'Start a new workflow or spawn a new subtask.',
  },
  CC_ERR_WORKFLOW_REVOKED: {
    status: 401,
    description:
      'The workflow or subtask (or one of its ancestors) was revoked, or the agent that started the workflow was revoked or expired.',
    solution:
      'Find out why it was revoked (`coatcheck workflow show ID`); start a new workflow if appropriate.',
  },
  CC_ERR_WORKFLOW_EXPIRED: {
    status: 401,
    description: 'The deadline of the workflow or subtask (or one of its ancestors) has passed.',
    solution: "Spawn a new subtask with a longer --ttl (within its parent's).",
  },
  CC_ERR_WORKFLOW_INACTIVE: {
    status: 409,
    description:
      'A subtask cannot be spawned under a workflow node that has ended, was revoked or is past its deadline.',
    solution: 'Spawn under an active node (`coatcheck workflow show ID` shows each status).',
  },
  CC_ERR_WORKFLOW_NOT_HELD: {
    status: 403,
    description:
      'A subtask asked for a secret its parent holds no live ticket for: subtasks get fewer secrets, never more.',
    solution:
      'Name only secrets the parent node holds (see `coatcheck workflow show ID`), or start the workflow with them.',
  },
  CC_ERR_WORKFLOW_NOT_DESCENDANT: {
    status: 403,
    description:
      'A ticket may be derived for another principal only when that principal is a subtask below the node the ticket belongs to.',
    solution: "Derive tickets through `workflow spawn`, which derives from the parent node's own tickets.",
  },
  CC_ERR_WORKFLOW_TOO_DEEP: {
    status: 400,
    description: 'Subtasks nest at most 16 levels deep.',
    solution: 'Spawn from a node nearer the root.',
  },
  CC_ERR_GATEWAY_MASK_UNSUPPORTED: {
    status: 502,
    description:
      'Policy asks to mask fields of this response (@mask), and the response is not JSON the gateway can rewrite, so it was withheld.',
    solution: 'Narrow the @mask policy to JSON APIs, or ask for a JSON representation.',
  },
  CC_ERR_K8S_PATH_NONCANONICAL: {
    status: 400,
    description:
      'A Kubernetes request path is not in canonical form (percent-encoding, `.` or `..` segments, empty segments, a trailing slash, characters outside a path name), so the gateway cannot be sure it reads it as the API server will; it is refused before anything is released.',
    solution:
      'Send the path as kubectl does: /api/v1/namespaces/NS/RESOURCE/NAME, without encoding or dot segments.',
  },
  CC_ERR_K8S_REQUEST_INVALID: {
    status: 400,
    description:
      'A Kubernetes request could not be classified: an unknown path shape, a duplicated or unparseable `watch` parameter, a protobuf request body, or a header the gateway does not carry.',
    solution: 'Send JSON requests as kubectl does; the message names the part that was refused.',
  },
  CC_ERR_K8S_IMPERSONATION_REFUSED: {
    status: 403,
    description:
      'The request carries impersonation headers (Impersonate-User, Impersonate-Group, Impersonate-Uid, Impersonate-Extra-*) and no policy of the loaded policy set permits k8s:impersonate for them (the built-in policy never does).',
    solution: 'Drop --as/--as-group, or permit k8s:impersonate for this agent and connection in a policy.',
  },
  CC_ERR_K8S_PROXY_REFUSED: {
    status: 403,
    description:
      'A `proxy` subresource request (pods/NAME/proxy, services/NAME/proxy, nodes/NAME/proxy) reaches services behind the API server; it needs a policy of the loaded policy set that permits k8s:proxy (the built-in policy never does).',
    solution:
      'Permit k8s:proxy for this agent, connection and resource in a policy, or reach the service through its own connection.',
  },
  CC_ERR_K8S_STREAM_UNSUPPORTED: {
    status: 400,
    description:
      'A Kubernetes stream the gateway cannot inspect: a SPDY upgrade, a base64 or tunnelled WebSocket subprotocol, port-forward, or an upgrade on a path that is not exec or attach.',
    solution:
      'Use kubectl 1.30 or newer (WebSocket exec and attach, v5.channel.k8s.io); port-forward is not carried.',
  },
  CC_ERR_K8S_RESPONSE_TOO_LARGE: {
    status: 502,
    description:
      'A Kubernetes response that must be rewritten whole (Secrets, ConfigMaps, a watch event) is larger than http.bodyLimit, so it was withheld.',
    solution: 'List with a smaller --chunk-size (limit), or raise http.bodyLimit.',
  },
  CC_ERR_K8S_RESPONSE_INVALID: {
    status: 502,
    description:
      'A Kubernetes response that must be inspected could not be read: Secret data that is not base64, JSON that does not parse, a protobuf or compressed body, a malformed WebSocket frame from the API server.',
    solution: 'Check the API server; the gateway withholds what it cannot inspect.',
  },
} as const satisfies Record<string, ErrorCodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class CoatcheckError extends Error {
  readonly code: ErrorCode;
  /** Extra, non-secret facts for JSON output (ids, fields, fingerprints). */
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; details?: Record<string, unknown> },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CoatcheckError';
    this.code = code;
    this.details = options?.details;
  }

  get status(): number {
    return ERROR_CODES[this.code].status;
  }

  toJSON(): { code: ErrorCode; message: string; details?: Readonly<Record<string, unknown>> } {
    return this.details === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, details: this.details };
  }
}

export function isCoatcheckError(value: unknown): value is CoatcheckError {
  return value instanceof CoatcheckError;
}

/** Narrow an unknown throwable to a CoatcheckError, wrapping anything else as internal with an incident id. */
export function toCoatcheckError(error: unknown, incidentId: string): CoatcheckError {
  if (error instanceof CoatcheckError) return error;
  return new CoatcheckError('CC_ERR_INTERNAL', `internal error (incident ${incidentId})`, {
    cause: error,
    details: { incident: incidentId },
  });
}

# syntax=docker/dockerfile:1
# coatcheck container image (docs/deploy.md).
#
#   docker build -t coatcheck .
#   docker run -d --read-only --tmpfs /tmp -v coatcheck-home:/var/lib/coatcheck \
#     -p 127.0.0.1:7070:7070 -p 127.0.0.1:7080:7080 -e COATCHECK_LISTEN_HTTP=0.0.0.0:7080 coatcheck
#
# Stages: `build` compiles TypeScript with every dependency; `deps` installs the production
# dependencies only (better-sqlite3 is compiled there when no prebuilt binary fits); the
# runtime stage copies dist/, console/ and those node_modules, runs as uid 10001 and writes
# only to COATCHECK_HOME (a volume) and /tmp (a tmpfs), so `--read-only` works.

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS toolchain
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./

FROM toolchain AS build
# --ignore-scripts: the package's `prepare` would build before the sources are copied;
# better-sqlite3's native module is built explicitly instead.
RUN npm ci --ignore-scripts --no-audit --no-fund && npm rebuild better-sqlite3
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npx tsc -p tsconfig.build.json

FROM toolchain AS deps
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm rebuild better-sqlite3 \
 && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
# openssl: the PostgreSQL listener generates its self-signed certificate with it when
# postgres.tlsCert is not set. tini: PID 1 that forwards signals and reaps children
# (MCP stdio servers are child processes).
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 coatcheck \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/coatcheck --no-create-home \
      --shell /usr/sbin/nologin coatcheck \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/coatcheck
WORKDIR /opt/coatcheck
COPY --from=deps /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY package.json README.md ./
COPY console ./console
COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.mjs ./deploy/docker/
RUN chmod 0755 dist/cli/main.js deploy/docker/entrypoint.sh \
 && ln -s /opt/coatcheck/dist/cli/main.js /usr/local/bin/coatcheck \
 && ln -s /opt/coatcheck/deploy/docker/entrypoint.sh /usr/local/bin/coatcheck-entrypoint

ENV NODE_ENV=production \
    COATCHECK_HOME=/var/lib/coatcheck \
    COATCHECK_LISTEN_ADMIN=0.0.0.0:7070 \
    TMPDIR=/tmp
USER 10001:10001
VOLUME ["/var/lib/coatcheck"]
# admin API and console, HTTP front-end, PostgreSQL, forward proxy, Kubernetes, SSH: each
# listener opens only when COATCHECK_LISTEN_<NAME> (or the config) asks for it.
EXPOSE 7070 7080 7432 7090 7443 7022
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "/opt/coatcheck/deploy/docker/healthcheck.mjs"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/coatcheck/deploy/docker/entrypoint.sh"]
CMD ["serve"]

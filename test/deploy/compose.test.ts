import { type ChildProcessWithoutNullStreams, execFile, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Client } from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config/load-config.js';
import { parseDuration } from '../../src/core/duration.js';

/**
 * The Compose quick start (deploy/compose/docker-compose.yml) without a container daemon:
 * the file is validated by Debian's docker-compose 1.29 (`config`, offline; skipped with
 * a warning where it is not installed); its settings are checked (read-only, non-root,
 * published on loopback only, drain time); and the steps of docs/deploy.md run with bash
 * against the gateway as the image starts it (the entrypoint, with the gateway service's
 * environment), the echo service's own script and inventory.sql on the local PostgreSQL.
 * Container names become local addresses: postgres -> 127.0.0.1:5432, echo -> the echo
 * script's port, the published 7080/7432 -> the ports the gateway took.
 */
const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = join(HERE, '../..');
const COMPOSE = join(ROOT, 'deploy/compose/docker-compose.yml');
const ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

type Service = Record<string, unknown> & {
  environment: Record<string, string>;
  ports?: string[];
  command?: string[];
  volumes?: string[];
};
const compose = parse(readFileSync(COMPOSE, 'utf8')) as { services: Record<string, Service> };
const gateway = compose.services.gateway!;

const hasCompose = spawnSync('docker-compose', ['version'], { encoding: 'utf8' }).status === 0;
if (!hasCompose) console.warn('compose.test.ts: docker-compose is not installed; its validation is skipped');

/** The ${VAR:-default} values as Compose substitutes them with nothing set. */
const interpolate = (text: string) => text.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1');

describe('Compose quick start: the file', () => {
  it.skipIf(!hasCompose)('docker-compose config accepts it, and rejects a broken copy', () => {
    const ok = spawnSync('docker-compose', ['-f', COMPOSE, 'config', '-q'], { encoding: 'utf8' });
    expect({ status: ok.status, stderr: ok.stderr }).toEqual({ status: 0, stderr: '' });
    const dir = mkdtempSync(join(tmpdir(), 'coatcheck-compose-'));
    try {
      const broken = join(dir, 'docker-compose.yml');
      writeFileSync(broken, readFileSync(COMPOSE, 'utf8').replace('read_only: true', 'read_only: maybe'));
      const bad = spawnSync('docker-compose', ['-f', broken, 'config', '-q'], { encoding: 'utf8' });
      expect(bad.status).not.toBe(0);
      expect(bad.stderr).toContain('read_only');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the gateway: read-only root, tmpfs /tmp, non-root, no capabilities, home on a volume, loopback ports, waits for a healthy PostgreSQL', async () => {
    expect(gateway).toMatchObject({
      read_only: true,
      user: '10001:10001',
      cap_drop: ['ALL'],
      depends_on: { postgres: { condition: 'service_healthy' } },
    });
    expect(gateway.tmpfs).toEqual([expect.stringMatching(/^\/tmp(:|$)/)]);
    expect(gateway.volumes).toEqual(['coatcheck-home:/var/lib/coatcheck']);
    for (const port of gateway.ports!) expect(port).toMatch(/^127\.0\.0\.1:/);
    for (const [name, service] of Object.entries(compose.services))
      if (name !== 'gateway') expect({ name, ports: service.ports }).toEqual({ name, ports: undefined });
    // The health check is the image's own script.
    expect((gateway.healthcheck as { test: string[] }).test).toEqual([
      'CMD',
      'node',
      '/opt/coatcheck/deploy/docker/healthcheck.mjs',
    ]);
    expect(readFileSync(join(ROOT, 'Dockerfile'), 'utf8')).toContain(
      'COPY deploy/docker/entrypoint.sh deploy/docker/healthcheck.mjs ./deploy/docker/',
    );
    // Its environment is valid coatcheck configuration, and the drain fits the stop grace period.
    const env = Object.fromEntries(Object.entries(gateway.environment).map(([k, v]) => [k, interpolate(v)]));
    const config = await parseConfig('', 'compose', env);
    expect(config.store).toMatchObject({
      driver: 'postgres',
      url: expect.stringContaining('@postgres:5432/'),
    });
    expect(config.listen).toMatchObject({
      admin: '0.0.0.0:7070',
      http: '0.0.0.0:7080',
      postgres: '0.0.0.0:7432',
    });
    expect(parseDuration(String(gateway.stop_grace_period))).toBeGreaterThan(
      parseDuration(config.shutdown.drainTimeout) + 5_000,
    );
  });
});

describe('Compose quick start: the steps of docs/deploy.md', () => {
  const suffix = randomBytes(4).toString('hex');
  const storeDb = `cc_compose_${suffix}`;
  const inventoryDb = `inventory_${suffix}`;
  const inventoryRole = `inventory_${suffix}`;
  let dir: string;
  let echo: ChildProcessWithoutNullStreams;
  let gw: ChildProcessWithoutNullStreams;
  let echoPort: number;
  let listening: Record<string, string>;
  let gwOutput = '';

  const admin = async (sql: string) => {
    const client = new Client({ connectionString: ADMIN_URL });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-compose-'));
    // The echo service, from its own script.
    const echoService = compose.services.echo!;
    echo = spawn(process.execPath, [join(ROOT, 'deploy/compose/echo-server.mjs')], {
      env: { PORT: '0' },
    }) as ChildProcessWithoutNullStreams;
    expect(echoService.command).toEqual(['node', '/srv/echo-server.mjs']);
    echoPort = await new Promise<number>((resolve) => {
      echo.stdout.on('data', (c: Buffer) => {
        const match = /"port":(\d+)/.exec(c.toString('utf8'));
        if (match) resolve(Number(match[1]));
      });
    });
    // PostgreSQL: the gateway's store, and inventory.sql with names of this run.
    await admin(`CREATE DATABASE ${storeDb}`);
    const sql = readFileSync(join(ROOT, 'deploy/compose/inventory.sql'), 'utf8')
      .replaceAll('inventory-quickstart', `pw-${suffix}`)
      .replaceAll('DATABASE inventory OWNER inventory', `DATABASE ${inventoryDb} OWNER ${inventoryRole}`)
      .replaceAll('\\connect inventory', `\\connect ${inventoryDb}`)
      .replaceAll('ROLE inventory', `ROLE ${inventoryRole}`);
    const psql = spawnSync('psql', ['-v', 'ON_ERROR_STOP=1', '-q', ADMIN_URL], {
      input: sql,
      encoding: 'utf8',
    });
    expect({ status: psql.status, stderr: psql.stderr }).toMatchObject({ status: 0 });
    // The gateway as the image starts it: the entrypoint with the service's environment.
    const bin = join(dir, 'bin');
    spawnSync('mkdir', ['-p', bin]);
    writeFileSync(
      join(bin, 'coatcheck'),
      `#!/bin/sh\ncd '${ROOT}' && exec ${process.execPath} --import tsx ${join(ROOT, 'src/cli/main.ts')} "$@"\n`,
      { mode: 0o755 },
    );
    const env: Record<string, string> = {
      PATH: `${bin}:${process.env.PATH}`,
      COATCHECK_HOME: join(dir, 'home'),
    };
    for (const [key, value] of Object.entries(gateway.environment)) env[key] = interpolate(value);
    env.COATCHECK_DATABASE_URL = `postgres://postgres@127.0.0.1:5432/${storeDb}`;
    for (const key of ['COATCHECK_LISTEN_ADMIN', 'COATCHECK_LISTEN_HTTP', 'COATCHECK_LISTEN_POSTGRES'])
      env[key] = '127.0.0.1:0';
    gw = spawn(join(ROOT, 'deploy/docker/entrypoint.sh'), gateway.command ?? [], {
      env,
    }) as ChildProcessWithoutNullStreams;
    gw.stderr.on('data', (c: Buffer) => {
      gwOutput += c.toString('utf8');
    });
    listening = await new Promise((resolve, reject) => {
      gw.stdout.on('data', (c: Buffer) => {
        gwOutput += c.toString('utf8');
        const line = gwOutput.split('\n').find((l) => l.startsWith('{') && l.includes('"admin"'));
        if (line !== undefined) resolve(JSON.parse(line));
      });
      gw.once('exit', (code) => reject(new Error(`gateway exited ${code}: ${gwOutput}`)));
    });
  }, 120_000);

  afterAll(async () => {
    if (gw !== undefined && gw.exitCode === null) {
      gw.kill('SIGTERM');
      await new Promise((r) => gw.once('exit', r));
    }
    echo?.kill('SIGTERM');
    await admin(`DROP DATABASE IF EXISTS ${storeDb} WITH (FORCE)`).catch(() => undefined);
    await admin(`DROP DATABASE IF EXISTS ${inventoryDb} WITH (FORCE)`).catch(() => undefined);
    await admin(`DROP ROLE IF EXISTS ${inventoryRole}`).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });

  it('the steps work: a ticket through the HTTP front-end to echo, psql through the PostgreSQL front-end, the audit verifies', async () => {
    const doc = readFileSync(join(ROOT, 'docs/deploy.md'), 'utf8');
    const section = doc.slice(doc.indexOf('## Compose quick start'), doc.indexOf('\n## Helm chart'));
    const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks).toHaveLength(2);
    const steps = blocks[1]!;
    expect(steps.split('\n')[0]).toMatch(/^cc\(\) \{ docker compose .* exec -T gateway coatcheck "\$@"; \}$/);
    const http = new URL(listening.http!);
    const pg = listening.postgres!.split(':');
    const script = steps
      .split('\n')
      .slice(1)
      .join('\n')
      .replaceAll('http://echo:8080', `http://127.0.0.1:${echoPort}`)
      .replaceAll('http://127.0.0.1:7080', http.origin)
      .replaceAll('@127.0.0.1:7432', `@127.0.0.1:${pg[1]}`)
      .replaceAll(
        'postgres://inventory@postgres:5432/inventory',
        `postgres://${inventoryRole}@127.0.0.1:5432/${inventoryDb}`,
      )
      .replaceAll("'inventory-quickstart'", `'pw-${suffix}'`);
    const file = join(dir, 'steps.sh');
    writeFileSync(file, `set -euo pipefail\ncc() { coatcheck "$@"; }\n${script}`);
    let out: string;
    try {
      out = (
        await promisify(execFile)('bash', [file], {
          cwd: ROOT,
          env: {
            PATH: `${join(dir, 'bin')}:${process.env.PATH}`,
            COATCHECK_HOME: join(dir, 'home'),
            COATCHECK_DATABASE_URL: `postgres://postgres@127.0.0.1:5432/${storeDb}`,
          },
          encoding: 'utf8',
        })
      ).stdout;
    } catch (error) {
      const e = error as { stdout?: string; stderr?: string };
      throw new Error(`docs/deploy.md step failed\nstdout: ${e.stdout}\nstderr: ${e.stderr}`);
    }
    // echo received the real token; the agent got a ticket in its place.
    expect(out).toContain('"url":"/hello"');
    expect(out).not.toContain('echo-token-quickstart-0123456789');
    expect(out).toMatch(/"authorization":"Bearer cct_[A-Za-z0-9]{28}"/);
    // psql read the inventory through the gateway.
    expect(out).toMatch(/bolts\s*\|\s*1200/);
    expect(out).toContain('audit log intact');
    expect(gwOutput).not.toContain('echo-token-quickstart-0123456789');
    expect(gwOutput).not.toContain(`pw-${suffix}`);
  }, 120_000);
});

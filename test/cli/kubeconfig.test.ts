import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { isTicket } from '../../src/core/ticket-format.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CA = `-----BEGIN CERTIFICATE-----
MIIBfjCCASSgAwIBAgIUQ2F0ZXN0Y2VydGlmaWNhdGUwCgYIKoZIzj0EAwIwFzEV
-----END CERTIFICATE-----
`;

describe('coatcheck connection add --type kubernetes and coatcheck kubeconfig', () => {
  let t: TestHome;
  let env: NodeJS.ProcessEnv;
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-kubeconfig-'));
  beforeEach(async () => {
    t = await makeTestHome();
    env = { COATCHECK_HOME: t.home.dir };
  });
  afterEach(() => t.remove());

  it('registers the connection with its CA and prints a kubeconfig with a ticket for the agent', async () => {
    const caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, CA);
    expect(
      (
        await cli(['secret', 'add', 'prod-token', '--allow', 'conn:prod'], {
          env,
          stdin: 'cluster-token-canary-55aa',
        })
      ).code,
    ).toBe(0);
    const added = await cli(
      [
        'connection',
        'add',
        'prod',
        '--type',
        'kubernetes',
        '--url',
        'https://10.0.0.1:6443',
        '--credential',
        'prod-token',
        '--ca',
        caFile,
      ],
      { env },
    );
    expect(added.stderr).toBe('');
    expect((await cli(['agent', 'create', 'builder'], { env })).code).toBe(0);
    const r = await cli(
      ['kubeconfig', 'builder', 'prod', '--ttl', '1h', '--gateway', 'https://127.0.0.1:7443'],
      { env },
    );
    expect(r.stderr).toBe('');
    expect(r.stdout).not.toContain('cluster-token-canary-55aa');
    const config = parse(r.stdout);
    expect(config.clusters[0].cluster.server).toBe('https://127.0.0.1:7443/k8s/builder/prod');
    expect(
      Buffer.from(config.clusters[0].cluster['certificate-authority-data'], 'base64').toString(),
    ).toContain('BEGIN CERTIFICATE');
    const token = config.users[0].user.token as string;
    expect(isTicket(token)).toBe(true);
    expect(config['current-context']).toBe('coatcheck-prod');
    const inspected = await cli(['token', 'inspect', token, '--json'], { env });
    expect(JSON.parse(inspected.stdout)).toMatchObject({ destinations: ['conn:prod'] });
  });

  it('refuses a --ca that is not certificates, a CA on another type, and kubeconfig for a non-kubernetes connection', async () => {
    const keyFile = join(dir, 'key.pem');
    writeFileSync(keyFile, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
    const withKey = await cli(
      ['connection', 'add', 'k', '--type', 'kubernetes', '--url', 'https://k:6443', '--ca', keyFile],
      { env },
    );
    expect(withKey.code).toBe(2);
    expect(withKey.stderr).toContain('--ca must hold PEM certificates only');
    const caFile = join(dir, 'ca2.pem');
    writeFileSync(caFile, CA);
    const onHttp = await cli(
      ['connection', 'add', 'h', '--type', 'http', '--url', 'https://h', '--ca', caFile],
      { env },
    );
    expect(onHttp.stderr).toContain('--ca: applies to kubernetes connections only');
    await cli(['connection', 'add', 'h', '--type', 'http', '--url', 'https://h'], { env });
    await cli(['agent', 'create', 'builder'], { env });
    const wrong = await cli(['kubeconfig', 'builder', 'h'], { env });
    expect(wrong.stderr).toContain('no kubernetes connection named h');
  });
});

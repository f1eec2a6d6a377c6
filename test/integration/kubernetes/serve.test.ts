import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KubeApiServer, startKubeApiServer } from '../../helpers/kube-apiserver.js';
import { kubectlMissing } from './harness.js';

const run = promisify(execFile);
const TOKEN = 'serve-k8s-canary-token-3c2b1a0f9e';
const main = new URL('../../../src/cli/main.ts', import.meta.url).pathname;

describe.skipIf(kubectlMissing !== null)(
  'coatcheck serve --listen-k8s and coatcheck kubeconfig, as an operator runs them',
  () => {
    let dir: string;
    let api: KubeApiServer;
    let server: ChildProcess;
    let stderr = '';
    let urls: { admin: string; kubernetes: string };

    const cli = async (args: string[], input?: string) => {
      const child = run(process.execPath, ['--import', 'tsx', main, '--dir', join(dir, 'home'), ...args], {
        env: { ...process.env, COATCHECK_HOME: '' },
      });
      if (input !== undefined) child.child.stdin!.end(input);
      return (await child).stdout;
    };

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'coatcheck-serve-k8s-'));
      api = await startKubeApiServer({ dir, token: TOKEN });
      api.put('pods', {
        metadata: { name: 'web-1', namespace: 'default' },
        spec: { containers: [{ name: 'a', image: 'a' }] },
      });
      await cli(['init']);
      await cli(['secret', 'add', 'prod-token', '--allow', 'conn:prod'], TOKEN);
      await cli([
        'connection',
        'add',
        'prod',
        '--type',
        'kubernetes',
        '--url',
        api.url,
        '--credential',
        'prod-token',
        '--ca',
        api.caFile,
      ]);
      await cli(['agent', 'create', 'builder']);
      server = spawn(
        process.execPath,
        [
          '--import',
          'tsx',
          main,
          '--dir',
          join(dir, 'home'),
          '--json',
          'serve',
          '--listen-admin',
          '127.0.0.1:0',
          '--listen-k8s',
          '127.0.0.1:0',
        ],
        { env: { ...process.env, COATCHECK_HOME: '', COATCHECK_LOG_LEVEL: 'debug' } },
      );
      server.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
      });
      urls = await new Promise((resolve, reject) => {
        server.stdout!.once('data', (d: Buffer) => resolve(JSON.parse(d.toString())));
        server.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${stderr}`)));
      });
    }, 60_000);

    afterAll(async () => {
      if (server?.exitCode === null) {
        server.kill('SIGTERM');
        await new Promise((resolve) => server.once('exit', resolve));
      }
      await api?.close();
      rmSync(dir, { recursive: true, force: true });
    });

    it('kubectl with the printed kubeconfig lists pods; serve stops on SIGTERM and never logged the token', async () => {
      expect(urls.kubernetes).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
      const kubeconfig = await cli(['kubeconfig', 'builder', 'prod', '--ttl', '10m']);
      expect(kubeconfig).toContain(`server: ${urls.kubernetes}/k8s/builder/prod`);
      const file = join(dir, 'kubeconfig');
      writeFileSync(file, kubeconfig, { mode: 0o600 });
      const got = await run(
        'kubectl',
        ['--kubeconfig', file, '--cache-dir', join(dir, 'cache'), 'get', 'pods', '-o', 'name'],
        {
          env: { PATH: process.env.PATH, HOME: dir },
        },
      );
      expect(got.stdout).toBe('pod/web-1\n');
      expect(api.received.at(-1)?.headers.authorization).toBe(`Bearer ${TOKEN}`);
      server.kill('SIGTERM');
      const code = await new Promise((resolve) => server.once('exit', resolve));
      expect(code).toBe(0);
      expect(stderr).not.toContain(TOKEN);
      const ticket = /token: (cct_\w+)/.exec(kubeconfig)?.[1] ?? 'no ticket in the kubeconfig';
      expect(stderr).not.toContain(ticket);
      expect(stderr).toContain('coatcheck stopping');
    }, 60_000);
  },
);

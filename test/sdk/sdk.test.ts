import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  CoatcheckError,
  createClient,
  createGatewayFetch,
  envFile,
  subtaskEnv,
} from '../../src/sdk/index.js';

const repo = join(import.meta.dirname, '..', '..');
const CANARY = 'canary-sdk-example-token-7e6d5c4b3a291807';

function run(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: repo, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('utf8');
    });
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString('utf8');
    });
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, out, err }));
  });
}

describe('sdk', () => {
  it('sends gateway requests to /c/<connection>/… with the credential, and never elsewhere', async () => {
    const seen: Array<{ url: string; auth: string | null; ticket: string | null }> = [];
    const fakeFetch = (async (url: URL | string, init?: RequestInit) => {
      const headers = new Headers(init?.headers);
      seen.push({
        url: String(url),
        auth: headers.get('proxy-authorization'),
        ticket: headers.get('authorization'),
      });
      return new Response('{}', { status: 200 });
    }) as typeof fetch;
    const gf = createGatewayFetch({
      gatewayUrl: 'http://127.0.0.1:7080',
      credential: 'ccs_key',
      connection: 'api',
      fetch: fakeFetch,
    });
    await gf('/users?x=1', { headers: { authorization: 'Bearer cct_t' } });
    await gf('http://127.0.0.1:7080/c/other/path');
    await expect(gf('https://evil.example/steal')).rejects.toMatchObject({ code: 'CC_ERR_INVALID_ARGUMENT' });
    expect(seen).toEqual([
      { url: 'http://127.0.0.1:7080/c/api/users?x=1', auth: 'Bearer ccs_key', ticket: 'Bearer cct_t' },
      { url: 'http://127.0.0.1:7080/c/other/path', auth: 'Bearer ccs_key', ticket: null },
    ]);
    expect(() => createGatewayFetch({ gatewayUrl: '', credential: 'x' })).toThrow(CoatcheckError);
  });

  it('is published as coatcheck/sdk with types, and imports nothing', () => {
    const pkg = JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as {
      exports: Record<string, { types: string; default: string }>;
    };
    expect(pkg.exports['./sdk']).toEqual({ types: './dist/sdk/index.d.ts', default: './dist/sdk/index.js' });
    // Dependency-free: the SDK module imports nothing, so it costs an application nothing.
    expect(readFileSync(join(repo, 'src/sdk/index.ts'), 'utf8')).not.toMatch(/^import /m);
  });

  it('turns admin API errors into CoatcheckError with the code', async () => {
    const fakeFetch = (async () =>
      new Response(JSON.stringify({ error: { code: 'CC_ERR_NOT_FOUND', message: 'no workflow wfl_x' } }), {
        status: 404,
      })) as unknown as typeof fetch;
    const client = createClient({ adminUrl: 'http://127.0.0.1:1', adminKey: 'k', fetch: fakeFetch });
    await expect(client.show('wfl_x')).rejects.toMatchObject({
      name: 'CoatcheckError',
      code: 'CC_ERR_NOT_FOUND',
      status: 404,
      message: 'no workflow wfl_x',
    });
    const env = { A: 'cct_1', COATCHECK_SUBTASK_KEY: 'ccs_2' };
    expect(envFile({ env })).toBe('A=cct_1\nCOATCHECK_SUBTASK_KEY=ccs_2\n');
    expect(subtaskEnv({ env }, { base: { PATH: '/bin', A: 'old' } })).toEqual({ PATH: '/bin', ...env });
  });

  it('runs the subtasks example end to end, and the API token appears in no output (canary)', async () => {
    const result = await run(['--import', 'tsx', 'examples/subtasks/main.ts'], {
      PATH: process.env.PATH,
      EXAMPLE_API_TOKEN: CANARY,
    });
    expect(result.err).not.toContain('example failed');
    expect(result.code).toBe(0);
    const out = result.out;
    expect(out).toMatch(/^workflow wfl_\w+ started for agent reporter$/m);
    for (const [name, resource, count] of [
      ['fetch-users', 'users', 2],
      ['fetch-orders', 'orders', 3],
      ['fetch-invoices', 'invoices', 1],
    ] as const) {
      expect(out).toMatch(new RegExp(`spawned ${name} wfl_\\w+: API_TOKEN COATCHECK_GATEWAY_URL`));
      expect(out).toContain(`"resource":"${resource}","status":200,"count":${count}`);
      expect(out).toMatch(new RegExp(`subtask ${name} wfl_\\w+ \\(ended`));
    }
    expect(out).toContain('"otherTicket":{"status":403,"code":"CC_ERR_TICKET_WRONG_PRINCIPAL"}');
    expect(out.match(/exchanged api-token/g)).toHaveLength(3);
    expect(out).toMatch(/refused CC_ERR_TICKET_WRONG_PRINCIPAL \(tkt_\w+ of wfl_\w+\)/);
    expect(out).toContain('ended 4 nodes, 4 tickets expired');
    expect(out).toContain('fetch-users after the end: 401 CC_ERR_WORKFLOW_ENDED');
    expect(out).toMatch(
      /subtask fetch-users wfl_\w+ \(ended[^\n]*\n(?: {4}[^\n]*\n)* {4}\S+ refused CC_ERR_WORKFLOW_ENDED by unauthenticated$/m,
    );
    expect(out).toContain('the API token appeared in no output');
    // Logs included: the gateway's stderr never shows the token either.
    expect(out + result.err).not.toContain(CANARY);
  }, 120_000);
});

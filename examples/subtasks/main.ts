/**
 * A small task split into three subtasks, each in its own child process with its own
 * narrowed tickets, all calling a local HTTP API through the coatcheck gateway.
 *
 *   node --import tsx examples/subtasks/main.ts
 *
 * It makes a throwaway coatcheck home, starts a local API (which wants a bearer token),
 * the gateway (admin API + HTTP front-end) in this process, registers the token as a
 * secret and the API as a connection, then uses the SDK as an orchestrator would:
 * start a workflow, spawn three subtasks, run them, end the workflow, show the audit tree.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startAdminServer } from '../../src/admin/admin-server.js';
import { renderTree } from '../../src/cli/workflows.js';
import { resolveHome } from '../../src/config/home.js';
import { createClient, createGatewayFetch, subtaskEnv, type WorkflowNode } from '../../src/sdk/index.js'; // in an application: 'coatcheck/sdk'
import { initHome, openContext } from '../../src/server/context.js';
import { startHttpFrontend } from '../../src/server/frontends.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
// The API's real token. Only the gateway ever sees it; the example checks no output does.
const API_TOKEN = process.env.EXAMPLE_API_TOKEN ?? `example-api-token-${randomBytes(12).toString('hex')}`;

// ---- a local API that wants the real token
const data: Record<string, unknown[]> = {
  users: [
    { id: 1, name: 'ada' },
    { id: 2, name: 'grace' },
  ],
  orders: [
    { id: 10, user: 1 },
    { id: 11, user: 2 },
    { id: 12, user: 1 },
  ],
  invoices: [{ id: 100, order: 10 }],
};
const api = createServer((req, res) => {
  const resource = (req.url ?? '/').slice(1);
  const ok = req.headers.authorization === `Bearer ${API_TOKEN}` && resource in data;
  res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
  res.end(JSON.stringify(ok ? { items: data[resource] } : { error: 'unauthorized' }));
});
await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
const apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;

// ---- the gateway, in this process, on a throwaway home
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-example-'));
const home = resolveHome(join(dir, 'home'), {});
await initHome(home, { env: {} });
const ctx = await openContext(home, { env: {} });
const loopback = { host: '127.0.0.1', port: 0 };
const gateway = await startHttpFrontend(ctx, loopback, ctx.log);
ctx.endpoints.http = gateway.url;
const admin = await startAdminServer(ctx, loopback, ctx.log);

// What an operator does once, with the CLI (`coatcheck secret add`, `agent create`, `connection add`).
await ctx.vault.addSecret(
  { name: 'api-token', value: Buffer.from(API_TOKEN), allow: ['api'] },
  'admin:example',
);
await ctx.agents.create({ name: 'reporter', groups: ['reports'] }, 'admin:example');
await ctx.connections.add({ name: 'api', type: 'http', url: apiUrl }, 'admin:example');

/** Run one subtask's worker as a child process with the subtask's environment; its stdout. */
function runWorker(
  node: WorkflowNode,
  resource: string,
  extra: Record<string, string> = {},
): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'worker.ts'), resource], {
      cwd: repo,
      // Only what the subtask needs: no admin key, no secret.
      env: { ...subtaskEnv(node, { base: { PATH: process.env.PATH ?? '' } }), ...extra },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
    });
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`worker ${resource} exited with ${code}`)),
    );
  });
}

let exitCode = 0;
try {
  // ---- the orchestrator, with the SDK
  const coatcheck = createClient({
    adminUrl: admin.url,
    adminKey: readFileSync(home.adminKeyFile, 'utf8').trim(),
  });
  const run = await coatcheck.startWorkflow({
    name: 'monthly-report',
    agent: 'reporter',
    secrets: ['api-token'],
    ttl: '10m',
  });
  const users = await coatcheck.spawnSubtask(run.workflow.id, { name: 'fetch-users', ttl: '5m', uses: 1 });
  const orders = await coatcheck.spawnSubtask(run.workflow.id, { name: 'fetch-orders', ttl: '5m', uses: 1 });
  const invoices = await coatcheck.spawnSubtask(run.workflow.id, {
    name: 'fetch-invoices',
    ttl: '5m',
    uses: 1,
  });

  process.stdout.write(`workflow ${run.workflow.id} started for agent reporter\n`);
  for (const node of [users, orders, invoices]) {
    process.stdout.write(
      `  spawned ${node.workflow.name} ${node.workflow.id}: ${Object.keys(node.env).sort().join(' ')}\n`,
    );
  }
  // The third subtask is also (wrongly) handed the first one's ticket, to show it is refused.
  const results = await Promise.all([
    runWorker(users, 'users'),
    runWorker(orders, 'orders'),
    runWorker(invoices, 'invoices', { OTHER_SUBTASK_TICKET: users.env.API_TOKEN ?? '' }),
  ]);
  process.stdout.write('subtask results\n');
  for (const line of results) process.stdout.write(`  ${line.trim()}\n`);

  const ended = await coatcheck.end(run.workflow.id);
  process.stdout.write(`ended ${ended.ended.length} nodes, ${ended.tickets.length} tickets expired\n`);
  // After the end, the subtask's key no longer opens the gateway.
  const late = await createGatewayFetch({
    gatewayUrl: gateway.url,
    credential: users.env.COATCHECK_SUBTASK_KEY,
    connection: 'api',
  })('/users', { headers: { authorization: `Bearer ${users.env.API_TOKEN}` } });
  const lateCode = ((await late.json()) as { error?: { code?: string } }).error?.code;
  process.stdout.write(`fetch-users after the end: ${late.status} ${lateCode}\n\n`);

  const tree = await coatcheck.show(run.workflow.id);
  const rendered = renderTree(tree as Parameters<typeof renderTree>[0]);
  process.stdout.write(`$ coatcheck workflow show ${run.workflow.id}\n${rendered}`);

  // The token itself appears nowhere: not in the subtasks' output, the tree, or the audit log.
  const audit = JSON.stringify(await ctx.store.readAudit(0, 100_000));
  const leaked = [results.join(''), rendered, JSON.stringify(tree), audit].some((text) =>
    text.includes(API_TOKEN),
  );
  process.stdout.write(
    leaked ? '\nLEAK: the API token appeared in output\n' : '\nthe API token appeared in no output\n',
  );
  if (leaked) exitCode = 1;
} catch (error) {
  process.stderr.write(`example failed: ${(error as Error).stack ?? String(error)}\n`);
  exitCode = 1;
} finally {
  await admin.close();
  await gateway.close();
  await ctx.close();
  await new Promise<void>((resolve) => api.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
}
process.exitCode = exitCode;

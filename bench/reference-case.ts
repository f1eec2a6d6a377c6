// The HTTP reference case the profiles share (bench/http-profile.ts, bench/durable-writes.ts):
// the upstream of bench/http.ts in its own process, and a new home with one agent, one
// secret, one ticket for it and a connection to that upstream. The gateway itself is each
// script's to start (from source, in its own process).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { type Context, initHome, openContext } from '../src/server/context.js';

/** bench/http-upstream.ts in a child process (killed when this one exits); resolves with its port. */
export async function startUpstream(): Promise<{ port: number; stop: () => void }> {
  const upstream = spawn(
    process.execPath,
    ['--import', 'tsx', new URL('./http-upstream.ts', import.meta.url).pathname],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  // Killed on any exit (an output pipe closed early included), not only after a clean run.
  process.on('exit', () => upstream.kill());
  const port = await new Promise<number>((resolve) =>
    upstream.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
  );
  return { port, stop: () => upstream.kill() };
}

export interface ReferenceHome {
  readonly ctx: Context;
  /** The request path through the gateway: connection `up`, a 4 KB JSON answer. */
  readonly path: string;
  /** The agent key and the ticket, as a client sends them. */
  readonly headers: Readonly<Record<string, string>>;
  /** Close the context and delete the home. */
  close(): Promise<void>;
}

/** A new home (SQLite store, log level warn) holding the reference case, for the upstream on `port`. */
export async function openReferenceHome(port: number, prefix = 'coatcheck-bench-'): Promise<ReferenceHome> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const home = resolveHome(join(dir, 'home'), {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, 'log:\n  level: warn\n');
  const ctx = await openContext(home, { env: {} });
  const close = async () => {
    await ctx.close();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
    await ctx.vault.addSecret(
      { name: 's0', value: Buffer.from('bench-secret-value-0-0123456789abcdef'), allow: ['up'] },
      'admin:bench',
    );
    const { ticket } = await ctx.vault.issueTicket(
      { secret: 's0', principal: agentRef(agent.id) },
      'admin:bench',
    );
    await ctx.connections.add({ name: 'up', type: 'http', url: `http://127.0.0.1:${port}` }, 'admin:bench');
    return {
      ctx,
      path: '/c/up/json4k',
      headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}

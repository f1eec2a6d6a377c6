/**
 * One gateway replica in its own process, for the rotation tests: opens the home, then
 * exchanges tickets (and runs the response inspector's known-secret read) in a loop, and
 * with ADD_PREFIX adds secrets too, until a line `stop` arrives on stdin. Prints one JSON
 * summary line: exchanges done, failures (codes and messages), secrets added, and how
 * many live secrets this replica can decrypt at the end. Never prints a value.
 */
import { createInterface } from 'node:readline';
import { resolveHome } from '../../src/config/home.js';
import { openContext } from '../../src/server/context.js';

const spec = JSON.parse(process.env.REPLICA_SPEC!) as {
  home: string;
  agentKey: string;
  tickets: string[];
  addPrefix?: string;
};
const ctx = await openContext(resolveHome(spec.home, {}), { env: process.env });
const principal = await ctx.agents.authenticate(spec.agentKey);
let stop = false;
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'stop') stop = true;
});
const failures: string[] = [];
const record = (error: unknown) => {
  const e = error as { code?: string; message?: string };
  if (failures.length < 20) failures.push(`${e.code ?? 'no code'}: ${e.message ?? String(error)}`);
  else failures.push(e.code ?? 'no code');
};
let exchanges = 0;
const added: string[] = [];
process.stdout.write('ready\n');

async function serve(): Promise<void> {
  let i = 0;
  while (!stop) {
    const ticket = spec.tickets[i++ % spec.tickets.length]!;
    try {
      const ex = await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } });
      if (!ex.value.revealText().startsWith('value-')) failures.push('wrong value');
      exchanges++;
      // Progress for the test: one dot per exchange, so it can wait for activity around the rotation.
      process.stdout.write('.');
      if (i % 10 === 0) await ctx.vault.knownSecrets();
    } catch (error) {
      record(error);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
}

async function add(prefix: string): Promise<void> {
  let i = 0;
  while (!stop) {
    const name = `${prefix}${i++}`;
    try {
      await ctx.vault.addSecret({ name, value: Buffer.from(`value-${name}`), allow: ['svc'] }, 'admin:test');
      added.push(name);
    } catch (error) {
      record(error);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}

await Promise.all([serve(), spec.addPrefix === undefined ? Promise.resolve() : add(spec.addPrefix)]);
// Every live secret must open here. The known-secrets list is cached until a change
// notice (SQLite: a poll of data_version) arrives, so wait for it to cover the store.
let readable = -1;
for (let tries = 0; tries < 50; tries++) {
  try {
    readable = (await ctx.vault.knownSecrets()).length;
  } catch (error) {
    record(error);
    break;
  }
  if (readable === (await ctx.store.listSecrets()).length) break;
  await new Promise((r) => setTimeout(r, 100));
}
process.stdout.write(`\n${JSON.stringify({ exchanges, failures, added, readable })}\n`);
await ctx.close();
process.exit(0);

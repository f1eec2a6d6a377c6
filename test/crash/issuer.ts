// Child process for the crash test: issues tickets as fast as it can, 16 in flight,
// printing "ack <ticket id>" for each one whose audit record is acknowledged durable.
import { resolveHome } from '../../src/config/home.js';
import { agentRef } from '../../src/core/principal.js';
import { openContext } from '../../src/server/context.js';

const ctx = await openContext(resolveHome(process.argv[2]!, {}), { env: {} });
const agent = await ctx.agents.get('crash-agent');
const principal = agentRef(agent.id);
process.stdout.write('ready\n');
const worker = async () => {
  for (;;) {
    const issued = await ctx.vault.issueTicket(
      { secret: 'crash-secret', principal, maxUses: 3 },
      'admin:crash',
    );
    process.stdout.write(`ack ${issued.view.id}\n`);
  }
};
await Promise.all(Array.from({ length: 16 }, worker));

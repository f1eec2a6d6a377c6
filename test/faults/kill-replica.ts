// Child process for the SIGKILL suite (test/faults/sigkill-replicas.test.ts): one replica on
// the PostgreSQL store its environment names. Exchanges a ticket with 12 in flight, printing
// "ack <seq>" for each release whose audit record is acknowledged durable, and issues a
// ticket now and then (a main-chain write under the global lock), printing "issue <id>".
import { resolveHome } from '../../src/config/home.js';
import { openContext } from '../../src/server/context.js';

const ctx = await openContext(resolveHome(process.argv[2]!, process.env), { env: process.env });
const principal = await ctx.agents.authenticate(process.env.KILL_AGENT_KEY!);
const ticket = process.env.KILL_TICKET!;
process.stdout.write('ready\n');
const exchanger = async () => {
  for (;;) {
    const ex = await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } });
    process.stdout.write(`ack ${ex.auditSeq}\n`);
  }
};
const issuer = async () => {
  for (;;) {
    const issued = await ctx.vault.issueTicket(
      { secret: 'kill-secret', principal: principal.ref },
      'admin:kill',
    );
    process.stdout.write(`issue ${issued.view.id}\n`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};
await Promise.all([...Array.from({ length: 12 }, exchanger), issuer()]);

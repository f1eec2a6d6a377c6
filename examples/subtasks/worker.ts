/**
 * One subtask, run as its own process. It knows only what `workflow spawn` handed it in
 * its environment: its subtask key, its tickets (API_TOKEN here) and the gateway's URL.
 * It calls the API through the gateway with a ticket where the API token would go.
 */
import { createGatewayFetch } from '../../src/sdk/index.js'; // in an application: 'coatcheck/sdk'

const resource = process.argv[2] ?? 'users';
const gatewayFetch = createGatewayFetch({ connection: 'api' });

async function get(ticket: string | undefined): Promise<{ status: number; body: unknown }> {
  const response = await gatewayFetch(`/${resource}`, { headers: { authorization: `Bearer ${ticket}` } });
  return { status: response.status, body: await response.json() };
}

const own = await get(process.env.API_TOKEN);
const out: Record<string, unknown> = {
  subtask: process.env.COATCHECK_SUBTASK,
  resource,
  status: own.status,
  count: Array.isArray((own.body as { items?: unknown[] }).items)
    ? (own.body as { items: unknown[] }).items.length
    : null,
};
// The example's third subtask was also handed another subtask's ticket: the gateway refuses it.
if (process.env.OTHER_SUBTASK_TICKET !== undefined) {
  const stolen = await get(process.env.OTHER_SUBTASK_TICKET);
  out.otherTicket = {
    status: stolen.status,
    code: (stolen.body as { error?: { code?: string } }).error?.code,
  };
}
process.stdout.write(`${JSON.stringify(out)}\n`);

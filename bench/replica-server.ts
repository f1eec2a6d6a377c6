// One gateway replica for bench/replicas.ts, in its own process: opens the home given as
// argv[2] (its store follows COATCHECK_DATABASE_URL, its key COATCHECK_MASTER_KEY), starts
// the HTTP front-end on a free port and prints the port. Warn-level logs only.
import pino from 'pino';
import { resolveHome } from '../src/config/home.js';
import { openContext } from '../src/server/context.js';
import { startHttpFrontend } from '../src/server/frontends.js';

const dir = process.argv[2];
if (dir === undefined) throw new Error('usage: replica-server.ts HOME');
const home = resolveHome(dir, process.env);
const ctx = await openContext(home, { env: process.env });
const http = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'warn' }));
process.stdout.write(`${new URL(http.url).port}\n`);
process.on('SIGTERM', () => {
  void http
    .close()
    .then(() => ctx.close())
    .finally(() => process.exit(0));
});

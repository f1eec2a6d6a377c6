// The container's health check: exit 0 when this container's gateway answers GET /readyz
// with 200 (store, audit and policy loaded, not draining), 1 otherwise.
//
// The admin address comes from the running server's server.json in COATCHECK_HOME (it
// records the address it bound), else from COATCHECK_LISTEN_ADMIN, else 127.0.0.1:7070. A
// wildcard address (0.0.0.0, [::]) is probed on loopback. The request names Host:
// localhost, which the admin listener accepts unless admin.allowedHosts leaves it out.
// `healthcheck --live` probes /healthz (the process answers) instead.
import { readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';

const home = process.env.COATCHECK_HOME || '/var/lib/coatcheck';
const path = process.argv.includes('--live') ? '/healthz' : '/readyz';

function adminAddress() {
  try {
    const info = JSON.parse(readFileSync(join(home, 'server.json'), 'utf8'));
    if (typeof info.admin === 'string') {
      const url = new URL(info.admin);
      return { host: url.hostname, port: Number(url.port) };
    }
  } catch {
    // not started yet, or not readable: fall back to the configured address
  }
  const text = process.env.COATCHECK_LISTEN_ADMIN || '127.0.0.1:7070';
  const colon = text.lastIndexOf(':');
  return { host: text.slice(0, colon), port: Number(text.slice(colon + 1)) };
}

const { host, port } = adminAddress();
const bare = host.replace(/^\[|\]$/g, '');
const target = bare === '0.0.0.0' ? '127.0.0.1' : bare === '::' ? '::1' : bare;
const req = request(
  { host: target, port, path, method: 'GET', headers: { host: 'localhost' }, timeout: 3000 },
  (res) => {
    res.resume();
    process.exitCode = res.statusCode === 200 ? 0 : 1;
  },
);
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', () => {
  process.exitCode = 1;
});
req.end();

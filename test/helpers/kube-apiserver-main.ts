import { startKubeApiServer } from './kube-apiserver.js';

/**
 * The test Kubernetes API server (kube-apiserver.ts) as a process of its own, for tests that
 * run it where this process cannot reach, e.g. in a network namespace behind a relay:
 *
 *   node --import tsx test/helpers/kube-apiserver-main.ts DIR HOST PORT
 *
 * The cluster token comes from KUBE_TOKEN; one pod, default/web-1, has the environment
 * variable DB_PASSWORD set to POD_SECRET. Prints one JSON line (url, CA) when listening and
 * serves until killed. The JSON names the client certificate and key it accepts (PEM). Each exec's command is logged on stderr as `exec <words>`.
 */
const [dir, host, port] = process.argv.slice(2);
const api = await startKubeApiServer({
  dir: dir!,
  token: process.env.KUBE_TOKEN ?? '',
  host: host!,
  port: Number(port),
});
api.put('pods', {
  metadata: { name: 'web-1', namespace: 'default' },
  spec: { containers: [{ name: 'app', image: 'app:1' }], env: { DB_PASSWORD: process.env.POD_SECRET ?? '' } },
});
let seen = 0;
setInterval(() => {
  for (; seen < api.execs.length; seen++)
    process.stderr.write(`exec ${api.execs[seen]!.command.join(' ')}\n`);
}, 50).unref();
process.stdout.write(
  `${JSON.stringify({ url: api.url, caPem: api.caPem, clientCredential: api.clientCredential })}\n`,
);
process.on('SIGTERM', () => {
  void api.close().then(() => process.exit(0));
});

// The quick start's sample HTTP target: answers every request with what it received
// (method, path, headers) as JSON. Through the gateway it shows the real credential
// arriving upstream, and the agent getting back a ticket in its place (the gateway turns
// secrets in responses into tickets). Plain Node, no dependencies.
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 8080);
const server = createServer((req, res) => {
  const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});
server.listen(port, '0.0.0.0', () =>
  console.log(JSON.stringify({ msg: 'echo listening', port: server.address().port })),
);
process.on('SIGTERM', () => process.exit(0));

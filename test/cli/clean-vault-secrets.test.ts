import { readdirSync, readFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../src/admin/admin-server.js';
import { createLogger } from '../../src/core/logger.js';
import type { Context } from '../../src/server/context.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

// A vault secret that no detector rule recognises: only the known-secret matcher finds it.
const CANARY = ['plain', 'Canary', '7Qx2', 'Lm9Vt4'].join('-');
// A secret format a rule does recognise, built at run time.
const AWS_KEY = ['AKIA', 'Q3EGRTZ7', 'MNPWX4LD'].join('');
const TICKET = /cct_[0-9A-Za-z]{28}/g;

/** Every place a canary could leak: stdout, stderr, the server's log, the home's files. */
function expectNoCanary(t: TestHome, outputs: readonly string[]) {
  for (const output of outputs) expect(output).not.toContain(CANARY);
  for (const file of readdirSync(t.home.dir)) {
    expect(readFileSync(join(t.home.dir, file)).includes(Buffer.from(CANARY)), file).toBe(false);
  }
}

describe('scrub and tokenize clean vault secrets that no rule matches (issue 19, item 3)', () => {
  let t: TestHome;
  let env: NodeJS.ProcessEnv;
  beforeEach(async () => {
    t = await makeTestHome();
    env = { COATCHECK_HOME: t.home.dir };
    expect((await cli(['agent', 'create', 'writer'], { env })).code).toBe(0);
    const added = await cli(['secret', 'add', 'db', '--allow', 'pg.internal'], { env, stdin: CANARY });
    expect(added.code, added.stderr).toBe(0);
    // The canary is invisible to the rules alone.
    const scan = await cli(['scan', '-', '--format', 'json'], { env: {}, stdin: `pw ${CANARY}\n` });
    expect(scan.code).toBe(0);
  });
  afterEach(() => t.remove());

  const input = `line one: the password is ${CANARY} ok\nkey=${AWS_KEY}\nlast ${CANARY}`;

  async function runAll(runEnv: NodeJS.ProcessEnv): Promise<string[]> {
    const outputs: string[] = [];
    const scrub = await cli(['scrub'], { env: runEnv, stdin: input });
    outputs.push(scrub.stdout, scrub.stderr);
    expect(scrub.code, scrub.stderr).toBe(0);
    expect(scrub.stdout).toBe(
      'line one: the password is [REDACTED:known-secret] ok\nkey=[REDACTED:aws-access-key]\nlast [REDACTED:known-secret]',
    );

    const scrubTok = await cli(['scrub', '--tokenize', '--to', 'writer'], { env: runEnv, stdin: input });
    outputs.push(scrubTok.stdout, scrubTok.stderr);
    expect(scrubTok.code, scrubTok.stderr).toBe(0);
    expect(scrubTok.stdout.match(TICKET)).toHaveLength(3);
    expect(scrubTok.stdout).not.toContain(AWS_KEY);

    const tok = await cli(['tokenize', '--to', 'writer'], { env: runEnv, stdin: input });
    outputs.push(tok.stdout, tok.stderr);
    expect(tok.code, tok.stderr).toBe(0);
    const tickets = tok.stdout.match(TICKET)!;
    expect(tickets).toHaveLength(3);
    expect(tok.stdout).toMatch(/^line one: the password is cct_\w{28} ok\nkey=cct_\w{28}\nlast cct_\w{28}$/);
    // The ticket for the canary is a ticket for the vault secret, bound to the agent.
    const inspected = JSON.parse(
      (await cli(['token', 'inspect', tickets[0]!, '--json'], { env: runEnv })).stdout,
    );
    expect(inspected).toMatchObject({ status: 'active', secret: 'db' });

    // A big input (several calls to the cleaner) is still fully cleaned.
    const big = `${'x'.repeat(100)}\n`.repeat(5000) + `tail ${CANARY}\n`;
    const bigScrub = await cli(['scrub'], { env: runEnv, stdin: big });
    outputs.push(bigScrub.stdout, bigScrub.stderr);
    expect(bigScrub.code, bigScrub.stderr).toBe(0);
    expect(bigScrub.stdout.endsWith('tail [REDACTED:known-secret]\n')).toBe(true);
    expect(bigScrub.stdout.length).toBe(big.length - CANARY.length + '[REDACTED:known-secret]'.length);

    // An unknown agent fails closed: nothing written to stdout.
    const refused = await cli(['tokenize', '--to', 'nobody'], { env: runEnv, stdin: input });
    outputs.push(refused.stdout, refused.stderr);
    expect(refused.code).not.toBe(0);
    expect(refused.stdout).toBe('');
    return outputs;
  }

  it('directly on the store (no server)', async () => {
    const outputs = await runAll(env);
    expectNoCanary(t, outputs);
  });

  describe('through a running server', () => {
    let ctx: Context;
    let admin: AdminServer;
    let log = '';
    beforeEach(async () => {
      ctx = await t.open();
      const sink = new Writable({
        write(chunk: Buffer, _e, cb) {
          log += chunk.toString();
          cb();
        },
      });
      admin = await startAdminServer(
        ctx,
        { host: '127.0.0.1', port: 0 },
        createLogger({ level: 'debug', destination: sink }),
      );
    });
    afterEach(async () => {
      await admin.close();
      await ctx.close();
    });

    it('sends the text to the textClean operation and gets the cleaned text, never a value', async () => {
      // Record what the server answers to the CLI (a recording proxy in front of the admin
      // API): no secret value may travel back.
      const answers: string[] = [];
      const recorder = createServer((req, res) => {
        const upstream = httpRequest(
          new URL(req.url ?? '/', admin.url),
          { method: req.method, headers: req.headers },
          (answer) => {
            const chunks: Buffer[] = [];
            answer.on('data', (chunk: Buffer) => chunks.push(chunk));
            answer.on('end', () => {
              const body = Buffer.concat(chunks);
              answers.push(`${req.url} ${body.toString('utf8')}`);
              res.writeHead(answer.statusCode ?? 502, answer.headers);
              res.end(body);
            });
          },
        );
        req.pipe(upstream);
      });
      await new Promise<void>((resolve) => recorder.listen(0, '127.0.0.1', resolve));
      const { port } = recorder.address() as AddressInfo;
      let outputs: string[];
      try {
        outputs = await runAll({ ...env, COATCHECK_ADMIN_URL: `http://127.0.0.1:${port}` });
      } finally {
        await new Promise((resolve) => recorder.close(resolve));
      }
      expect(answers.some((a) => a.includes('/v1/text/clean'))).toBe(true);
      expect(answers.some((a) => a.includes('/v1/secrets/tokenize'))).toBe(false);
      expectNoCanary(t, [...outputs, ...answers, log]);
    });
  });
});

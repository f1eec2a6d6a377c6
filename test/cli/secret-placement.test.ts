import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../../src/cli/program.js';

const CANARY = 'cli-placement-canary-3c4d5e6f';

function memoryIo(stdin = '') {
  let out = '';
  let err = '';
  const sink = (append: (s: string) => void) =>
    new Writable({
      write(chunk: Buffer, _e, cb) {
        append(chunk.toString());
        cb();
      },
    });
  const input = new PassThrough();
  input.end(stdin);
  return {
    io: {
      stdin: input,
      stdout: sink((s) => {
        out += s;
      }),
      stderr: sink((s) => {
        err += s;
      }),
      env: {},
    },
    out: () => out,
    err: () => err,
  };
}

describe('coatcheck secret add/update/list: destinations with scheme, placements', () => {
  let dir: string;
  const cli = async (args: string[], stdin = '') => {
    const m = memoryIo(stdin);
    const code = await runCli(['--dir', dir, ...args], m.io);
    return { code, out: m.out(), err: m.err() };
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-cli-placement-'));
    expect((await cli(['init'])).code).toBe(0);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('adds with credential only by default, and with declared placements and --allow-sql', async () => {
    const plain = await cli(
      ['--json', 'secret', 'add', 'a', '--allow', 'https://api.example.com:8443'],
      CANARY,
    );
    expect(plain.code).toBe(0);
    expect(JSON.parse(plain.out)).toMatchObject({
      allow: ['host:api.example.com:8443'],
      placements: ['credential'],
    });
    const wide = await cli(
      [
        '--json',
        'secret',
        'add',
        'b',
        '--allow',
        'pg',
        '--allow-placement',
        'query,body',
        '--allow-sql',
        'pg',
      ],
      CANARY,
    );
    expect(wide.code).toBe(0);
    expect(JSON.parse(wide.out)).toMatchObject({ placements: ['credential', 'query', 'body', 'sql:pg'] });
    const list = await cli(['secret', 'list']);
    expect(list.out).toMatch(/PLACEMENTS/);
    expect(list.out).toContain('credential,query,body,sql:pg');
    expect(list.out).not.toContain(CANARY);
  });

  it('refuses http:// to a non-loopback host unless --allow-plaintext, and unknown placements', async () => {
    const refused = await cli(['--json', 'secret', 'add', 'c', '--allow', 'http://api.example.com'], CANARY);
    expect(refused.code).not.toBe(0);
    expect(refused.err + refused.out).toContain('CC_ERR_DEST_PLAINTEXT');
    const ok = await cli(
      ['--json', 'secret', 'add', 'c', '--allow', 'http://api.example.com', '--allow-plaintext'],
      CANARY,
    );
    expect(JSON.parse(ok.out)).toMatchObject({ allow: ['host:http://api.example.com'] });
    const local = await cli(['--json', 'secret', 'add', 'd', '--allow', 'http://localhost:8080'], CANARY);
    expect(JSON.parse(local.out)).toMatchObject({ allow: ['host:http://localhost:8080'] });
    const bad = await cli(
      ['--json', 'secret', 'add', 'e', '--allow', 'x.example.com', '--allow-placement', 'cookie'],
      CANARY,
    );
    expect(bad.err + bad.out).toContain('CC_ERR_PLACEMENT_INVALID');
  });

  it('updates placements and destinations without touching the value', async () => {
    const up = await cli(['--json', 'secret', 'update', 'a', '--allow-placement', 'header']);
    expect(up.code).toBe(0);
    expect(JSON.parse(up.out)).toMatchObject({
      allow: ['host:api.example.com:8443'],
      placements: ['credential', 'header'],
    });
    const dests = await cli(['--json', 'secret', 'update', 'a', '--allow', 'api.example.com']);
    expect(JSON.parse(dests.out)).toMatchObject({
      allow: ['host:api.example.com'],
      placements: ['credential', 'header'],
    });
    const back = await cli(['secret', 'update', 'a', '--allow-placement', 'credential']);
    expect(back.out).toContain('placements: credential\n');
    const missing = await cli(['--json', 'secret', 'update', 'nope', '--allow-placement', 'body']);
    expect(missing.err + missing.out).toContain('CC_ERR_NOT_FOUND');
  });
});

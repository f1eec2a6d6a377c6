import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { spawn } from 'node:child_process';
import { PassThrough, Readable } from 'node:stream';
import { runCli } from '../../src/cli/program.js';

export interface CliResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Run the CLI in process with in-memory streams. */
export async function cli(
  argv: string[],
  options: { env?: NodeJS.ProcessEnv; stdin?: string | Buffer } = {},
): Promise<CliResult> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  stdout.on('data', (c: Buffer) => out.push(c));
  stderr.on('data', (c: Buffer) => err.push(c));
  const stdin = Readable.from(options.stdin === undefined ? [] : [Buffer.from(options.stdin)]);
  const code = await runCli(argv, { stdin, stdout, stderr, env: options.env ?? {} });
  return { code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}

export const CLI_ENTRY = new URL('../../src/cli/main.ts', import.meta.url).pathname;

/** Run the real CLI as a child process (TypeScript through tsx). */
export function spawnCli(argv: string[], env: NodeJS.ProcessEnv) {
  return spawn(process.execPath, ['--import', 'tsx', CLI_ENTRY, ...argv], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

/** Resolve with the first match of `pattern` in the child's stdout; reject if it exits first. */
export function waitForLine(
  child: ChildProcessWithoutNullStreams,
  pattern: RegExp,
): Promise<RegExpMatchArray> {
  return new Promise((resolve, reject) => {
    let buffer = '';
    const onData = (chunk: Buffer) => {
      buffer += chunk.toString('utf8');
      const match = buffer.match(pattern);
      if (match) {
        child.stdout.off('data', onData);
        resolve(match);
      }
    };
    child.stdout.on('data', onData);
    child.once('exit', (code) => reject(new Error(`serve exited with ${code} before printing ${pattern}`)));
  });
}

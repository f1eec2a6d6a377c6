/**
 * MCP servers launched over stdio are stored as a `stdio:` URL, so they fit the same
 * connection record as every other target (no schema change):
 *
 *   --command 'node /srv/mcp/server.js --read-only'
 *   → stdio:node?arg=%2Fsrv%2Fmcp%2Fserver.js&arg=--read-only
 *
 * The command is split like a POSIX shell splits words (single quotes, double quotes,
 * backslash escapes) but nothing is expanded: no variables, globs, pipes or
 * redirections. The program is started directly (no shell).
 */
import { CoatcheckError } from '../../core/errors.js';

export interface StdioCommand {
  readonly command: string;
  readonly args: readonly string[];
}

const MAX_COMMAND_LENGTH = 4096;
const MAX_ARGS = 256;

function badCommand(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_MCP_BAD_COMMAND', `--command ${message}`, {
    details: { field: '--command' },
  });
}

/** Split `CMD ARGS` into words (quotes and backslashes as in sh; no expansion). */
export function splitCommand(line: string): string[] {
  if (line.length > MAX_COMMAND_LENGTH) throw badCommand(`is longer than ${MAX_COMMAND_LENGTH} characters`);
  if (/[\0\r\n]/.test(line)) throw badCommand('contains a line break or NUL');
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let i = 0;
  while (i < line.length) {
    const c = line[i]!;
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end === -1) throw badCommand('has an unterminated single quote');
      word += line.slice(i + 1, end);
      inWord = true;
      i = end + 1;
    } else if (c === '"') {
      i++;
      for (;;) {
        if (i >= line.length) throw badCommand('has an unterminated double quote');
        const d = line[i]!;
        if (d === '"') break;
        if (d === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1]!)) {
          word += line[i + 1];
          i += 2;
          continue;
        }
        word += d;
        i++;
      }
      inWord = true;
      i++;
    } else if (c === '\\') {
      if (i + 1 >= line.length) throw badCommand('ends with a backslash');
      word += line[i + 1];
      inWord = true;
      i += 2;
    } else if (c === ' ' || c === '\t') {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
      i++;
    } else {
      word += c;
      inWord = true;
      i++;
    }
  }
  if (inWord) words.push(word);
  if (words.length === 0 || words[0] === '') throw badCommand('is empty');
  if (words.length > MAX_ARGS + 1) throw badCommand(`has more than ${MAX_ARGS} arguments`);
  return words;
}

/** The connection URL for a stdio command. */
export function stdioUrl(line: string): string {
  const [command, ...args] = splitCommand(line);
  const query = new URLSearchParams(args.map((a) => ['arg', a] as [string, string])).toString();
  return `stdio:${encodeURIComponent(command!)}${query === '' ? '' : `?${query}`}`;
}

/** The command and arguments a `stdio:` URL names. */
export function parseStdioUrl(url: URL): StdioCommand {
  if (url.protocol !== 'stdio:') throw badCommand('is not a stdio: URL');
  const command = decodeURIComponent(url.pathname);
  if (command === '') throw badCommand('is empty');
  return { command, args: url.searchParams.getAll('arg') };
}

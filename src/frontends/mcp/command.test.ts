import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseStdioUrl, splitCommand, stdioUrl } from './command.js';

describe('splitCommand', () => {
  it('splits words like sh, without expanding anything', () => {
    expect(splitCommand(`node  /srv/a\\ b.js --flag "two words" 'it''s' "q\\"x" $HOME *.js`)).toEqual([
      'node',
      '/srv/a b.js',
      '--flag',
      'two words',
      'its',
      'q"x',
      '$HOME',
      '*.js',
    ]);
    expect(splitCommand(`python3 -c ''`)).toEqual(['python3', '-c', '']);
  });

  it('refuses empty commands, unterminated quotes and line breaks with CC_ERR_MCP_BAD_COMMAND', () => {
    for (const [line, message] of [
      ['   ', '--command is empty'],
      [`node 'x`, '--command has an unterminated single quote'],
      [`node "x`, '--command has an unterminated double quote'],
      ['node x\\', '--command ends with a backslash'],
      ['node\nrm', '--command contains a line break or NUL'],
    ] as const) {
      expect(() => splitCommand(line)).toThrow(
        expect.objectContaining({ code: 'CC_ERR_MCP_BAD_COMMAND', message }),
      );
    }
  });

  it('round-trips any argument list through a stdio: URL', () => {
    const word = fc.string({ minLength: 1, maxLength: 20 }).filter((w) => !/[\0\r\n]/.test(w));
    fc.assert(
      fc.property(
        word,
        fc.array(
          fc.string({ maxLength: 20 }).filter((w) => !/[\0\r\n]/.test(w)),
          { maxLength: 6 },
        ),
        (command, args) => {
          const quote = (w: string) => `'${w.replace(/'/g, `'\\''`)}'`;
          const url = stdioUrl([command, ...args].map(quote).join(' '));
          expect(parseStdioUrl(new URL(url))).toEqual({ command, args });
        },
      ),
    );
  });
});

import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

export type LineScrubber = (line: string) => string;

/**
 * The gateway logger: pino JSON lines, each passed through `scrub` before it reaches
 * the output, so a secret that slipped into a log call is masked at the last step.
 */
export function createLogger(options: {
  level: string;
  scrub?: LineScrubber;
  /**
   * The scrubber, made on the first line logged (its detector is costly to load: a CLI
   * command that logs nothing never pays). Lines wait for it, in order; none is written
   * unscrubbed. If it cannot be made, each line is replaced by a notice that it was withheld.
   */
  loadScrub?: () => Promise<LineScrubber>;
  destination?: NodeJS.WritableStream;
}): Logger {
  const out = options.destination ?? process.stderr;
  let scrub: LineScrubber | null = options.scrub ?? (options.loadScrub === undefined ? (line) => line : null);
  let loading: Promise<LineScrubber> | null = null;
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      const line = chunk.toString('utf8');
      if (scrub !== null) {
        out.write(scrub(line));
        callback();
        return;
      }
      // The stream queues later lines until this callback: order is kept.
      loading ??= options.loadScrub!();
      loading.then(
        (made) => {
          scrub = made;
          out.write(made(line));
          callback();
        },
        () => {
          out.write(
            `${JSON.stringify({ level: 50, msg: 'log line withheld: the log scrubber could not be loaded' })}\n`,
          );
          callback();
        },
      );
    },
  });
  return pino(
    { level: options.level, base: { service: 'coatcheck' }, timestamp: pino.stdTimeFunctions.isoTime },
    stream,
  );
}

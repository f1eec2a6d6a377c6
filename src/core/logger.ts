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
  destination?: NodeJS.WritableStream;
}): Logger {
  const out = options.destination ?? process.stderr;
  const scrub = options.scrub ?? ((line: string) => line);
  const stream = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      out.write(scrub(chunk.toString('utf8')));
      callback();
    },
  });
  return pino(
    { level: options.level, base: { service: 'coatcheck' }, timestamp: pino.stdTimeFunctions.isoTime },
    stream,
  );
}

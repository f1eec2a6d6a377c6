import { createRequire } from 'node:module';
import { Writable } from 'node:stream';
import type { Logger } from 'pino';

type Pino = typeof import('pino');
const requirePino = (): Pino => createRequire(import.meta.url)('pino') as Pino;

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
  // pino (and its dependencies) load on the first use of the logger, synchronously: a CLI
  // command that logs nothing does not load them. Every property read goes to the real
  // logger, made once.
  let real: Logger | null = null;
  const make = (): Logger => {
    if (real === null) {
      const pino = requirePino();
      real = pino(
        { level: options.level, base: { service: 'coatcheck' }, timestamp: pino.stdTimeFunctions.isoTime },
        stream,
      );
    }
    return real;
  };
  return new Proxy({} as Logger, {
    get(_target, property) {
      const logger = make();
      const value = Reflect.get(logger, property, logger) as unknown;
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(logger) : value;
    },
    set(_target, property, value) {
      return Reflect.set(make(), property, value);
    },
    has(_target, property) {
      return Reflect.has(make(), property);
    },
  });
}

import { inspect } from 'node:util';

const REDACTED = '[secret]';

/**
 * A released secret value. It redacts itself in every implicit conversion (string
 * templates, JSON, util.inspect, console.log), so a value can only leave through an
 * explicit `reveal()` at the point of injection.
 */
export class SecretValue {
  readonly #value: Buffer;

  constructor(value: Buffer) {
    this.#value = value;
  }

  /** The raw bytes. Call only where the secret is injected on the data path. */
  reveal(): Buffer {
    return this.#value;
  }

  revealText(): string {
    return this.#value.toString('utf8');
  }

  get length(): number {
    return this.#value.length;
  }

  toString(): string {
    return REDACTED;
  }

  toJSON(): string {
    return REDACTED;
  }

  [inspect.custom](): string {
    return REDACTED;
  }
}

import { protocolError } from './framer.js';

/**
 * Bounds-checked reads over one message body. Every read checks what is left; a short
 * body or a missing NUL terminator is a protocol error, never an out-of-range read.
 */
export class BodyReader {
  readonly #body: Buffer;
  readonly #what: string;
  #at = 0;

  constructor(body: Buffer, what: string) {
    this.#body = body;
    this.#what = what;
  }

  get remaining(): number {
    return this.#body.length - this.#at;
  }

  #need(n: number): void {
    if (n < 0 || this.remaining < n) throw protocolError(`${this.#what} is truncated`, { type: this.#what });
  }

  int32(): number {
    this.#need(4);
    const v = this.#body.readInt32BE(this.#at);
    this.#at += 4;
    return v;
  }

  int16(): number {
    this.#need(2);
    const v = this.#body.readInt16BE(this.#at);
    this.#at += 2;
    return v;
  }

  byte(): number {
    this.#need(1);
    return this.#body[this.#at++]!;
  }

  /** A count (int16) of following items, each at least `minItemBytes` long: bounded by what is left. */
  count16(minItemBytes: number): number {
    const n = this.int16();
    if (n < 0 || n * minItemBytes > this.remaining) {
      throw protocolError(`${this.#what} declares ${n} items that cannot fit`, { type: this.#what });
    }
    return n;
  }

  cstring(): string {
    const end = this.#body.indexOf(0, this.#at);
    if (end < 0) throw protocolError(`${this.#what} has an unterminated string`, { type: this.#what });
    const s = this.#body.toString('utf8', this.#at, end);
    this.#at = end + 1;
    return s;
  }

  bytes(n: number): Buffer {
    this.#need(n);
    const b = this.#body.subarray(this.#at, this.#at + n);
    this.#at += n;
    return b;
  }

  rest(): Buffer {
    const b = this.#body.subarray(this.#at);
    this.#at = this.#body.length;
    return b;
  }

  end(): void {
    if (this.remaining !== 0) {
      throw protocolError(`${this.#what} has ${this.remaining} unexpected trailing bytes`, {
        type: this.#what,
      });
    }
  }
}

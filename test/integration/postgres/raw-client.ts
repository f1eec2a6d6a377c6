import { connect, type Socket } from 'node:net';
import { decodeBackend } from '../../../src/frontends/postgres/protocol/decode.js';
import { encodeFrontend, encodeStartup } from '../../../src/frontends/postgres/protocol/encode.js';
import { MessageFramer } from '../../../src/frontends/postgres/protocol/framer.js';
import type { BackendMessage, Frame } from '../../../src/frontends/postgres/protocol/messages.js';

/** A minimal protocol-level client for hostile-input and streaming tests (built on the codec). */
export class RawClient {
  readonly socket: Socket;
  readonly framer = new MessageFramer({ startup: false, maxMessageBytes: 1024 * 1024 * 1024 });
  closed = false;
  #wake: (() => void) | null = null;
  /** Raw bytes received (before framing), for tests that send garbage. */
  received: Buffer[] = [];

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.received.push(chunk);
      this.framer.push(chunk);
      this.#notify();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#notify();
    });
    socket.on('error', () => undefined);
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  static async open(port: number, host = '127.0.0.1'): Promise<RawClient> {
    const socket = connect({ port, host });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  /** Next frame, or null once the connection is closed and nothing is left. */
  async frame(): Promise<Frame | null> {
    for (;;) {
      const f = this.framer.next();
      if (f !== null) return f;
      if (this.closed) return null;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }

  async message(): Promise<BackendMessage | null> {
    const f = await this.frame();
    return f === null ? null : decodeBackend(f);
  }

  /** Read messages until ReadyForQuery (included) or close. */
  async untilReady(): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    for (;;) {
      const m = await this.message();
      if (m === null) return out;
      out.push(m);
      if (m.type === 'ReadyForQuery') return out;
    }
  }

  /** Wait for the server to close the connection; returns the messages received before it. */
  async untilClosed(): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    for (;;) {
      const m = await this.message();
      if (m === null) return out;
      out.push(m);
    }
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Startup + cleartext password; resolves after the first ReadyForQuery. */
  async login(user: string, password: string, database: string): Promise<BackendMessage[]> {
    this.write(
      encodeStartup({
        type: 'StartupMessage',
        major: 3,
        minor: 0,
        parameters: [
          ['user', user],
          ['database', database],
        ],
      }),
    );
    const auth = await this.message();
    if (auth?.type !== 'Authentication') return auth === null ? [] : [auth];
    this.write(encodeFrontend({ type: 'PasswordMessage', data: Buffer.from(`${password}\0`) }));
    return this.untilReady();
  }

  query(sql: string): void {
    this.write(encodeFrontend({ type: 'Query', sql }));
  }

  close(): void {
    this.socket.destroy();
  }
}

export function errorCode(messages: readonly BackendMessage[]): string | null {
  for (const m of messages) {
    if (m.type === 'ErrorResponse') return m.fields.find(([k]) => k === 'C')?.[1] ?? null;
  }
  return null;
}

export function errorField(messages: readonly BackendMessage[], field: string): string | null {
  for (const m of messages) {
    if (m.type === 'ErrorResponse') return m.fields.find(([k]) => k === field)?.[1] ?? null;
  }
  return null;
}

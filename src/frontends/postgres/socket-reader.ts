import type { Socket } from 'node:net';
import { CoatcheckError } from '../../core/errors.js';
import type { MessageFramer } from './protocol/framer.js';
import type { Frame } from './protocol/messages.js';

/** Awaitable frames from a socket, for the login phase (before the relay pumps take over). */
export class SocketReader {
  readonly framer: MessageFramer;
  #socket: Socket;
  #wake: (() => void) | null = null;
  #ended = false;

  constructor(socket: Socket, framer: MessageFramer) {
    this.#socket = socket;
    this.framer = framer;
    this.#attach();
  }

  #onData = (chunk: Buffer) => {
    this.framer.push(chunk);
    this.#notify();
  };
  #onEnd = () => {
    this.#ended = true;
    this.#notify();
  };

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  #attach(): void {
    this.#socket.on('data', this.#onData);
    this.#socket.on('end', this.#onEnd);
    this.#socket.on('close', this.#onEnd);
    this.#socket.on('error', this.#onEnd);
  }

  detach(): void {
    this.#socket.off('data', this.#onData);
    this.#socket.off('end', this.#onEnd);
    this.#socket.off('close', this.#onEnd);
    this.#socket.off('error', this.#onEnd);
  }

  /** Read from another socket from now on (after a TLS upgrade). */
  switchTo(socket: Socket): void {
    this.detach();
    this.#socket = socket;
    this.#ended = false;
    this.#attach();
  }

  async next(): Promise<Frame> {
    for (;;) {
      const frame = this.framer.next();
      if (frame !== null) return frame;
      if (this.#ended)
        throw new CoatcheckError('CC_ERR_PG_PROTOCOL', 'the client closed the connection during login');
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
  }
}

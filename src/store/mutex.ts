/** Serialises async critical sections (one SQLite connection must not interleave transactions). */
export class Mutex {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const result = this.#tail.then(fn, fn);
    // Keep the chain alive whatever `fn` does; callers see the real outcome via `result`.
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

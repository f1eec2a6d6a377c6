import { type FSWatcher, watch } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { CoatcheckError } from '../core/errors.js';
import { loadPolicies } from './load-policies.js';
import { PolicyEngine } from './policy-engine.js';

export type ReloadResult =
  | { readonly ok: true; readonly policies: number }
  | { readonly ok: false; readonly error: CoatcheckError };

/**
 * Holds the policy set in force. A reload that does not validate keeps the old set and
 * reports why; a good one replaces the engine (and with it the decision cache).
 */
export class PolicyHolder {
  readonly path: string | null;
  readonly #timeZone: string;
  #engine: PolicyEngine | null = null;
  #watcher: FSWatcher | null = null;
  #debounce: NodeJS.Timeout | null = null;

  constructor(path: string | null, options: { timeZone: string; baseDir: string }) {
    this.path = path === null ? null : isAbsolute(path) ? path : join(options.baseDir, path);
    this.#timeZone = options.timeZone;
  }

  #load(): PolicyEngine {
    return new PolicyEngine(this.path === null ? null : loadPolicies(this.path), {
      timeZone: this.#timeZone,
    });
  }

  /**
   * The engine, loaded (and validated) on first use: a command that decides nothing does not
   * load Cedar. `serve` loads it at start, so a policy that does not validate stops it there.
   */
  /** Whether a policy set is loaded (and validated): readiness requires it. */
  get loaded(): boolean {
    return this.#engine !== null;
  }

  get engine(): PolicyEngine {
    this.#engine ??= this.#load();
    return this.#engine;
  }

  /** Forget cached decisions (a change may alter their inputs); nothing to do if not loaded. */
  invalidate(): void {
    this.#engine?.invalidate();
  }

  reload(): ReloadResult {
    try {
      this.#engine = this.#load();
      return { ok: true, policies: this.#engine.policies.length };
    } catch (error) {
      const failure =
        error instanceof CoatcheckError
          ? error
          : new CoatcheckError('CC_ERR_POLICY_INVALID', 'the policy set could not be loaded', {
              cause: error,
            });
      return { ok: false, error: failure };
    }
  }

  /** Reload when the file or folder changes (debounced); `onReload` hears every outcome. */
  watch(onReload: (result: ReloadResult) => void): void {
    if (this.path === null || this.#watcher !== null) return;
    this.#watcher = watch(this.path, { persistent: false }, () => {
      if (this.#debounce !== null) clearTimeout(this.#debounce);
      this.#debounce = setTimeout(() => onReload(this.reload()), 100);
    });
  }

  close(): void {
    this.#watcher?.close();
    this.#watcher = null;
    if (this.#debounce !== null) clearTimeout(this.#debounce);
  }
}

import { join } from 'node:path';
import { writeMasterKeyFile } from '../config/home.js';
import { CoatcheckError } from '../core/errors.js';
import type { Context } from '../server/context.js';
import type { StoreTx } from '../store/types.js';
import { MasterKey } from '../vault/envelope.js';
import {
  dataKeyAad,
  type KeyringState,
  kidsInUse,
  readKeyringState,
  rewrapMeta,
  unwrapDataKey,
  writeKeyringState,
} from '../vault/keyring.js';

export type RotationPhase = 'added' | 'activated' | 'rewrapped' | 'retired';

export interface RotateResult {
  readonly previousKey: string;
  readonly newKey: string;
  /** The phase the rotation reached (`retired` when complete). */
  readonly phase: RotationPhase;
  /** Data keys rewrapped by this call (a resumed rotation counts only what it did). */
  readonly dataKeysRewrapped: number;
  /** Where the new key's file is: every replica must be able to read it. */
  readonly keyFile: string;
  /** True when this call continued a rotation an earlier call (or another replica) began. */
  readonly resumed: boolean;
}

export interface RotateOptions {
  /** Stop after this phase (`added`: the operator copies the key file to replicas that do not share the keys directory). */
  readonly until?: RotationPhase;
  /** Data keys rewrapped per transaction (short transactions keep exchanges flowing). */
  readonly batchSize?: number;
}

const DEFAULT_BATCH = 100;

function pending(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_KEYS_ROTATION_PENDING', message);
}

/**
 * Master-key rotation in phases, each a committed, audited step that is safe while other
 * replicas serve from the same store, and each resumable (run `keys rotate` again after a
 * crash: it continues from the state the store records):
 *
 *   1. added      the new key is written create-exclusive to the keys directory and
 *                 recorded as `next`; replicas reload their keyring (change notice).
 *                 New data is still sealed under the old key.
 *   2. activated  the new key becomes `active`: from this commit on every seal, on any
 *                 replica, uses it (the seal reads the active kid in its own transaction;
 *                 a replica without the key reloads once, then refuses by kid).
 *   3. rewrapped  every data key, the index key and the proxy CA key still under the old
 *                 key is rewrapped, in short transactions; both keys read meanwhile.
 *   4. retired    checked in one transaction that nothing depends on the old key; it is
 *                 marked retired. Its file is kept: backups from before still need it.
 *
 * Key files are never overwritten or deleted.
 */
export async function rotateMasterKey(
  ctx: Context,
  actor: string,
  options: RotateOptions = {},
): Promise<RotateResult> {
  const masters = ctx.keys.masters;
  let state = await readKeyringState(ctx.store);
  const resumed = state.next !== null || state.previous !== null;
  let newKid: string;
  let previousKid: string;
  let keyFile: string;

  if (!resumed) {
    const next = MasterKey.generate();
    // The file first: a crash after it leaves a key nothing depends on (harmless, kept).
    keyFile = writeMasterKeyFile(ctx.keysDir, next);
    masters.reload();
    previousKid = state.active;
    newKid = next.kid;
    await transition(ctx, actor, 'added', previousKid, newKid, (s) => {
      if (s.next !== null || s.previous !== null || s.active !== previousKid)
        throw pending('another rotation started meanwhile; run `keys rotate` again to resume it');
      return { ...s, next: newKid };
    });
    state = await readKeyringState(ctx.store);
  } else {
    newKid = state.next ?? state.active;
    previousKid = state.next !== null ? state.active : state.previous!;
    keyFile = join(ctx.keysDir, `${newKid}.key`);
    // The new key must be here before anything is sealed under it.
    masters.require(newKid, 'the rotation in progress');
  }
  const done = (phase: RotationPhase, count: number): RotateResult => ({
    previousKey: previousKid,
    newKey: newKid,
    phase,
    dataKeysRewrapped: count,
    keyFile,
    resumed,
  });
  if (options.until === 'added') return done('added', 0);

  if (state.next !== null) {
    masters.require(newKid, 'activating the new key');
    await transition(ctx, actor, 'activated', previousKid, newKid, (s) => {
      if (s.next !== newKid)
        throw pending('the rotation in progress changed meanwhile; run `keys rotate` again');
      return { active: newKid, next: null, previous: s.active, retired: s.retired };
    });
  }
  if (options.until === 'activated') return done('activated', 0);

  const count = await rewrapEverything(ctx, newKid, options.batchSize ?? DEFAULT_BATCH);
  if (options.until === 'rewrapped') return done('rewrapped', count);

  await transition(
    ctx,
    actor,
    'retired',
    previousKid,
    newKid,
    async (s, tx) => {
      if (s.active !== newKid || s.previous === null)
        throw pending('the rotation in progress changed meanwhile; run `keys rotate` again');
      const stillUsed = (await kidsInUse(tx)).filter((kid) => kid !== newKid);
      if (stillUsed.length > 0)
        throw pending(`data is still sealed under ${stillUsed.join(', ')}; run \`keys rotate\` again`);
      return {
        active: newKid,
        next: null,
        previous: null,
        retired: [...s.retired.filter((k) => k !== s.previous), s.previous],
      };
    },
    { dataKeysRewrapped: count },
  );
  return done('retired', count);
}

/** One audited keyring-state change, published so every replica reloads its keyring. */
async function transition(
  ctx: Context,
  actor: string,
  phase: RotationPhase,
  previousKey: string,
  newKey: string,
  change: (state: KeyringState, tx: StoreTx) => KeyringState | Promise<KeyringState>,
  extra: Record<string, unknown> = {},
): Promise<void> {
  await ctx.audit.append(
    { type: 'keys.rotate', actor, data: { phase, previousKey, newKey, ...extra } },
    async (tx) => {
      await writeKeyringState(tx, await change(await readKeyringState(tx), tx));
    },
  );
  await ctx.store.publish({ type: 'keys.rotated' });
}

/**
 * Rewrap every live data key not under `kid`, a batch per transaction, re-reading each row
 * inside its transaction (a concurrent erase or add is seen), then the index and CA keys.
 */
async function rewrapEverything(ctx: Context, kid: string, batchSize: number): Promise<number> {
  const masters = ctx.keys.masters;
  const target = masters.require(kid, 'rewrapping data keys');
  const todo = (await ctx.store.listSecrets())
    .filter((s) => s.wrappedKey !== null && s.keyId !== kid)
    .map((s) => s.id);
  let count = 0;
  for (let i = 0; i < todo.length; i += batchSize) {
    const batch = todo.slice(i, i + batchSize);
    count += await ctx.store.transaction(async (tx) => {
      const state = await readKeyringState(tx);
      if (state.active !== kid) throw pending('the active key changed meanwhile; run `keys rotate` again');
      let n = 0;
      for (const id of batch) {
        const secret = await tx.getSecretById(id);
        if (secret === null || secret.wrappedKey === null || secret.keyId === kid) continue;
        const dataKey = unwrapDataKey(masters, secret);
        try {
          await tx.updateSecretKey(id, target.wrap(dataKey, dataKeyAad(id)), kid);
        } finally {
          dataKey.fill(0);
        }
        n++;
      }
      return n;
    });
  }
  await ctx.store.transaction(async (tx) => {
    const state = await readKeyringState(tx);
    if (state.active !== kid) throw pending('the active key changed meanwhile; run `keys rotate` again');
    await rewrapMeta(tx, masters, target);
  });
  return count;
}

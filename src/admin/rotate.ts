import { discardNextMasterKey, promoteNextMasterKey, writeNextMasterKey } from '../config/home.js';
import type { Context } from '../server/context.js';
import { MasterKey } from '../vault/envelope.js';
import { rewrapAll } from '../vault/keyring.js';

export interface RotateResult {
  readonly previousKey: string;
  readonly newKey: string;
  readonly dataKeysRewrapped: number;
  /** Present only when the master key comes from COATCHECK_MASTER_KEY: set it to this value. */
  readonly newMasterKey?: string;
}

/**
 * Master-key rotation, crash-safe:
 *   1. the new key is written to master.key.next (fsynced);
 *   2. one transaction rewraps the index key and every data key, with its audit record;
 *   3. master.key.next is renamed over master.key.
 * A crash after 2 and before 3 is repaired at the next open (master.key.next opens the
 * store and is promoted). A crash before 2 leaves the old key in force.
 */
export async function rotateMasterKey(ctx: Context, actor: string): Promise<RotateResult> {
  const next = MasterKey.generate();
  const current = ctx.keys.master;
  const fromEnv = ctx.masterKeySource === 'env';
  if (!fromEnv) writeNextMasterKey(ctx.home, next);
  let count = 0;
  try {
    await ctx.audit.append(
      { type: 'keys.rotate', actor, data: { previousKey: current.kid, newKey: next.kid } },
      async (tx) => {
        count = await rewrapAll(tx, current, next);
      },
    );
  } catch (error) {
    if (!fromEnv) discardNextMasterKey(ctx.home);
    throw error;
  }
  if (!fromEnv) promoteNextMasterKey(ctx.home);
  // Services in this process switch to the new key.
  (ctx.keys as { master: MasterKey }).master = next;
  await ctx.store.publish({ type: 'keys.rotated' });
  return {
    previousKey: current.kid,
    newKey: next.kid,
    dataKeysRewrapped: count,
    ...(fromEnv ? { newMasterKey: next.toBase64() } : {}),
  };
}

import { createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { deriveIndexKeys, KeyedHashMemo, keyedHash } from '../../src/vault/envelope.js';
import { KeyService } from '../../src/vault/key-service.js';
import type { Keyring } from '../../src/vault/keyring.js';

const reference = (key: Buffer, text: string) => createHmac('sha256', key).update(text).digest('hex');

describe('KeyedHashMemo', () => {
  it('gives the keyed hash, the same on a hit as on a miss', () => {
    const key = randomBytes(32);
    const memo = new KeyedHashMemo(key);
    for (const text of ['cc_ak_first', 'cc_ak_second', 'cc_ak_first', '', 'é—unicode']) {
      expect(memo.hash(text)).toBe(reference(key, text));
      expect(memo.hash(text)).toBe(keyedHash(key, text));
    }
  });

  it('never answers with a hash made under another key', () => {
    const a = new KeyedHashMemo(randomBytes(32));
    const b = new KeyedHashMemo(randomBytes(32));
    expect(a.hash('same text')).not.toBe(b.hash('same text'));
  });

  it('stays bounded: full, it starts over, and still answers right', () => {
    const key = randomBytes(32);
    const memo = new KeyedHashMemo(key, { max: 3 });
    const texts = ['t1', 't2', 't3', 't4', 't5', 't1', 't4'];
    for (const text of texts) {
      expect(memo.hash(text)).toBe(reference(key, text));
      expect(memo.size).toBeLessThanOrEqual(3);
    }
  });
});

describe('KeyedHashMemo in time', () => {
  it('holds no credential text longer than its age bound, and still answers right after', () => {
    const key = randomBytes(32);
    let now = 1_000;
    const memo = new KeyedHashMemo(key, { maxAgeMs: 60_000, now: () => now });
    memo.hash('cc_ak_old');
    now += 59_999;
    memo.hash('cc_ak_newer');
    expect(memo.size).toBe(2);
    now += 1; // a minute since it was emptied: everything held goes, whatever was used last
    expect(memo.hash('cc_ak_newer')).toBe(reference(key, 'cc_ak_newer'));
    expect(memo.size).toBe(1);
    now += 60_000;
    expect(memo.hash('cc_ak_old')).toBe(reference(key, 'cc_ak_old'));
    expect(memo.size).toBe(1);
  });
});

describe('KeyService.ticketHash', () => {
  it('hashes under the keyring lookup key, and under a new one if the keyring is given another', () => {
    const first = deriveIndexKeys(randomBytes(32));
    const keyring = { index: first } as unknown as { index: ReturnType<typeof deriveIndexKeys> };
    const keys = new KeyService(keyring as unknown as Keyring);
    expect(keys.ticketHash('cc_tk_one')).toBe(reference(first.lookup, 'cc_tk_one'));
    expect(keys.ticketHash('cc_tk_one')).toBe(reference(first.lookup, 'cc_tk_one'));
    const second = deriveIndexKeys(randomBytes(32));
    keyring.index = second;
    expect(keys.ticketHash('cc_tk_one')).toBe(reference(second.lookup, 'cc_tk_one'));
  });
});

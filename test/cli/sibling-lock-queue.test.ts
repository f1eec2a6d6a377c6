import { describe, expect, it } from 'vitest';
import { type LockHolder, type LockMessage, SiblingLockQueue } from '../../src/cli/serve-workers.js';

// The primary's side of the workers' write lock. A worker is what the primary sees of it:
// whether its IPC channel is up, and the messages sent to it.
class WorkerEnd implements LockHolder {
  connected = true;
  readonly granted: number[] = [];
  constructor(readonly name: string) {}
  isConnected(): boolean {
    return this.connected;
  }
  send(message: LockMessage): void {
    if (message.type === 'coatcheck.lock.granted') this.granted.push(message.id);
  }
}

const lock = (id: number): LockMessage => ({ type: 'coatcheck.lock', id });
const unlock = (id: number): LockMessage => ({ type: 'coatcheck.unlock', id });

describe("the primary's write lock between workers", () => {
  it('grants one holder at a time, the rest in arrival order', () => {
    const q = new SiblingLockQueue<WorkerEnd>();
    const [a, b, c] = [new WorkerEnd('a'), new WorkerEnd('b'), new WorkerEnd('c')];
    q.onMessage(a, lock(1));
    q.onMessage(b, lock(1));
    q.onMessage(c, lock(1));
    expect([a.granted, b.granted, c.granted]).toEqual([[1], [], []]);
    q.onMessage(a, unlock(1));
    expect([a.granted, b.granted, c.granted]).toEqual([[1], [1], []]);
    q.onMessage(b, unlock(1));
    expect(q.holder?.worker).toBe(c);
  });

  it('a worker that dies holding the lock hands it on at once', () => {
    const q = new SiblingLockQueue<WorkerEnd>();
    const [a, b] = [new WorkerEnd('a'), new WorkerEnd('b')];
    q.onMessage(a, lock(7));
    q.onMessage(b, lock(3));
    a.connected = false;
    q.drop(a);
    expect(b.granted).toEqual([3]);
    expect(q.holder?.worker).toBe(b);
  });

  it("a dead worker's late unlock, or an unlock of a grant it no longer holds, frees nothing", () => {
    const q = new SiblingLockQueue<WorkerEnd>();
    const [a, b, c] = [new WorkerEnd('a'), new WorkerEnd('b'), new WorkerEnd('c')];
    q.onMessage(a, lock(1));
    q.drop(a);
    q.onMessage(b, lock(1)); // b holds
    q.onMessage(c, lock(1));
    q.onMessage(a, unlock(1)); // stale: a's grant is long gone
    q.onMessage(b, unlock(2)); // not the id b holds
    expect(q.holder?.worker).toBe(b);
    expect(c.granted).toEqual([]);
  });

  it('requests queued by a worker that died are dropped, not granted to nobody', () => {
    const q = new SiblingLockQueue<WorkerEnd>();
    const [a, b, c] = [new WorkerEnd('a'), new WorkerEnd('b'), new WorkerEnd('c')];
    q.onMessage(a, lock(1));
    q.onMessage(b, lock(1));
    q.onMessage(b, lock(2));
    q.onMessage(c, lock(1));
    b.connected = false;
    q.drop(b);
    q.onMessage(a, unlock(1));
    expect(q.holder?.worker).toBe(c);
    expect(b.granted).toEqual([]);
  });

  it('a worker whose channel is down when its turn comes is passed over', () => {
    const q = new SiblingLockQueue<WorkerEnd>();
    const [a, b, c] = [new WorkerEnd('a'), new WorkerEnd('b'), new WorkerEnd('c')];
    q.onMessage(a, lock(1));
    q.onMessage(b, lock(1));
    q.onMessage(c, lock(1));
    b.connected = false; // not yet reported as exited
    q.onMessage(a, unlock(1));
    expect(q.holder?.worker).toBe(c);
  });

  it('a request given back before its grant (the worker stopped waiting) is dropped', () => {
    const q = new SiblingLockQueue<WorkerEnd>();
    const [a, b, c] = [new WorkerEnd('a'), new WorkerEnd('b'), new WorkerEnd('c')];
    q.onMessage(a, lock(1));
    q.onMessage(b, lock(5));
    q.onMessage(c, lock(1));
    q.onMessage(b, unlock(5));
    q.onMessage(a, unlock(1));
    expect(b.granted).toEqual([]);
    expect(q.holder?.worker).toBe(c);
  });
});

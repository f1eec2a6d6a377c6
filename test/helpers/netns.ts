import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';

/**
 * A real network boundary on one machine (docs/relay.md, tests): two network namespaces
 * joined by veth pairs.
 *
 *   this process (root namespace)  ── gw link ──  relay namespace  ── target link ──  target namespace
 *   gatewayIp                                    relayIp / relayTargetSideIp          targetIp
 *
 * The relay namespace does not forward, and the root namespace has no route to the target
 * link: the target is reachable only from the relay's namespace. Names carry a random id
 * (unique per run); `cleanup` kills what was started in them and deletes both.
 */
export interface Topology {
  readonly id: string;
  readonly relayNs: string;
  readonly targetNs: string;
  readonly gatewayIp: string;
  readonly relayIp: string;
  readonly targetIp: string;
  /** Spawn a process inside a namespace. */
  spawnIn(ns: string, command: string, args: readonly string[], env?: NodeJS.ProcessEnv): ChildProcess;
  /** Run a command inside a namespace to completion. */
  execIn(ns: string, command: string, args: readonly string[]): string;
  cleanup(): void;
}

/** Why namespaces cannot be used here, or null when they can. */
export function netnsUnavailable(): string | null {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'creating network namespaces needs root';
  const probe = `ccprobe${randomBytes(3).toString('hex')}`;
  try {
    execFileSync('ip', ['netns', 'add', probe], { stdio: 'pipe' });
    execFileSync('ip', ['netns', 'del', probe], { stdio: 'pipe' });
    return null;
  } catch (error) {
    return `ip netns is not usable: ${(error as Error).message.split('\n')[0]}`;
  }
}

function ip(args: readonly string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

export function createTopology(): Topology {
  const id = randomBytes(3).toString('hex');
  const relayNs = `ccr-${id}-relay`;
  const targetNs = `ccr-${id}-target`;
  const a = randomInt(0, 256);
  const gatewayIp = `10.213.${a}.1`;
  const relayIp = `10.213.${a}.2`;
  const relaySideIp = `10.214.${a}.1`;
  const targetIp = `10.214.${a}.2`;
  const children = new Set<ChildProcess>();
  const cleanup = () => {
    for (const child of children)
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    for (const ns of [relayNs, targetNs]) {
      try {
        const pids = execFileSync('ip', ['netns', 'pids', ns], { stdio: 'pipe' })
          .toString()
          .split(/\s+/)
          .filter(Boolean);
        for (const pid of pids) {
          try {
            process.kill(Number(pid), 'SIGKILL');
          } catch {
            // gone already
          }
        }
      } catch {
        // no such namespace
      }
      try {
        ip(['netns', 'del', ns]);
      } catch {
        // not there
      }
    }
    try {
      ip(['link', 'del', `cc${id}g`]);
    } catch {
      // went with the namespace
    }
    try {
      ip(['route', 'del', 'unreachable', `10.214.${a}.0/30`]);
    } catch {
      // not there
    }
  };
  try {
    ip(['netns', 'add', relayNs]);
    ip(['netns', 'add', targetNs]);
    // gateway <-> relay
    ip(['link', 'add', `cc${id}g`, 'type', 'veth', 'peer', 'name', `cc${id}r`]);
    ip(['link', 'set', `cc${id}r`, 'netns', relayNs]);
    ip(['addr', 'add', `${gatewayIp}/30`, 'dev', `cc${id}g`]);
    ip(['link', 'set', `cc${id}g`, 'up']);
    ip(['-n', relayNs, 'addr', 'add', `${relayIp}/30`, 'dev', `cc${id}r`]);
    ip(['-n', relayNs, 'link', 'set', `cc${id}r`, 'up']);
    ip(['-n', relayNs, 'link', 'set', 'lo', 'up']);
    // relay <-> target
    ip(['link', 'add', `cc${id}x`, 'type', 'veth', 'peer', 'name', `cc${id}t`]);
    ip(['link', 'set', `cc${id}x`, 'netns', relayNs]);
    ip(['link', 'set', `cc${id}t`, 'netns', targetNs]);
    ip(['-n', relayNs, 'addr', 'add', `${relaySideIp}/30`, 'dev', `cc${id}x`]);
    ip(['-n', relayNs, 'link', 'set', `cc${id}x`, 'up']);
    ip(['-n', targetNs, 'addr', 'add', `${targetIp}/30`, 'dev', `cc${id}t`]);
    ip(['-n', targetNs, 'link', 'set', `cc${id}t`, 'up']);
    ip(['-n', targetNs, 'link', 'set', 'lo', 'up']);
    // The target link is private: nothing routes it from here (not even a default route).
    ip(['route', 'add', 'unreachable', `10.214.${a}.0/30`]);
  } catch (error) {
    cleanup();
    throw error;
  }
  return {
    id,
    relayNs,
    targetNs,
    gatewayIp,
    relayIp,
    targetIp,
    spawnIn(ns, command, args, env) {
      const child = spawn('ip', ['netns', 'exec', ns, command, ...args], {
        env: { PATH: process.env.PATH, ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.add(child);
      return child;
    },
    execIn(ns, command, args) {
      return execFileSync('ip', ['netns', 'exec', ns, command, ...args], { stdio: 'pipe' }).toString();
    },
    cleanup,
  };
}

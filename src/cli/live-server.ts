import { readFileSync } from 'node:fs';

// Kept apart from serve.ts: every CLI command reads server.json, and serve.ts loads every
// front-end (a command that only talks to a running server must not pay for that).

export interface ServerFile {
  readonly pid: number;
  readonly admin?: string;
  readonly listening?: Record<string, string>;
}

/** What server.json says, if it is readable and its process is alive (not ours). */
export function liveServer(path: string): ServerFile | null {
  const info = readServerFile(path);
  return info !== null && info.pid !== process.pid && alive(info.pid) ? info : null;
}

export function readServerFile(path: string): ServerFile | null {
  try {
    const info = JSON.parse(readFileSync(path, 'utf8')) as ServerFile;
    return typeof info.pid === 'number' ? info : null;
  } catch {
    return null;
  }
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

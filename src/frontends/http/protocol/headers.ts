/**
 * Header handling for a proxy (RFC 9110 §7.6.1): hop-by-hop headers, and those listed
 * in `Connection`, belong to one connection and are never forwarded.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Lower-cased names not to forward: the fixed hop-by-hop set plus the Connection header's tokens. */
export function hopByHop(connectionHeader: string | string[] | undefined): Set<string> {
  const out = new Set(HOP_BY_HOP);
  const values = Array.isArray(connectionHeader)
    ? connectionHeader
    : connectionHeader
      ? [connectionHeader]
      : [];
  for (const value of values) {
    for (const token of value.split(',')) {
      const name = token.trim().toLowerCase();
      if (name !== '') out.add(name);
    }
  }
  return out;
}

/** `Bearer <token>` from a header value, or null. */
export function bearer(value: string | undefined): string | null {
  if (value === undefined) return null;
  const match = /^\s*Bearer\s+(\S{1,512})\s*$/i.exec(value);
  return match === null ? null : match[1]!;
}

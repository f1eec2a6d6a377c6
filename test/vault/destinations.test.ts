import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../src/core/errors.js';
import {
  covers,
  formatDestination,
  isLoopbackHost,
  matchesTarget,
  normalizeDestinations,
  parseDestination,
} from '../../src/vault/destinations.js';
import { normalizePlacements, placementAllowed } from '../../src/vault/placements.js';

const code = (fn: () => unknown): string | null => {
  try {
    fn();
    return null;
  } catch (error) {
    return error instanceof CoatcheckError ? error.code : 'not a CoatcheckError';
  }
};

describe('destinations bind scheme, host and port', () => {
  it('defaults to https and the scheme default port, written canonically', () => {
    expect(normalizeDestinations(['api.example.com'])).toEqual(['host:api.example.com']);
    expect(normalizeDestinations(['https://api.example.com'])).toEqual(['host:api.example.com']);
    expect(normalizeDestinations(['https://api.example.com:443/'])).toEqual(['host:api.example.com']);
    expect(normalizeDestinations(['api.example.com:8443'])).toEqual(['host:api.example.com:8443']);
    expect(normalizeDestinations(['http://localhost:8080'])).toEqual(['host:http://localhost:8080']);
    expect(normalizeDestinations(['http://127.0.0.1'])).toEqual(['host:http://127.0.0.1']);
    expect(normalizeDestinations(['http://127.0.0.1:80'])).toEqual(['host:http://127.0.0.1']);
    expect(normalizeDestinations(['*.example.com', 'github'])).toEqual(['host:*.example.com', 'conn:github']);
    expect(parseDestination('host:api.example.com')).toEqual({
      kind: 'host',
      scheme: 'https',
      wildcard: false,
      host: 'api.example.com',
      port: 443,
    });
    // Canonical text parses back to itself.
    for (const text of ['host:http://localhost:8080', 'host:*.example.com:8443', 'conn:db'])
      expect(formatDestination(parseDestination(text))).toBe(text);
  });

  it('refuses http:// to hosts that are not loopback unless plaintext is allowed', () => {
    const strict = (text: string) => normalizeDestinations([text], '--allow', { allowPlaintext: false });
    expect(code(() => strict('http://api.example.com'))).toBe('CC_ERR_DEST_PLAINTEXT');
    expect(code(() => strict('host:http://api.example.com'))).toBe('CC_ERR_DEST_PLAINTEXT');
    expect(code(() => strict('http://*.example.com:8080'))).toBe('CC_ERR_DEST_PLAINTEXT');
    expect(code(() => strict('http://10.0.0.5'))).toBe('CC_ERR_DEST_PLAINTEXT');
    expect(strict('http://localhost:8080')).toEqual(['host:http://localhost:8080']);
    // Ticket destinations are read as written: they must lie within the secret's anyway.
    expect(normalizeDestinations(['http://api.example.com'])).toEqual(['host:http://api.example.com']);
    expect(isLoopbackHost('127.8.9.10')).toBe(true);
    expect(isLoopbackHost('dev.localhost')).toBe(true);
    expect(isLoopbackHost('localhost.example.com')).toBe(false);
    expect(isLoopbackHost('128.0.0.1')).toBe(false);
  });

  it('refuses paths, other schemes, bad ports and bare wildcards', () => {
    for (const bad of [
      'https://api.example.com/admin',
      'ftp://api.example.com',
      'https://',
      'api.example.com:0',
      'api.example.com:65536',
      '*.com',
      'https://user@api.example.com',
    ])
      expect(
        code(() => normalizeDestinations([bad])),
        bad,
      ).toBe('CC_ERR_DEST_INVALID');
  });

  it('matches a target only on the same scheme, host and port', () => {
    const dest = parseDestination('api.example.com');
    expect(matchesTarget(dest, { scheme: 'https', host: 'api.example.com', port: 443 })).toBe(true);
    expect(matchesTarget(dest, { scheme: 'https', host: 'API.example.com.', port: 443 })).toBe(true);
    // The case: the same host over plain http, or on another port.
    expect(matchesTarget(dest, { scheme: 'http', host: 'api.example.com', port: 443 })).toBe(false);
    expect(matchesTarget(dest, { scheme: 'http', host: 'api.example.com', port: 80 })).toBe(false);
    expect(matchesTarget(dest, { scheme: 'https', host: 'api.example.com', port: 8443 })).toBe(false);
    // A target with no port matches nothing (it cannot prove where it goes).
    expect(matchesTarget(dest, { scheme: 'https', host: 'api.example.com' })).toBe(false);
    // Protocols without a URL scheme (PostgreSQL) match on host and port.
    expect(matchesTarget(parseDestination('db.internal:5432'), { host: 'db.internal', port: 5432 })).toBe(
      true,
    );
    const wild = parseDestination('*.example.com');
    expect(matchesTarget(wild, { scheme: 'https', host: 'a.b.example.com', port: 443 })).toBe(true);
    expect(matchesTarget(wild, { scheme: 'https', host: 'example.com', port: 443 })).toBe(false);
    expect(matchesTarget(wild, { scheme: 'http', host: 'a.example.com', port: 80 })).toBe(false);
    const local = parseDestination('http://localhost:8080');
    expect(matchesTarget(local, { scheme: 'http', host: 'localhost', port: 8080 })).toBe(true);
    expect(matchesTarget(local, { scheme: 'https', host: 'localhost', port: 8080 })).toBe(false);
  });

  it('never lets a narrower destination widen scheme or port', () => {
    const p = (t: string) => parseDestination(t);
    expect(covers(p('*.example.com'), p('api.example.com'))).toBe(true);
    expect(covers(p('*.example.com'), p('api.example.com:8443'))).toBe(false);
    expect(covers(p('api.example.com'), p('host:http://api.example.com'))).toBe(false);
    expect(covers(p('http://localhost:1'), p('http://localhost:2'))).toBe(false);
  });
});

describe('placements', () => {
  it('are credential by default, extended only by name, sql only per connection', () => {
    expect(normalizePlacements()).toEqual(['credential']);
    expect(normalizePlacements(['query,body', 'BODY'])).toEqual(['credential', 'query', 'body']);
    expect(normalizePlacements([], ['pg'])).toEqual(['credential', 'sql:pg']);
    expect(code(() => normalizePlacements(['sql']))).toBe('CC_ERR_PLACEMENT_INVALID');
    expect(code(() => normalizePlacements(['cookie']))).toBe('CC_ERR_PLACEMENT_INVALID');
    expect(code(() => normalizePlacements([], ['bad name!']))).toBe('CC_ERR_PLACEMENT_INVALID');
    const stored = ['credential', 'sql:pg'];
    expect(placementAllowed(stored, 'credential', {})).toBe(true);
    expect(placementAllowed(stored, 'body', { connection: 'pg' })).toBe(false);
    expect(placementAllowed(stored, 'sql', { connection: 'pg' })).toBe(true);
    expect(placementAllowed(stored, 'sql', { connection: 'other' })).toBe(false);
    expect(placementAllowed(stored, 'sql', {})).toBe(false);
  });
});

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../../core/errors.js';
import { originOf, parseAbsoluteTarget, parseAuthority, proxyAgentKey } from './proxy-target.js';

const basic = (text: string) => `Basic ${Buffer.from(text).toString('base64')}`;

describe('forward-proxy request targets', () => {
  it('parses CONNECT authorities', () => {
    expect(parseAuthority('API.example.com:443')).toEqual({ host: 'api.example.com', port: 443 });
    expect(parseAuthority('127.0.0.1:8443')).toEqual({ host: '127.0.0.1', port: 8443 });
    expect(parseAuthority('[::1]:443')).toEqual({ host: '::1', port: 443 });
    for (const bad of [
      'example.com',
      ':443',
      'example.com:0',
      'example.com:70000',
      'a b:443',
      'x_y.com:443',
      '[zz]:1',
    ]) {
      expect(() => parseAuthority(bad), bad).toThrow(
        expect.objectContaining({ code: 'CC_ERR_HTTP_BAD_REQUEST' }),
      );
    }
  });

  it('parses absolute-form targets and refuses dot segments', () => {
    expect(parseAbsoluteTarget('http://example.com')).toEqual({
      scheme: 'http:',
      host: 'example.com',
      port: 80,
      path: '/',
      query: null,
    });
    expect(parseAbsoluteTarget('https://h.example:8443/a/b?x=1&y')).toEqual({
      scheme: 'https:',
      host: 'h.example',
      port: 8443,
      path: '/a/b',
      query: 'x=1&y',
    });
    expect(() => parseAbsoluteTarget('/relative')).toThrow(
      expect.objectContaining({ code: 'CC_ERR_HTTP_BAD_REQUEST' }),
    );
    expect(() => parseAbsoluteTarget('http://user:pw@example.com/')).toThrow(
      expect.objectContaining({ code: 'CC_ERR_HTTP_BAD_REQUEST' }),
    );
    expect(() => parseAbsoluteTarget('http://example.com/a/%2E%2E/b')).toThrow(
      expect.objectContaining({ code: 'CC_ERR_HTTP_BAD_REQUEST' }),
    );
  });

  it('writes origins', () => {
    expect(originOf('https:', { host: 'a.example', port: 443 })).toBe('https://a.example');
    expect(originOf('https:', { host: 'a.example', port: 8443 })).toBe('https://a.example:8443');
    expect(originOf('http:', { host: '::1', port: 80 })).toBe('http://[::1]');
  });

  it('garbage gives a CoatcheckError, never anything else', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 400 }), (text) => {
        for (const parse of [parseAuthority, parseAbsoluteTarget]) {
          try {
            parse(text);
          } catch (error) {
            expect(error).toBeInstanceOf(CoatcheckError);
          }
        }
      }),
    );
  });
});

describe('the agent key in Proxy-Authorization', () => {
  it('takes Bearer, or Basic with any user and the key as password', () => {
    expect(proxyAgentKey('Bearer cca_abc')).toBe('cca_abc');
    expect(proxyAgentKey(basic('anyone:cca_abc'))).toBe('cca_abc');
    expect(proxyAgentKey(basic(':cca_abc'))).toBe('cca_abc');
    expect(proxyAgentKey(basic('user:pa:ss'))).toBe('pa:ss');
  });

  it('gives null for nothing usable', () => {
    expect(proxyAgentKey(undefined)).toBeNull();
    expect(proxyAgentKey('')).toBeNull();
    expect(proxyAgentKey(basic('no-colon'))).toBeNull();
    expect(proxyAgentKey(basic('user:'))).toBeNull();
    expect(proxyAgentKey('Digest x')).toBeNull();
    expect(proxyAgentKey('Basic !!!')).toBeNull();
  });
});

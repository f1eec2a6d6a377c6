import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../../core/errors.js';
import { classifyRequest } from './request-info.js';

const pick = (method: string, target: string) => {
  const i = classifyRequest(method, target);
  return [i.verb, i.group, i.version, i.resource, i.subresource, i.namespace, i.name].join('|');
};
const codeOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (error) {
    return error instanceof CoatcheckError ? error.code : 'not a CoatcheckError';
  }
  return 'no error';
};

describe('Kubernetes request classification (as requestinfo.go reads the path)', () => {
  it.each([
    ['GET', '/api/v1/namespaces/default/pods', 'list||v1|pods||default|'],
    ['GET', '/api/v1/namespaces/default/pods?limit=500', 'list||v1|pods||default|'],
    ['GET', '/api/v1/namespaces/default/pods?watch=true&resourceVersion=5', 'watch||v1|pods||default|'],
    ['GET', '/api/v1/namespaces/default/pods?watch=1', 'watch||v1|pods||default|'],
    ['GET', '/api/v1/namespaces/default/pods?watch=false', 'list||v1|pods||default|'],
    ['GET', '/api/v1/watch/namespaces/default/pods', 'watch||v1|pods||default|'],
    ['GET', '/api/v1/namespaces/default/pods/web-1', 'get||v1|pods||default|web-1'],
    ['GET', '/api/v1/namespaces/default/pods/web-1/log', 'get||v1|pods|log|default|web-1'],
    ['DELETE', '/api/v1/namespaces/default/pods/web-1', 'delete||v1|pods||default|web-1'],
    ['DELETE', '/api/v1/namespaces/default/pods', 'deletecollection||v1|pods||default|'],
    ['POST', '/api/v1/namespaces/default/pods', 'create||v1|pods||default|'],
    ['PUT', '/api/v1/namespaces/default/pods/web-1', 'update||v1|pods||default|web-1'],
    ['PATCH', '/apis/apps/v1/namespaces/prod/deployments/api', 'patch|apps|v1|deployments||prod|api'],
    ['GET', '/apis/apps/v1/deployments', 'list|apps|v1|deployments|||'],
    ['GET', '/api/v1/namespaces', 'list||v1|namespaces|||'],
    ['GET', '/api/v1/namespaces/prod', 'get||v1|namespaces||prod|prod'],
    ['PUT', '/api/v1/namespaces/prod/finalize', 'update||v1|namespaces|finalize|prod|prod'],
    ['GET', '/api/v1/namespaces/prod/secrets/db', 'get||v1|secrets||prod|db'],
    ['POST', '/api/v1/namespaces/prod/pods/web-1/exec?command=sh', 'exec||v1|pods|exec|prod|web-1'],
    ['GET', '/api/v1/namespaces/prod/pods/web-1/exec?command=sh', 'exec||v1|pods|exec|prod|web-1'],
    ['GET', '/api/v1/namespaces/prod/pods/web-1/attach', 'attach||v1|pods|attach|prod|web-1'],
    ['GET', '/api/v1/namespaces/prod/pods/web-1/portforward', 'portforward||v1|pods|portforward|prod|web-1'],
    [
      'GET',
      '/api/v1/namespaces/prod/services/db:5432/proxy/admin/x',
      'proxy||v1|services|proxy|prod|db:5432',
    ],
    ['GET', '/api/v1/nodes/n1/proxy/metrics', 'proxy||v1|nodes|proxy||n1'],
    [
      'GET',
      '/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node',
      'get|rbac.authorization.k8s.io|v1|clusterroles|||system:node',
    ],
  ])('%s %s', (method, target, expected) => {
    expect(pick(method, target)).toBe(expected);
  });

  it('discovery and other non-resource paths are GET-only reads with no resource', () => {
    for (const path of [
      '/version',
      '/api',
      '/apis',
      '/api/v1',
      '/apis/apps',
      '/apis/apps/v1',
      '/openapi/v3',
      '/healthz',
    ]) {
      const info = classifyRequest('GET', path);
      expect(info).toMatchObject({ resourceRequest: false, verb: 'get', resource: '', namespace: '' });
    }
    expect(codeOf(() => classifyRequest('POST', '/api'))).toBe('CC_ERR_K8S_REQUEST_INVALID');
  });

  it.each([
    '/api/v1/namespaces/a/../b/pods',
    '/api/v1/namespaces/a/./pods',
    '/api/v1/namespaces/default/pods/..',
    '/api/v1/namespaces/a%2Fb/pods',
    '/api/v1/namespaces/default/pods/web%2D1',
    '/api/v1/namespaces/default/%70ods',
    '/api/v1//namespaces/default/pods',
    '//api/v1/namespaces/default/pods',
    '/api/v1/namespaces/default/pods/',
    '/api/v1/namespaces/default\\pods',
    '/api/v1/namespaces/default/pods/we b',
    '/api/v1/namespaces/default/pods/wéb',
    '/api/v1/namespaces/default/pods/web\u0000',
    `/api/v1/namespaces/${'a'.repeat(5000)}`,
  ])('refuses the non-canonical path %s with a stable code', (path) => {
    expect(codeOf(() => classifyRequest('GET', path))).toBe('CC_ERR_K8S_PATH_NONCANONICAL');
  });

  it('refuses what it cannot classify exactly', () => {
    const bad = (method: string, target: string) => codeOf(() => classifyRequest(method, target));
    expect(bad('GET', '/api/v1/namespaces/default/pods?watch=true&watch=false')).toBe(
      'CC_ERR_K8S_REQUEST_INVALID',
    );
    expect(bad('GET', '/api/v1/namespaces/default/pods?watch=yes')).toBe('CC_ERR_K8S_REQUEST_INVALID');
    expect(bad('GET', '/api/v1/namespaces/default/pods/web-1?watch=maybe')).toBe(
      'CC_ERR_K8S_REQUEST_INVALID',
    );
    expect(bad('GET', '/api/v1/namespaces/default/pods/web-1/log/extra')).toBe('CC_ERR_K8S_REQUEST_INVALID');
    expect(bad('TRACE', '/api/v1/namespaces/default/pods')).toBe('CC_ERR_K8S_REQUEST_INVALID');
    expect(bad('POST', '/api/v1/watch/namespaces/default/pods')).toBe('CC_ERR_K8S_REQUEST_INVALID');
    expect(bad('GET', '/api/v1/namespaces/default/pods?fieldSelector=a&fieldSelector=b')).toBe(
      'CC_ERR_K8S_REQUEST_INVALID',
    );
  });

  it('any path either classifies to a known verb or is refused with a K8S code (never another error)', () => {
    const segment = fc.oneof(
      fc.constantFrom(
        'api',
        'apis',
        'v1',
        'apps',
        'namespaces',
        'default',
        'pods',
        'exec',
        'proxy',
        'watch',
        '..',
        '.',
        '',
        '%2F',
        'a:b',
      ),
      fc.string({ maxLength: 6 }),
    );
    fc.assert(
      fc.property(
        fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'),
        fc.array(segment, { maxLength: 8 }),
        fc.string({ maxLength: 20 }),
        (method, parts, query) => {
          const target = `/${parts.join('/')}${query === '' ? '' : `?${query}`}`;
          try {
            const info = classifyRequest(method, target);
            // What classifies is canonical: no dot, empty or encoded segment slipped through.
            expect(
              info.path
                .split('/')
                .slice(1)
                .every((s) => s !== '' && s !== '.' && s !== '..' && !s.includes('%')),
            ).toBe(info.path !== '/');
          } catch (error) {
            expect(error).toBeInstanceOf(CoatcheckError);
            expect((error as CoatcheckError).code).toMatch(/^CC_ERR_K8S_/);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});

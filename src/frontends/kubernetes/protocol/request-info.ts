import { CoatcheckError } from '../../../core/errors.js';

/**
 * A Kubernetes API request in the API server's own terms, parsed the way
 * k8s.io/apiserver/pkg/endpoints/request/requestinfo.go parses it (RequestInfoFactory),
 * after a canonical-form check: the gateway refuses every path whose reading could
 * differ between it and the API server (percent-encoding, dot and empty segments).
 */
export const K8S_VERBS = [
  'get',
  'list',
  'watch',
  'create',
  'update',
  'patch',
  'delete',
  'deletecollection',
  'exec',
  'attach',
  'portforward',
  'proxy',
] as const;
export type K8sVerb = (typeof K8S_VERBS)[number];

export interface RequestInfo {
  /** False for discovery and other non-resource paths (/version, /api, /apis/apps/v1, /openapi/v3). */
  readonly resourceRequest: boolean;
  readonly verb: K8sVerb;
  /** '' for the core group (/api/v1). */
  readonly group: string;
  readonly version: string;
  readonly resource: string;
  readonly subresource: string;
  readonly namespace: string;
  readonly name: string;
  /** The canonical path (as sent: it passed the canonical check unchanged). */
  readonly path: string;
}

/** Longest path the gateway classifies. */
export const MAX_PATH = 4096;
/** One segment: the characters Kubernetes object names, resources and versions use (`system:node`, `svc:8080`). */
const SEGMENT = /^[A-Za-z0-9._:~@+=-]{1,253}$/;
/** Subresources of a namespace object itself (`/api/v1/namespaces/NS/status`), as requestinfo.go lists them. */
const NAMESPACE_SUBRESOURCES = new Set(['status', 'finalize']);
/** Go's strconv.ParseBool. */
const GO_TRUE = new Set(['1', 't', 'T', 'TRUE', 'true', 'True']);
const GO_FALSE = new Set(['0', 'f', 'F', 'FALSE', 'false', 'False']);
/** Subresources that are their own verbs here (Kubernetes authorizes them as create/get on the subresource). */
const STREAM_SUBRESOURCES: Readonly<Record<string, K8sVerb>> = {
  exec: 'exec',
  attach: 'attach',
  portforward: 'portforward',
  proxy: 'proxy',
};

function invalid(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_K8S_REQUEST_INVALID', `coatcheck: ${message}`);
}

function nonCanonical(why: string): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_K8S_PATH_NONCANONICAL',
    `coatcheck: the Kubernetes request path is not canonical (${why}); it is refused`,
    { details: { reason: why } },
  );
}

/**
 * Split a canonical path into its segments, or refuse. The API server decodes
 * percent-escapes before it splits (`a%2Fb` is two segments there), keeps `..` as a
 * segment, and trims slashes at both ends; none of those may be left to chance.
 */
export function canonicalSegments(path: string): string[] {
  if (path.length > MAX_PATH) throw nonCanonical('longer than 4096 bytes');
  if (!path.startsWith('/')) throw nonCanonical('does not start with /');
  if (path === '/') return [];
  if (path.includes('%')) throw nonCanonical('percent-encoding');
  if (path.includes('\\')) throw nonCanonical('a backslash');
  const segments = path.slice(1).split('/');
  for (const segment of segments) {
    if (segment === '') throw nonCanonical('an empty segment or a trailing slash');
    if (segment === '.' || segment === '..') throw nonCanonical('a dot segment');
    if (!SEGMENT.test(segment)) throw nonCanonical('a character outside a path name');
  }
  return segments;
}

/** The `watch` query parameter as the API server reads it (once, a Go boolean), or refuse. */
function watchParameter(query: URLSearchParams): boolean {
  const values = query.getAll('watch');
  if (values.length === 0) return false;
  if (values.length > 1) throw invalid('the watch parameter is given more than once');
  const value = values[0]!;
  if (value === '' || GO_FALSE.has(value)) return false;
  if (GO_TRUE.has(value)) return true;
  throw invalid('the watch parameter is not a boolean');
}

function verbOf(method: string): K8sVerb {
  switch (method) {
    case 'GET':
    case 'HEAD':
      return 'get';
    case 'POST':
      return 'create';
    case 'PUT':
      return 'update';
    case 'PATCH':
      return 'patch';
    case 'DELETE':
      return 'delete';
    default:
      throw invalid(`the HTTP method ${method.slice(0, 16)} is not a Kubernetes verb`);
  }
}

/**
 * Classify one request. `target` is the request target below the gateway's
 * `/<agent>/<connection>` prefix: path and query exactly as the client sent them.
 */
export function classifyRequest(method: string, target: string): RequestInfo {
  const queryAt = target.indexOf('?');
  const path = queryAt === -1 ? target : target.slice(0, queryAt);
  const query = new URLSearchParams(queryAt === -1 ? '' : target.slice(queryAt + 1));
  if (target.includes('#')) throw nonCanonical('a fragment');
  let parts = canonicalSegments(path);
  const nonResource = (): RequestInfo => {
    if (method !== 'GET' && method !== 'HEAD') {
      throw invalid('only GET reaches discovery and other non-resource paths through the gateway');
    }
    return {
      resourceRequest: false,
      verb: 'get',
      group: '',
      version: '',
      resource: '',
      subresource: '',
      namespace: '',
      name: '',
      path,
    };
  };
  // /api/v1/…  or  /apis/GROUP/VERSION/…
  if (parts[0] !== 'api' && parts[0] !== 'apis') return nonResource();
  const legacy = parts[0] === 'api';
  parts = parts.slice(1);
  if (legacy ? parts.length < 2 : parts.length < 3) return nonResource();
  const group = legacy ? '' : parts[0]!;
  const version = legacy ? parts[0]! : parts[1]!;
  parts = parts.slice(legacy ? 1 : 2);

  let verb = verbOf(method);
  // The deprecated /watch/ prefix.
  if (parts[0] === 'watch') {
    if (method !== 'GET') throw invalid('the /watch/ prefix takes GET only');
    verb = 'watch';
    parts = parts.slice(1);
    if (parts.length === 0) throw invalid('a /watch/ path names no resource');
  }
  let namespace = '';
  if (parts[0] === 'namespaces' && parts.length > 1) {
    namespace = parts[1]!;
    // /namespaces/NS/RESOURCE…, unless RESOURCE is a subresource of the namespace itself.
    if (parts.length > 2 && !NAMESPACE_SUBRESOURCES.has(parts[2]!)) parts = parts.slice(2);
  }
  const resource = parts[0] ?? '';
  const name = parts[1] ?? '';
  const subresource = parts[2] ?? '';
  // Only proxy paths carry more after the subresource (pods/NAME/proxy/…).
  if (parts.length > 3 && subresource !== 'proxy')
    throw invalid('the path has segments after the subresource');

  if (name === '' && verb === 'get') verb = watchParameter(query) ? 'watch' : 'list';
  else if (verb === 'get' || verb === 'list') watchParameter(query); // refuses a malformed one everywhere
  if (name === '' && verb === 'delete') verb = 'deletecollection';
  if (query.getAll('fieldSelector').length > 1)
    throw invalid('the fieldSelector parameter is given more than once');
  const stream = STREAM_SUBRESOURCES[subresource];
  if (stream !== undefined) {
    if (name === '') throw invalid(`a ${subresource} request names no object`);
    verb = stream;
  }
  return {
    resourceRequest: true,
    verb,
    group,
    version,
    resource,
    subresource,
    namespace,
    name,
    path,
  };
}

/** The policy action of a classified request: `k8s:<verb>`. */
export function actionOf(info: RequestInfo): string {
  return `k8s:${info.verb}`;
}

import { stringify } from 'yaml';

export interface KubeconfigInput {
  readonly agent: string;
  readonly connection: string;
  /** The gateway's Kubernetes listener, `https://HOST:PORT`. */
  readonly gateway: string;
  readonly ticket: string;
  /** The CA the listener's certificate chains to (PEM). */
  readonly ca: string;
}

/**
 * A kubeconfig that points an unmodified kubectl at the gateway: the cluster's server is
 * `<gateway>/k8s/<agent>/<connection>`, the user's token is the ticket, the authority is
 * the gateway's local CA (kubectl sends credentials over TLS only). No proxy settings; the
 * real credential and the cluster's CA stay at the gateway.
 */
export function renderKubeconfig(input: KubeconfigInput): string {
  const name = `coatcheck-${input.connection}`;
  const server = `${input.gateway.replace(/\/+$/, '')}/k8s/${encodeURIComponent(input.agent)}/${encodeURIComponent(input.connection)}`;
  return stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      { name, cluster: { server, 'certificate-authority-data': Buffer.from(input.ca).toString('base64') } },
    ],
    users: [{ name: `${name}-${input.agent}`, user: { token: input.ticket } }],
    contexts: [{ name, context: { cluster: name, user: `${name}-${input.agent}`, namespace: 'default' } }],
    'current-context': name,
  });
}

import type { Logger } from 'pino';
import type { ApprovalView } from './approvals.js';

/**
 * Tells approvers about a new request: POST of a Slack-compatible payload (`text` and
 * `blocks`) with a link to the console. Only ids, names and the secret-free summary go
 * out. A failed delivery is logged; the request stays pending for the console and CLI.
 */
export function createWebhookNotifier(options: { url: string; consoleUrl: string | null; log: Logger }) {
  return async (approval: ApprovalView): Promise<void> => {
    const link =
      options.consoleUrl === null
        ? ''
        : `${options.consoleUrl.replace(/\/$/, '')}/#/approvals/${approval.id}`;
    const who = approval.approvers.length > 0 ? ` (approvers: ${approval.approvers.join(', ')})` : '';
    const text =
      `coatcheck: ${approval.requesterName} asks to run ${approval.operation.action} on ${approval.operation.connection}${who}\n` +
      `> ${approval.operation.summary.slice(0, 300)}\n` +
      `approve: coatcheck approvals approve ${approval.id}${link === '' ? '' : `\n${link}`}`;
    try {
      const response = await fetch(options.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          text,
          approval: {
            id: approval.id,
            requester: approval.requesterName,
            connection: approval.operation.connection,
            action: approval.operation.action,
            link: link || null,
          },
          blocks: [{ type: 'section', text: { type: 'mrkdwn', text } }],
        }),
        signal: AbortSignal.timeout(5000),
      });
      if (!response.ok)
        options.log.warn(
          { approval: approval.id, status: response.status },
          'approval webhook answered with an error',
        );
    } catch (error) {
      options.log.warn(
        { approval: approval.id, reason: (error as Error).name },
        'approval webhook could not be delivered',
      );
    }
  };
}

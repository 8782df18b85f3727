/** How a call failed when no HTTP answer explains it, or `http_error` when one does. */
export type TallyErrorCode =
  | 'http_error'
  | 'network_error'
  | 'timeout'
  | 'aborted'
  | 'invalid_response'
  | 'invalid_webhook';

/** Every failure the SDK reports (the API key is never part of it). */
export declare class TallyError extends Error {
  /** The HTTP status; 0 when no answer came (network error, timeout, abort). */
  readonly status: number;
  /** The API's message (`{"error": …}`), or what went wrong when there was no answer. */
  readonly error: string;
  /** The X-Request-Id of the answer: the id the server logged the request under. */
  readonly requestId: string | null;
  /** The answer's body, parsed (e.g. `refund_ledger_id` on a 409, `decline_code` on a 402). */
  readonly body: any;
  readonly code: TallyErrorCode;
  constructor(init?: {
    status?: number;
    error?: string;
    requestId?: string | null;
    body?: unknown;
    code?: TallyErrorCode;
    message?: string;
    cause?: unknown;
  });
}

/** What reauth's `charge` throws on a 402: `message` is exactly 'Insufficient balance'. */
export declare class InsufficientBalanceError extends TallyError {
  readonly status: 402;
  readonly message: 'Insufficient balance';
  /** What the user has. */
  readonly balance: number | undefined;
  /** With overdraft on, how far down the user may go. */
  readonly floor: number | undefined;
  constructor(init?: { requestId?: string | null; body?: unknown });
}

/**
 * What verifyWebhook throws: a missing or malformed header, a timestamp outside the tolerance,
 * no matching signature, a malformed secret, or a body that is not a Tally event. Answer the
 * sender 400 and do not act on the body.
 */
export declare class WebhookVerificationError extends TallyError {
  /** No call was made. */
  readonly status: 0;
  readonly requestId: null;
  readonly code: 'invalid_webhook';
  constructor(message: string);
}

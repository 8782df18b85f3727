/**
 * What every failed call throws: a TallyError with the HTTP status (0 when no answer came),
 * the API's own message (`error`), the request id the server logged it under, and the body.
 * Nothing here ever holds the API key or a client token: errors are built from answers only.
 */
export class TallyError extends Error {
  constructor({ status = 0, error, requestId = null, body = null, code, message, cause } = {}) {
    const text = error ?? (status ? `HTTP ${status}` : 'request failed');
    super(message ?? describe(status, text, requestId), cause === undefined ? undefined : { cause });
    this.name = 'TallyError';
    this.status = status;
    this.error = text;
    this.requestId = requestId;
    this.body = body;
    this.code = code ?? (status ? 'http_error' : 'network_error');
  }
}

/** reauth's `charge` refusal: `err.message === 'Insufficient balance'` on a 402. */
export class InsufficientBalanceError extends TallyError {
  constructor({ requestId = null, body = null } = {}) {
    super({
      status: 402,
      error: body?.error ?? 'Insufficient credits',
      requestId,
      body,
      message: 'Insufficient balance',
    });
    this.name = 'InsufficientBalanceError';
    this.balance = body?.balance;
    this.floor = body?.floor;
  }
}

/**
 * A webhook that did not verify (verifyWebhook in the server entry): answer the sender 400 and
 * do not act on the body. No call was made, so `status` is 0 and `requestId` null.
 */
export class WebhookVerificationError extends TallyError {
  constructor(message) {
    super({ error: message, message, code: 'invalid_webhook' });
    this.name = 'WebhookVerificationError';
  }
}

function describe(status, text, requestId) {
  const where = [status ? `HTTP ${status}` : null, requestId ? `request ${requestId}` : null];
  const context = where.filter(Boolean).join(', ');
  return context ? `${text} (${context})` : text;
}

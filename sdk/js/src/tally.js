/**
 * The server client: `new Tally({ apiKey, baseUrl })`, the API's own routes and field names.
 */
import { TallyError } from './errors.js';
import { HoldHandle, checkHoldFunction, holdPath, isoMoment, runUnderHold } from './holds.js';
import { newIdempotencyKey } from './idempotency.js';
import { apiKeyTransport } from './transport.js';

export class Tally {
  /** @type {Credits} */ credits;
  /** @type {ClientTokens} */ clientTokens;

  constructor(options = {}) {
    const transport = apiKeyTransport('Tally', options);
    this.credits = new Credits(transport);
    this.clientTokens = new ClientTokens(transport);
  }
}

/** POST with an Idempotency-Key: the caller's, or one made now and kept for every retry. */
export async function keyedPost(transport, path, body, options = {}) {
  return transport.request({
    method: 'POST',
    path,
    body,
    idempotencyKey: options.idempotencyKey ?? (await newIdempotencyKey()),
    signal: options.signal,
  });
}

class Credits {
  #transport;

  constructor(transport) {
    this.#transport = transport;
  }

  /** With `expires_at` (ISO 8601 with a time zone, or a Date) the credits are a grant. */
  async add(params, options) {
    const body = withExpiry(params);
    return (await keyedPost(this.#transport, '/credits/add', body, options)).body;
  }

  /** Resolves the API's 402 body (`success: false`) instead of throwing: running out is normal. */
  async deduct(params, options) {
    try {
      return (await keyedPost(this.#transport, '/credits/deduct', params, options)).body;
    } catch (error) {
      if (isInsufficientCredits(error)) return error.body;
      throw error;
    }
  }

  async refund(params, options) {
    return (await keyedPost(this.#transport, '/credits/refund', params, options)).body;
  }

  /**
   * Up to 1,000 adds and deducts. A batch takes no Idempotency-Key header: each operation
   * without an `idempotency_key` gets one here, before the first attempt, so a retried batch
   * applies each operation once. Each result carries its operation's key, to retry it alone.
   */
  async batch(operations, options = {}) {
    const list = Array.isArray(operations) ? operations : operations?.operations;
    if (!Array.isArray(list)) throw new TypeError('batch: give an array of operations');
    const keyed = await Promise.all(
      list.map(async (op) => {
        const sent = withExpiry(op);
        return sent?.idempotency_key == null
          ? { ...sent, idempotency_key: await newIdempotencyKey() }
          : sent;
      }),
    );
    const { body } = await this.#transport.request({
      method: 'POST',
      path: '/credits/batch',
      body: { operations: keyed },
      signal: options.signal,
    });
    body?.results?.forEach((result, index) => {
      if (result && typeof result === 'object' && keyed[index]) {
        result.idempotency_key = keyed[index].idempotency_key;
      }
    });
    return body;
  }

  async balance(userId, options = {}) {
    const query = { user_id: userId };
    return (await this.#get('/credits/balance', query, options)).body;
  }

  async history(userId, { limit, offset, signal } = {}) {
    const query = { user_id: userId, limit, offset };
    return (await this.#get('/credits/history', query, { signal })).body;
  }

  /**
   * Reserves `amount` credits for `ttl_seconds` (1–86400, default 300) before work whose cost
   * is known only afterwards; then capture what it cost, or release. A 402 (too few credits
   * available) throws a TallyError: there is no hold to work under.
   */
  async hold(params, options) {
    return (await keyedPost(this.#transport, '/credits/holds', params, options)).body;
  }

  /** `{ amount?, description? }`: spends `amount` (all of the hold by default), releases the rest. */
  async captureHold(holdId, params = {}, options) {
    const path = holdPath(holdId, '/capture');
    return (await keyedPost(this.#transport, path, params, options)).body;
  }

  async releaseHold(holdId, params = {}, options) {
    const path = holdPath(holdId, '/release');
    return (await keyedPost(this.#transport, path, params, options)).body;
  }

  async getHold(holdId, options = {}) {
    return (await this.#get(holdPath(holdId), undefined, options)).body;
  }

  /** The user's active holds, soonest expiry first. */
  async listHolds(userId, options = {}) {
    return (await this.#get('/credits/holds', { user_id: userId }, options)).body;
  }

  /**
   * Holds `amount` credits, runs `fn(hold)` and resolves what it resolves. `hold.capture(cost)`
   * spends what the work cost; a hold `fn` leaves unsettled is released, also when it throws
   * (the error is thrown on). `params` are the hold's other fields (`ttl_seconds`,
   * `description`, …), `options` its `idempotencyKey` and `signal`.
   */
  async withHold(userId, amount, fn, params = {}, options = {}) {
    checkHoldFunction(fn);
    const created = await this.hold({ ...params, user_id: userId, amount }, options);
    const handle = new HoldHandle(created, {
      capture: (cost, more = {}, writeOptions) =>
        this.captureHold(created.hold_id, { ...more, amount: cost }, writeOptions),
      release: (more, writeOptions) => this.releaseHold(created.hold_id, more, writeOptions),
    });
    return runUnderHold(handle, fn);
  }

  #get(path, query, { signal } = {}) {
    return this.#transport.request({ method: 'GET', path, query, signal });
  }
}

/** Client tokens for your users' browsers (see tally-credits-sdk/browser). */
class ClientTokens {
  #transport;

  constructor(transport) {
    this.#transport = transport;
  }

  /** `{ user_id, ttl_seconds? }` → `{ token, user_id, expires_at }`. */
  async create(params, options) {
    return (await keyedPost(this.#transport, '/client-tokens', params, options)).body;
  }

  /** Rotates the app's signing secret: every token issued so far stops working. */
  async revokeAll(options) {
    return (await keyedPost(this.#transport, '/client-tokens/revoke', undefined, options)).body;
  }
}

function withExpiry(params) {
  if (!(params?.expires_at instanceof Date)) return params;
  return { ...params, expires_at: isoMoment('expires_at', params.expires_at) };
}

export function isInsufficientCredits(error) {
  return error instanceof TallyError && error.status === 402 && error.body?.success === false;
}

/**
 * reauth's server API over Tally: `createServerClient({ baseUrl, apiKey })`.
 *
 *   charge(userId, { amount, requestUuid, note })  → POST /credits/deduct, Idempotency-Key: requestUuid
 *   deposit(userId, { amount, requestUuid, note, expiresAt }) → POST /credits/add, the same way
 *   getBalance(userId)                             → GET /credits/balance
 *   getTransactions(userId, { limit, offset })     → GET /credits/history
 *
 * A 402 on charge throws an InsufficientBalanceError, whose message is 'Insufficient balance'.
 *
 * Tally's holds, in the same style (camelCase answers):
 *
 *   hold(userId, { amount, ttlSeconds, requestUuid, note })  → POST /credits/holds
 *   captureHold(holdId, { amount, requestUuid, note })       → POST /credits/holds/{id}/capture
 *   releaseHold(holdId, { requestUuid, note })               → POST /credits/holds/{id}/release
 *   getHold(holdId), listHolds(userId)                       → GET /credits/holds…
 *   withHold(userId, amount, async (hold) => { …; await hold.capture(cost) }, { ttlSeconds, note })
 *
 * A 402 on hold throws an InsufficientBalanceError too.
 *
 * verifyWebhook(rawBody, headers, secret, { tolerance }) checks a webhook Tally sent (see
 * webhooks.js); it needs node:crypto, which is why it lives here and not in the browser entry.
 */
import { camelKeys, transactionsPage } from './case.js';
import { InsufficientBalanceError } from './errors.js';
import { HoldHandle, checkHoldFunction, holdPath, isoMoment, runUnderHold } from './holds.js';
import { isInsufficientCredits, keyedPost } from './tally.js';
import { apiKeyTransport } from './transport.js';

export { TallyError, InsufficientBalanceError, WebhookVerificationError } from './errors.js';
export { verifyWebhook } from './webhooks.js';

export function createServerClient(options = {}) {
  const transport = apiKeyTransport('createServerClient', options);

  const entry = async (path, userId, { amount, requestUuid, note, expiresAt, signal } = {}) => {
    const body = { user_id: userId, amount };
    if (note !== undefined && note !== null) body.description = note;
    if (expiresAt !== undefined && expiresAt !== null) {
      body.expires_at = isoMoment('expiresAt', expiresAt);
    }
    const answer = await keyedPost(transport, path, body, { idempotencyKey: requestUuid, signal });
    const result = { newBalance: answer.body.balance_after, ledgerId: answer.body.ledger_id };
    if (answer.body.grant_id !== undefined) {
      result.grantId = answer.body.grant_id;
      result.expiresAt = answer.body.expires_at;
    }
    return result;
  };
  // POST, with requestUuid as the Idempotency-Key and note as the description; camelCase answer.
  const write = async (path, body, { requestUuid, note, signal } = {}) => {
    if (note !== undefined && note !== null) body.description = note;
    const options = { idempotencyKey: requestUuid, signal };
    return camelKeys((await keyedPost(transport, path, body, options)).body);
  };
  const get = async (path, query, signal) =>
    (await transport.request({ method: 'GET', path, query, signal })).body;
  const insufficient = (error) =>
    isInsufficientCredits(error)
      ? new InsufficientBalanceError({ requestId: error.requestId, body: error.body })
      : error;

  const client = {
    async charge(userId, params) {
      try {
        return await entry('/credits/deduct', userId, params);
      } catch (error) {
        throw insufficient(error);
      }
    },

    deposit(userId, params) {
      return entry('/credits/add', userId, params);
    },

    async getBalance(userId, { signal } = {}) {
      const body = await get('/credits/balance', { user_id: userId }, signal);
      return {
        balance: body.balance,
        userId: body.user_id,
        updatedAt: body.updated_at,
        available: body.available,
        held: body.held,
        grants: (body.grants ?? []).map(camelKeys),
      };
    },

    async getTransactions(userId, { limit, offset, signal } = {}) {
      const query = { user_id: userId, limit, offset };
      const { body } = await transport.request({
        method: 'GET',
        path: '/credits/history',
        query,
        signal,
      });
      return transactionsPage(body, body.entries);
    },

    async hold(userId, { amount, ttlSeconds, referenceId, metadata, ...rest } = {}) {
      const body = { user_id: userId, amount };
      if (ttlSeconds !== undefined) body.ttl_seconds = ttlSeconds;
      if (referenceId !== undefined) body.reference_id = referenceId;
      if (metadata !== undefined) body.metadata = metadata;
      try {
        return await write('/credits/holds', body, rest);
      } catch (error) {
        throw insufficient(error);
      }
    },

    captureHold(holdId, { amount, ...rest } = {}) {
      const body = amount === undefined ? {} : { amount };
      return write(holdPath(holdId, '/capture'), body, rest);
    },

    releaseHold(holdId, params = {}) {
      return write(holdPath(holdId, '/release'), {}, params);
    },

    async getHold(holdId, { signal } = {}) {
      return camelKeys(await get(holdPath(holdId), undefined, signal));
    },

    async listHolds(userId, { signal } = {}) {
      const body = await get('/credits/holds', { user_id: userId }, signal);
      return { userId: body.user_id, holds: body.holds.map(camelKeys) };
    },

    async withHold(userId, amount, fn, params = {}) {
      checkHoldFunction(fn);
      const created = await client.hold(userId, { ...params, amount });
      const handle = new HoldHandle(created, {
        capture: (cost, more = {}) => client.captureHold(created.holdId, { ...more, amount: cost }),
        release: (more) => client.releaseHold(created.holdId, more),
      });
      return runUnderHold(handle, fn);
    },
  };
  return client;
}

/**
 * reauth's server API over Tally: `createServerClient({ baseUrl, apiKey })`.
 *
 *   charge(userId, { amount, requestUuid, note })  → POST /credits/deduct, Idempotency-Key: requestUuid
 *   deposit(userId, { amount, requestUuid, note }) → POST /credits/add, the same way
 *   getBalance(userId)                             → GET /credits/balance
 *   getTransactions(userId, { limit, offset })     → GET /credits/history
 *
 * A 402 on charge throws an InsufficientBalanceError, whose message is 'Insufficient balance'.
 */
import { transactionsPage } from './case.js';
import { InsufficientBalanceError } from './errors.js';
import { isInsufficientCredits, keyedPost } from './tally.js';
import { apiKeyTransport } from './transport.js';

export { TallyError, InsufficientBalanceError } from './errors.js';

export function createServerClient(options = {}) {
  const transport = apiKeyTransport('createServerClient', options);

  const entry = async (path, userId, { amount, requestUuid, note, signal } = {}) => {
    const body = { user_id: userId, amount };
    if (note !== undefined && note !== null) body.description = note;
    const answer = await keyedPost(transport, path, body, { idempotencyKey: requestUuid, signal });
    return { newBalance: answer.body.balance_after, ledgerId: answer.body.ledger_id };
  };

  return {
    async charge(userId, params) {
      try {
        return await entry('/credits/deduct', userId, params);
      } catch (error) {
        if (isInsufficientCredits(error)) {
          throw new InsufficientBalanceError({ requestId: error.requestId, body: error.body });
        }
        throw error;
      }
    },

    deposit(userId, params) {
      return entry('/credits/add', userId, params);
    },

    async getBalance(userId, { signal } = {}) {
      const query = { user_id: userId };
      const { body } = await transport.request({
        method: 'GET',
        path: '/credits/balance',
        query,
        signal,
      });
      return { balance: body.balance, userId: body.user_id, updatedAt: body.updated_at };
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
  };
}

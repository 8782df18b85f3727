/**
 * reauth's browser API over Tally's /client/... routes, with a client token your backend mints
 * (POST /client-tokens) and hands over through `getToken`:
 *
 *   const tally = createBrowserClient({ baseUrl, getToken: () => fetch('/api/credits-token').then(r => r.json()) })
 *   const { balance } = await tally.getBalance()
 *
 * The token is cached; getToken is asked again when it has expired or the API answers 401
 * (that request is then sent once more with the new token). Answers come back in camelCase.
 *
 * Idempotency: a purchase carries its key in the body (`idempotency_key`, the caller's or one
 * made before the first attempt, the same on every retry), which is where /client/purchases
 * reads it. No Idempotency-Key header is sent from here: the /client routes do not read one,
 * and the API's CORS preflight allows only Authorization and Content-Type, so a browser would
 * refuse to send a request that carried it.
 */
import { camelKeys, transactionsPage } from './case.js';
import { TallyError } from './errors.js';
import { newIdempotencyKey } from './idempotency.js';
import { TokenCache } from './token.js';
import { Transport } from './transport.js';

export { TallyError } from './errors.js';

export function createBrowserClient(options = {}) {
  const { baseUrl, getToken, timeoutMs, maxRetries, fetch } = options;
  const tokens = new TokenCache(getToken);
  const transport = new Transport({ baseUrl, timeoutMs, maxRetries, fetch });

  const call = async (request) => {
    const token = await tokens.current();
    try {
      return (await transport.request({ ...request, authorization: `Bearer ${token}` })).body;
    } catch (error) {
      if (!(error instanceof TallyError) || error.status !== 401) throw error;
      tokens.discard(token);
      const fresh = await tokens.current();
      return (await transport.request({ ...request, authorization: `Bearer ${fresh}` })).body;
    }
  };
  const get = (path, query) => call({ method: 'GET', path, query });
  const send = (method, path, body) => call({ method, path, body });
  const cards = (list) => (list ?? []).map(camelKeys);
  const topUpBody = ({ enabled, thresholdCents, purchaseAmountCents } = {}) => ({
    enabled,
    threshold_cents: thresholdCents,
    purchase_amount_cents: purchaseAmountCents,
  });

  return {
    /** `{ balance, userId, updatedAt }` */
    async getBalance() {
      return camelKeys(await get('/client/balance'));
    },

    /** `{ transactions: [{ id, amountDelta, reason, balanceAfter, createdAt, kind, … }], hasMore }` */
    async getTransactions({ limit, offset } = {}) {
      const page = await get('/client/transactions', { limit, offset });
      return transactionsPage(page, page.transactions);
    },

    /** The app's credits configuration, camelCase; `overdrawEnabled` is `overdraft_enabled`. */
    async getCreditsConfig() {
      const config = await get('/client/config');
      return { ...camelKeys(config), overdrawEnabled: config.overdraft_enabled };
    },

    /** `[{ id, provider, methodType, cardBrand, cardLast4, cardExpMonth, cardExpYear, priority }]` */
    async getPaymentMethods() {
      return cards((await get('/client/payment-methods')).payment_methods);
    },

    /** `{ clientSecret, setupIntentId }`: confirm with Stripe.js, then savePaymentMethod. */
    async createSetupIntent() {
      return camelKeys(await send('POST', '/client/payment-methods/setup-intent'));
    },

    /** Records the card of a SetupIntent Stripe.js confirmed; resolves the saved card. */
    async savePaymentMethod(setupIntentId) {
      const body = { setup_intent_id: setupIntentId };
      return camelKeys(await send('POST', '/client/payment-methods', body));
    },

    /** `{ success: true, deleted: id }` */
    async deletePaymentMethod(id) {
      return camelKeys(
        await send('DELETE', `/client/payment-methods/${encodeURIComponent(id)}`),
      );
    },

    /** Every card once, the first charged first; resolves the cards in their new order. */
    async reorderPaymentMethods(ids) {
      const body = { payment_method_ids: ids };
      return cards((await send('PUT', '/client/payment-methods/order', body)).payment_methods);
    },

    /**
     * `{ creditsPurchased, newBalance, paymentIntentId, status, … }`. `status:
     * 'requires_action'` comes with `clientSecret` for stripe.handleCardAction; a decline
     * throws a TallyError (402, `body.decline_code`).
     */
    async purchaseCredits({ amountCents, paymentMethodId, idempotencyKey } = {}) {
      const body = {
        amount_cents: amountCents,
        payment_method_id: paymentMethodId,
        idempotency_key: idempotencyKey ?? (await newIdempotencyKey()),
      };
      return camelKeys(await send('POST', '/client/purchases', body));
    },

    /** `{ enabled, thresholdCents, purchaseAmountCents, status, lastFailureReason, … }` */
    async getAutoTopUpStatus() {
      return camelKeys(await get('/client/auto-top-up'));
    },

    /** Saves the settings (which starts afresh: `active`, three retries); resolves the status. */
    async updateAutoTopUp(settings) {
      return camelKeys(await send('PUT', '/client/auto-top-up', topUpBody(settings)));
    },
  };
}

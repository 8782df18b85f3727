// createBrowserClient: reauth's browser API over /client/..., with client tokens, on the live stack.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { TallyError, createBrowserClient } from '../src/browser.js';
import { tokenExpiresAt } from '../src/token.js';
import {
  TALLY_API_KEY,
  TALLY_BILLING_API_KEY,
  TALLY_STRIPE_URL,
  TALLY_URL,
  billing,
  live,
  mintToken,
  newUser,
  recordingFetch,
  sleep,
} from '../test-support/env.js';

async function serverPost(path, body, apiKey = TALLY_API_KEY) {
  const response = await fetch(`${TALLY_URL}${path}`, {
    method: path === '/credits/config' ? 'PATCH' : 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

/** A browser for `user`: getToken mints through the backend and counts its calls. */
function browserFor(user, { ttlSeconds = 3600, apiKey = TALLY_API_KEY, fetch } = {}) {
  const minted = [];
  const getToken = async () => {
    const token = await mintToken(user, { ttlSeconds, apiKey });
    minted.push(token);
    return token;
  };
  const client = createBrowserClient({ baseUrl: TALLY_URL, getToken, fetch });
  return { client, minted };
}

async function rejects(promise, status) {
  const error = await promise.then(
    () => assert.fail(`expected a ${status}`),
    (e) => e,
  );
  assert.ok(error instanceof TallyError, `not a TallyError: ${error}`);
  assert.equal(error.status, status, error.message);
  assert.match(error.requestId, /\S/);
  assert.equal(typeof error.error, 'string');
  return error;
}

describe('createBrowserClient', live, () => {
  test("reads the user's balance and transactions, camelCase", async () => {
    const user = newUser('browser');
    await serverPost('/credits/add', { user_id: user, amount: 100, description: 'gift', metadata: { snake_key: 1 } });
    await serverPost('/credits/deduct', { user_id: user, amount: 30, description: 'run' });
    const { client, minted } = browserFor(user);

    const balance = await client.getBalance();
    assert.equal(balance.balance, 70);
    assert.equal(balance.userId, user);
    const { transactions, hasMore } = await client.getTransactions({ limit: 10 });
    assert.equal(hasMore, false);
    assert.deepEqual(
      transactions.map(({ amountDelta, reason, balanceAfter, kind }) => [amountDelta, reason, balanceAfter, kind]),
      [
        [-30, 'run', 70, 'deduct'],
        [100, 'gift', 100, 'add'],
      ],
    );
    assert.match(transactions[0].id, /^[0-9a-f-]{36}$/);
    assert.ok(!Number.isNaN(Date.parse(transactions[0].createdAt)));
    assert.deepEqual(transactions[1].metadata, { snake_key: 1 }); // what was stored, untouched
    const page = await client.getTransactions({ limit: 1, offset: 1 });
    assert.deepEqual(page.transactions.map((t) => t.reason), ['gift']);
    assert.equal(minted.length, 1, 'the token is cached between calls');
  });

  test('getCreditsConfig is camelCase, with overdrawEnabled', async () => {
    const { client } = browserFor(newUser('browser'));
    const config = await client.getCreditsConfig();
    assert.equal(config.displayName, 'Credits');
    assert.equal(config.creditsEnabled, true);
    assert.equal(config.displaySymbolPosition, 'left');
    assert.equal(typeof config.minPurchaseCents, 'number');
    assert.equal(config.overdrawEnabled, config.overdraftEnabled);
    assert.equal(typeof config.overdrawEnabled, 'boolean');
    assert.ok(!('overdraft_enabled' in config));
  });

  test('cards, purchases and setup intents need Stripe: TallyErrors with status and request id', async () => {
    const { client } = browserFor(newUser('browser'));
    assert.deepEqual(await client.getPaymentMethods(), []);
    assert.deepEqual(await client.reorderPaymentMethods([]), []);
    const noStripe = await rejects(client.createSetupIntent(), 400);
    assert.match(noStripe.error, /Stripe secret key/);
    await rejects(client.savePaymentMethod('seti_123'), 400);
    await rejects(client.deletePaymentMethod('pm_123'), 400);
    await rejects(client.purchaseCredits({ amountCents: 1000, paymentMethodId: 'pm_123' }), 403);
    await rejects(client.updateAutoTopUp({ enabled: true, thresholdCents: 500, purchaseAmountCents: 2000 }), 403);
  });

  test('auto top-up: read, and switched off the way reauth does it', async () => {
    const { client } = browserFor(newUser('browser'));
    const status = await client.getAutoTopUpStatus();
    assert.equal(status.enabled, false);
    assert.equal(typeof status.thresholdCents, 'number');
    const saved = await client.updateAutoTopUp({ enabled: false, thresholdCents: 0, purchaseAmountCents: 0 });
    assert.deepEqual(
      [saved.enabled, saved.thresholdCents, saved.purchaseAmountCents, saved.status, saved.retriesRemaining],
      [false, 0, 0, 'active', 3],
    );
  });

  test('sends only headers the CORS preflight of /client/... allows', async () => {
    const spy = recordingFetch();
    const user = newUser('cors');
    const client = createBrowserClient({ baseUrl: TALLY_URL, fetch: spy, getToken: () => mintToken(user) });
    await client.getBalance();
    await client.getTransactions({ limit: 1 });
    await client.getCreditsConfig();
    await client.getPaymentMethods();
    await client.reorderPaymentMethods([]);
    await client.updateAutoTopUp({ enabled: false, thresholdCents: 0, purchaseAmountCents: 0 });
    await client.createSetupIntent().catch(() => {});
    await client.purchaseCredits({ amountCents: 1000, paymentMethodId: 'pm_1' }).catch(() => {});
    await client.deletePaymentMethod('pm_1').catch(() => {});
    const sent = new Set(spy.calls.flatMap((call) => Object.keys(call.headers)));
    // Accept is CORS-safelisted; the API's preflight allows Authorization and Content-Type.
    assert.deepEqual([...sent].sort(), ['Accept', 'Authorization', 'Content-Type']);
    assert.deepEqual(
      [...new Set(spy.calls.map((call) => call.method))].sort(),
      ['DELETE', 'GET', 'POST', 'PUT'],
    );
  });

  test('getToken may give the { token } that POST /client-tokens answers', async () => {
    const user = newUser('browser');
    const client = createBrowserClient({
      baseUrl: TALLY_URL,
      getToken: async () => {
        const response = await fetch(`${TALLY_URL}/client-tokens`, {
          method: 'POST',
          headers: { Authorization: `Bearer ${TALLY_API_KEY}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ user_id: user, ttl_seconds: 900 }),
        });
        return response.json();
      },
    });
    assert.equal((await client.getBalance()).userId, user);
  });

  test('an expired token is replaced before the request: getToken is asked again', async () => {
    const user = newUser('expiry');
    const spy = recordingFetch();
    let calls = 0;
    const client = createBrowserClient({
      baseUrl: TALLY_URL,
      fetch: spy,
      // The first token lives 2 seconds, later ones an hour.
      getToken: () => mintToken(user, { ttlSeconds: (calls += 1) === 1 ? 2 : 3600 }),
    });
    await client.getBalance();
    await client.getBalance();
    assert.equal(calls, 1);
    const first = spy.calls[0].headers.Authorization;
    assert.ok(tokenExpiresAt(first.slice('Bearer '.length)) <= Date.now() + 2000);

    await sleep(2100); // past its expiry
    assert.equal((await client.getBalance()).userId, user);
    assert.equal(calls, 2);
    const last = spy.calls.at(-1);
    assert.notEqual(last.headers.Authorization, first);
    // Caught before sending: the expired token never reached the API (no 401 on the way).
    assert.deepEqual(spy.calls.map((c) => c.status), [200, 200, 200]);
    await client.getTransactions();
    assert.equal(calls, 2);
  });

  test('a 401 makes it ask for a new token and send the request once more', async () => {
    const user = newUser('refused');
    const spy = recordingFetch();
    const good = await mintToken(user);
    // A token the API refuses although it has not expired: its signature is wrong.
    const forged = `${good.slice(0, good.lastIndexOf('.') + 1)}${'A'.repeat(43)}`;
    const tokens = [forged, good];
    const client = createBrowserClient({ baseUrl: TALLY_URL, fetch: spy, getToken: () => tokens.shift() });
    const balance = await client.getBalance();
    assert.equal(balance.userId, user);
    assert.deepEqual(spy.calls.map((c) => c.status), [401, 200]);
    assert.equal(tokens.length, 0);
    assert.equal(spy.calls[1].headers.Authorization, `Bearer ${good}`);
  });

  test('a second 401 is thrown: one retry, no loop', async () => {
    const spy = recordingFetch();
    let calls = 0;
    const client = createBrowserClient({
      baseUrl: TALLY_URL,
      fetch: spy,
      getToken: () => {
        calls += 1;
        return 'tct_bm90IGEgdG9rZW4.c2lnbmF0dXJl';
      },
    });
    const error = await rejects(client.getBalance(), 401);
    assert.match(error.error, /client token/);
    assert.equal(calls, 2);
    assert.equal(spy.calls.length, 2);
  });

  test('concurrent calls share one getToken', async () => {
    const user = newUser('concurrent');
    let calls = 0;
    const client = createBrowserClient({
      baseUrl: TALLY_URL,
      getToken: async () => {
        calls += 1;
        await sleep(50);
        return mintToken(user);
      },
    });
    const results = await Promise.all([client.getBalance(), client.getTransactions(), client.getCreditsConfig()]);
    assert.equal(results[0].userId, user);
    assert.equal(calls, 1);
  });

  test('a getToken that fails rejects the call, and the next call asks again', async () => {
    const user = newUser('flaky');
    let calls = 0;
    const client = createBrowserClient({
      baseUrl: TALLY_URL,
      getToken: () => {
        calls += 1;
        if (calls === 1) throw new Error('backend down');
        return mintToken(user);
      },
    });
    await assert.rejects(client.getBalance(), /backend down/);
    assert.equal((await client.getBalance()).userId, user);
    assert.equal(calls, 2);
  });
});

describe('tokenExpiresAt', () => {
  test("reads the payload's exp (epoch seconds) as milliseconds", () => {
    const payload = Buffer.from(JSON.stringify({ app: 'a', sub: 'ü', iat: 1, exp: 1700000000 })).toString('base64url');
    assert.equal(tokenExpiresAt(`tct_${payload}.sig`), 1700000000 * 1000);
    assert.equal(tokenExpiresAt('tct_%%%.sig'), undefined);
    assert.equal(tokenExpiresAt('not-a-token'), undefined);
    assert.equal(tokenExpiresAt(undefined), undefined);
  });
});

// With an app whose Stripe account is localstripe: Stripe.js is played by posting to it.
const VISA = '4242424242424242';
const CHARGE_DECLINED = '4000000000000341';

async function confirmCardSetup(clientSecret, number) {
  const setupIntentId = clientSecret.split('_secret_')[0];
  const response = await fetch(`${TALLY_STRIPE_URL}/v1/setup_intents/${setupIntentId}/confirm`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      key: 'pk_test_tally',
      client_secret: clientSecret,
      'payment_method_data[type]': 'card',
      'payment_method_data[card][number]': number,
      'payment_method_data[card][exp_month]': '12',
      'payment_method_data[card][exp_year]': '2031',
      'payment_method_data[card][cvc]': '123',
    }),
  });
  assert.equal(response.status, 200, await response.clone().text());
}

async function saveCard(client, number) {
  const intent = await client.createSetupIntent();
  assert.match(intent.setupIntentId, /^seti_/);
  assert.match(intent.clientSecret, /_secret_/);
  await confirmCardSetup(intent.clientSecret, number);
  return client.savePaymentMethod(intent.setupIntentId);
}

describe('createBrowserClient with Stripe (localstripe)', billing, () => {
  test('cards: save, list, reorder, delete', async () => {
    const { client } = browserFor(newUser('cards'), { apiKey: TALLY_BILLING_API_KEY });
    const visa = await saveCard(client, VISA);
    assert.deepEqual(
      { ...visa, id: undefined },
      {
        id: undefined,
        provider: 'stripe',
        methodType: 'card',
        cardBrand: 'visa',
        cardLast4: '4242',
        cardExpMonth: 12,
        cardExpYear: 2031,
        priority: 1,
      },
    );
    const backup = await saveCard(client, CHARGE_DECLINED);
    assert.equal(backup.priority, 2);
    const listed = await client.getPaymentMethods();
    assert.deepEqual(listed.map((c) => [c.id, c.priority]), [[visa.id, 1], [backup.id, 2]]);

    const reordered = await client.reorderPaymentMethods([backup.id, visa.id]);
    assert.deepEqual(reordered.map((c) => c.cardLast4), ['0341', '4242']);
    const wrong = await rejects(client.reorderPaymentMethods([visa.id]), 400);
    assert.match(wrong.error, /exactly once/);

    assert.deepEqual(await client.deletePaymentMethod(backup.id), { success: true, deleted: backup.id });
    assert.deepEqual((await client.getPaymentMethods()).map((c) => c.id), [visa.id]);
    await rejects(client.deletePaymentMethod(backup.id), 404);
  });

  test('purchaseCredits: { creditsPurchased, newBalance, paymentIntentId }, once per key', async () => {
    const user = newUser('buyer');
    const { client } = browserFor(user, { apiKey: TALLY_BILLING_API_KEY });
    const visa = await saveCard(client, VISA);
    const key = `purchase-${user}`;
    const bought = await client.purchaseCredits({ amountCents: 1000, paymentMethodId: visa.id, idempotencyKey: key });
    assert.equal(bought.success, true);
    assert.equal(bought.status, 'succeeded');
    assert.equal(bought.creditsPurchased, 1000); // $10 at 100 credits per dollar
    assert.equal(bought.newBalance, 1000);
    assert.match(bought.paymentIntentId, /^pi_/);

    const again = await client.purchaseCredits({ amountCents: 1000, paymentMethodId: visa.id, idempotencyKey: key });
    assert.equal(again.paymentIntentId, bought.paymentIntentId);
    assert.equal((await client.getBalance()).balance, 1000);

    // No key of the caller's: one is made, and this is a purchase of its own.
    const more = await client.purchaseCredits({ amountCents: 500, paymentMethodId: visa.id });
    assert.equal(more.newBalance, 1500);
    const { transactions } = await client.getTransactions();
    assert.deepEqual(transactions.map((t) => t.amountDelta), [500, 1000]);
  });

  test('a declined card is a 402 TallyError with the decline code', async () => {
    const { client } = browserFor(newUser('declined'), { apiKey: TALLY_BILLING_API_KEY });
    const card = await saveCard(client, CHARGE_DECLINED);
    const error = await rejects(client.purchaseCredits({ amountCents: 1000, paymentMethodId: card.id }), 402);
    assert.ok(error.body.decline_code);
    assert.equal((await client.getBalance()).balance, 0);
  });

  test('auto top-up: enable and disable', async () => {
    const { client } = browserFor(newUser('auto'), { apiKey: TALLY_BILLING_API_KEY });
    const on = await client.updateAutoTopUp({ enabled: true, thresholdCents: 500, purchaseAmountCents: 2000 });
    assert.deepEqual([on.enabled, on.thresholdCents, on.purchaseAmountCents, on.status], [true, 500, 2000, 'active']);
    const read = await client.getAutoTopUpStatus();
    assert.equal(read.enabled, true);
    assert.equal(read.lastFailureReason, null);
    const off = await client.updateAutoTopUp({ enabled: false, thresholdCents: 0, purchaseAmountCents: 0 });
    assert.equal(off.enabled, false);
  });

  test('getCreditsConfig shows what the app set, overdraft as overdrawEnabled', async () => {
    const { client } = browserFor(newUser('config'), { apiKey: TALLY_BILLING_API_KEY });
    await serverPost('/credits/config', { overdraft_enabled: true, overdraft_limit: 50 }, TALLY_BILLING_API_KEY);
    try {
      await sleep(1100); // running API processes pick config changes up within a second
      const config = await client.getCreditsConfig();
      assert.equal(config.overdrawEnabled, true);
      assert.equal(config.overdraftLimit, 50);
      assert.equal(config.creditsPerDollar, 100);
      assert.equal(config.manualTopUpAvailable, true);
    } finally {
      await serverPost('/credits/config', { overdraft_enabled: false, overdraft_limit: 0 }, TALLY_BILLING_API_KEY);
    }
  });
});

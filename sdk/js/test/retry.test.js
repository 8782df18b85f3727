// The retry policy, timeouts and idempotency keys, against a fake Tally on 127.0.0.1.
import assert from 'node:assert/strict';
import { webcrypto } from 'node:crypto';
import { afterEach, describe, test } from 'node:test';

import { Tally, TallyError } from '../src/index.js';
import { createBrowserClient } from '../src/browser.js';
import { createServerClient } from '../src/server.js';
import { newIdempotencyKey } from '../src/idempotency.js';
import { backoffMs, parseRetryAfter } from '../src/transport.js';
import { fakeServer } from '../test-support/fake-server.js';

const API_KEY = 'tally_fake_key_for_the_retry_tests';
const OK = { status: 200, headers: { 'X-Request-Id': 'req-ok' } };
const UNAVAILABLE = {
  status: 503,
  headers: { 'Retry-After': '1', 'X-Request-Id': 'req-503' },
  body: { success: false, error: 'Redis is unreachable' },
};
const deducted = { success: true, ledger_id: 'l-1', balance_before: 10, balance_after: 7 };

let server;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

function tallyAt(url, options = {}) {
  return new Tally({ apiKey: API_KEY, baseUrl: url, ...options });
}

describe('retries', () => {
  test('503 with Retry-After, then 200: waits, resends the same Idempotency-Key', async () => {
    server = await fakeServer((attempt) =>
      attempt === 1 ? UNAVAILABLE : { ...OK, body: deducted },
    );
    const tally = tallyAt(server.url);
    const result = await tally.credits.deduct({ user_id: 'u1', amount: 3 });

    assert.deepEqual(result, deducted);
    assert.equal(server.requests.length, 2);
    const [first, second] = server.requests;
    assert.match(first.headers['idempotency-key'], /^[0-9a-f-]{36}$/);
    assert.equal(second.headers['idempotency-key'], first.headers['idempotency-key']);
    assert.deepEqual(second.body, first.body);
    assert.ok(second.at - first.at >= 950, `waited ${second.at - first.at} ms, not Retry-After`);
    assert.equal(first.headers.authorization, `Bearer ${API_KEY}`);
    assert.equal(first.headers['content-type'], 'application/json');
  });

  test("the caller's key is the one sent on every attempt", async () => {
    server = await fakeServer((attempt) =>
      attempt < 3 ? { ...UNAVAILABLE, headers: { 'Retry-After': '0' } } : { ...OK, body: {} },
    );
    await tallyAt(server.url).credits.add(
      { user_id: 'u1', amount: 5 },
      { idempotencyKey: 'order-42-credits' },
    );
    assert.deepEqual(
      server.requests.map((r) => r.headers['idempotency-key']),
      ['order-42-credits', 'order-42-credits', 'order-42-credits'],
    );
  });

  test('429 is retried too, honouring Retry-After', async () => {
    server = await fakeServer((attempt) =>
      attempt === 1
        ? { status: 429, headers: { 'Retry-After': '0' }, body: { error: 'slow down' } }
        : { ...OK, body: { user_id: 'u1', balance: 4, updated_at: null } },
    );
    const balance = await tallyAt(server.url).credits.balance('u1');
    assert.equal(balance.balance, 4);
    assert.equal(server.requests.length, 2);
    assert.equal(server.requests[0].url, '/credits/balance?user_id=u1');
  });

  test('gives up after maxRetries with a TallyError carrying status, message, request id', async () => {
    server = await fakeServer(() => ({ ...UNAVAILABLE, headers: { ...UNAVAILABLE.headers, 'Retry-After': '0' } }));
    const error = await tallyAt(server.url, { maxRetries: 2 })
      .credits.add({ user_id: 'u1', amount: 1 })
      .catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.status, 503);
    assert.equal(error.error, 'Redis is unreachable');
    assert.equal(error.requestId, 'req-503');
    assert.equal(server.requests.length, 3); // the first attempt and two retries
    const keys = new Set(server.requests.map((r) => r.headers['idempotency-key']));
    assert.equal(keys.size, 1);
  });

  test('maxRetries: 0 sends once', async () => {
    server = await fakeServer(() => UNAVAILABLE);
    const error = await tallyAt(server.url, { maxRetries: 0 })
      .credits.balance('u1')
      .catch((e) => e);
    assert.equal(error.status, 503);
    assert.equal(server.requests.length, 1);
  });

  test('other failures are not retried', async () => {
    for (const status of [400, 401, 409, 422, 500, 502]) {
      server = await fakeServer(() => ({ status, body: { success: false, error: `no (${status})` } }));
      const error = await tallyAt(server.url)
        .credits.add({ user_id: 'u1', amount: 1 })
        .catch((e) => e);
      assert.equal(error.status, status);
      assert.equal(error.error, `no (${status})`);
      assert.equal(server.requests.length, 1, `${status} was retried`);
      await server.close();
      server = undefined;
    }
  });

  test('a broken connection is retried with the same key', async () => {
    server = await fakeServer((attempt) => (attempt === 1 ? 'drop' : { ...OK, body: deducted }));
    const result = await tallyAt(server.url).credits.deduct({ user_id: 'u1', amount: 3 });
    assert.deepEqual(result, deducted);
    assert.equal(server.requests.length, 2);
    assert.equal(
      server.requests[1].headers['idempotency-key'],
      server.requests[0].headers['idempotency-key'],
    );
  });

  test('no answer at all: a network TallyError (status 0) after the retries', async () => {
    server = await fakeServer(() => 'drop');
    const error = await tallyAt(server.url, { maxRetries: 1 })
      .credits.add({ user_id: 'u1', amount: 1 })
      .catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.status, 0);
    assert.equal(error.code, 'network_error');
    assert.equal(error.requestId, null);
    assert.equal(server.requests.length, 2);
  });

  test('a timeout aborts the attempt; the retry carries the same key', async () => {
    server = await fakeServer((attempt) => (attempt === 1 ? 'hang' : { ...OK, body: deducted }));
    const started = performance.now();
    const result = await tallyAt(server.url, { timeoutMs: 300 }).credits.deduct({
      user_id: 'u1',
      amount: 3,
    });
    assert.deepEqual(result, deducted);
    assert.ok(performance.now() - started >= 290);
    assert.equal(server.requests.length, 2);
    assert.equal(
      server.requests[1].headers['idempotency-key'],
      server.requests[0].headers['idempotency-key'],
    );
  });

  test('a timeout with no retries left is a TallyError with code "timeout"', async () => {
    server = await fakeServer(() => 'hang');
    const error = await tallyAt(server.url, { timeoutMs: 200, maxRetries: 0 })
      .credits.balance('u1')
      .catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.code, 'timeout');
    assert.equal(error.status, 0);
    assert.match(error.message, /no answer within 200 ms/);
  });

  test("the caller's AbortSignal stops the call, also while it waits to retry", async () => {
    server = await fakeServer(() => ({ ...UNAVAILABLE, headers: { 'Retry-After': '30' } }));
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 200);
    const started = performance.now();
    const error = await tallyAt(server.url)
      .credits.add({ user_id: 'u1', amount: 1 }, { signal: controller.signal })
      .catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.code, 'aborted');
    assert.ok(performance.now() - started < 5000);
    assert.equal(server.requests.length, 1);
  });
});

describe('batch', () => {
  test('no Idempotency-Key header; every operation gets a key, kept across retries', async () => {
    const applied = (i) => ({ success: true, ledger_id: `l-${i}`, user_id: 'u', amount: 1, balance_before: 0, balance_after: 1, replayed: false });
    server = await fakeServer((attempt) =>
      attempt === 1
        ? { ...UNAVAILABLE, headers: { 'Retry-After': '0' } }
        : { ...OK, body: { success: true, results: [applied(0), applied(1), applied(2)] } },
    );
    const operations = [
      { type: 'add', user_id: 'u', amount: 1 },
      { type: 'deduct', user_id: 'u', amount: 1, idempotency_key: 'mine-7' },
      { type: 'add', user_id: 'v', amount: 2, description: 'x' },
    ];
    const result = await tallyAt(server.url).credits.batch(operations);

    assert.equal(server.requests.length, 2);
    for (const request of server.requests) {
      assert.equal(request.headers['idempotency-key'], undefined);
    }
    const [first, second] = server.requests.map((r) => r.body.operations);
    assert.deepEqual(second, first);
    assert.match(first[0].idempotency_key, /^[0-9a-f-]{36}$/);
    assert.equal(first[1].idempotency_key, 'mine-7');
    assert.notEqual(first[2].idempotency_key, first[0].idempotency_key);
    assert.equal(first[2].description, 'x');
    // The caller's operations are left as they were; the results say which key each had.
    assert.equal(operations[0].idempotency_key, undefined);
    assert.deepEqual(
      result.results.map((r) => r.idempotency_key),
      first.map((op) => op.idempotency_key),
    );
  });
});

describe('every client shares the policy', () => {
  test('server client: 503 then 200, the same requestUuid on both attempts', async () => {
    server = await fakeServer((attempt) =>
      attempt === 1 ? UNAVAILABLE : { ...OK, body: { ...deducted, balance_after: 90 } },
    );
    const reauth = createServerClient({ apiKey: API_KEY, baseUrl: server.url });
    const { newBalance } = await reauth.charge('u1', { amount: 10, requestUuid: 'api-call-1', note: 'n' });
    assert.equal(newBalance, 90);
    assert.deepEqual(
      server.requests.map((r) => [r.url, r.headers['idempotency-key']]),
      [
        ['/credits/deduct', 'api-call-1'],
        ['/credits/deduct', 'api-call-1'],
      ],
    );
    assert.deepEqual(server.requests[0].body, { user_id: 'u1', amount: 10, description: 'n' });
  });

  test('browser client: 503 then 200, a purchase keeps its idempotency_key', async () => {
    const purchased = {
      success: true,
      status: 'succeeded',
      purchase_id: 'p1',
      amount_cents: 1000,
      credits_purchased: 1000,
      new_balance: 1500,
      payment_intent_id: 'pi_1',
    };
    server = await fakeServer((attempt) => (attempt === 1 ? UNAVAILABLE : { ...OK, body: purchased }));
    const browser = createBrowserClient({ baseUrl: server.url, getToken: () => 'tct_fake.sig' });
    const result = await browser.purchaseCredits({ amountCents: 1000, paymentMethodId: 'pm_1' });
    assert.equal(result.creditsPurchased, 1000);
    assert.equal(result.newBalance, 1500);
    assert.equal(result.paymentIntentId, 'pi_1');
    const [first, second] = server.requests;
    assert.equal(server.requests.length, 2);
    assert.match(first.body.idempotency_key, /^[0-9a-f-]{36}$/);
    assert.deepEqual(second.body, first.body);
    assert.equal(first.headers.authorization, 'Bearer tct_fake.sig');
    // CORS lets a browser send only Authorization and Content-Type to /client/...
    assert.equal(first.headers['idempotency-key'], undefined);
  });
});

describe('the API key', () => {
  test('is in no error and not shown by inspecting a client', async () => {
    const { inspect } = await import('node:util');
    server = await fakeServer(() => ({ status: 401, body: { success: false, error: 'invalid API key' } }));
    const tally = tallyAt(server.url);
    const reauth = createServerClient({ apiKey: API_KEY, baseUrl: server.url });
    for (const client of [tally, tally.credits, reauth]) {
      assert.ok(!inspect(client, { showHidden: true, depth: 10 }).includes(API_KEY));
      assert.ok(!JSON.stringify(client).includes(API_KEY));
    }
    const error = await tally.credits.add({ user_id: 'u', amount: 1 }).catch((e) => e);
    assert.equal(error.status, 401);
    assert.ok(!inspect(error, { showHidden: true, depth: 10 }).includes(API_KEY));
    assert.ok(!error.message.includes(API_KEY) && !error.stack.includes(API_KEY));
    const offline = await tallyAt('http://127.0.0.1:9', { maxRetries: 0 })
      .credits.add({ user_id: 'u', amount: 1 })
      .catch((e) => e);
    assert.equal(offline.code, 'network_error');
    assert.ok(!inspect(offline, { showHidden: true, depth: 10 }).includes(API_KEY));
  });

  test('clients refuse to start without their settings', () => {
    assert.throws(() => new Tally({ baseUrl: 'http://127.0.0.1:1' }), /apiKey is required/);
    assert.throws(() => new Tally({ apiKey: API_KEY }), /baseUrl is required/);
    assert.throws(() => new Tally({ apiKey: API_KEY, baseUrl: 'not a url' }), /not a URL/);
    assert.throws(
      () => new Tally({ apiKey: API_KEY, baseUrl: 'http://127.0.0.1:1', maxRetries: -1 }),
      /maxRetries/,
    );
    assert.throws(() => createServerClient({ baseUrl: 'http://127.0.0.1:1' }), /apiKey/);
    assert.throws(() => createBrowserClient({ baseUrl: 'http://127.0.0.1:1' }), /getToken/);
  });
});

describe('policy details', () => {
  test('Retry-After: seconds or an HTTP date, capped at a minute', () => {
    assert.equal(parseRetryAfter('1'), 1000);
    assert.equal(parseRetryAfter('0'), 0);
    assert.equal(parseRetryAfter('3600'), 60_000);
    assert.equal(parseRetryAfter(null), undefined);
    assert.equal(parseRetryAfter('soon'), undefined);
    const inTwoSeconds = new Date(Date.now() + 2000).toUTCString();
    assert.ok(parseRetryAfter(inTwoSeconds) <= 2000 && parseRetryAfter(inTwoSeconds) > 0);
  });

  test('backoff: full jitter under an exponentially growing ceiling', () => {
    for (let attempt = 0; attempt < 6; attempt += 1) {
      const ceiling = Math.min(8000, 500 * 2 ** attempt);
      const samples = Array.from({ length: 200 }, () => backoffMs(attempt));
      assert.ok(samples.every((ms) => ms >= 0 && ms <= ceiling));
      assert.ok(Math.max(...samples) > ceiling / 2); // spread over the range, not fixed
    }
  });

  test('idempotency keys are v4 UUIDs whatever crypto the platform has', async () => {
    const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
    const original = Object.getOwnPropertyDescriptor(globalThis, 'crypto');
    const setCrypto = (value) => Object.defineProperty(globalThis, 'crypto', { value, configurable: true });
    try {
      assert.match(await newIdempotencyKey(), uuid);
      // A browser page outside a secure context: getRandomValues but no randomUUID.
      setCrypto({ getRandomValues: (bytes) => webcrypto.getRandomValues(bytes) });
      const keys = await Promise.all(Array.from({ length: 50 }, () => newIdempotencyKey()));
      assert.ok(keys.every((key) => uuid.test(key)), keys.join());
      assert.equal(new Set(keys).size, 50);
      // Node 18: no global webcrypto at all.
      setCrypto(undefined);
      assert.match(await newIdempotencyKey(), uuid);
    } finally {
      if (original) Object.defineProperty(globalThis, 'crypto', original);
      else delete globalThis.crypto;
    }
  });
});

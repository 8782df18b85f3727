// new Tally(...): every credits method against the live stack (TALLY_URL, TALLY_API_KEY).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Tally, TallyError } from '../src/index.js';
import { TALLY_API_KEY, TALLY_URL, live, newUser } from '../test-support/env.js';

const tally = live.skip ? null : new Tally({ apiKey: TALLY_API_KEY, baseUrl: TALLY_URL });

describe('Tally credits', live, () => {
  test('add, deduct, balance and history, with the API field names', async () => {
    const user = newUser('credits');
    const added = await tally.credits.add({
      user_id: user,
      amount: 100,
      description: 'Welcome credits',
      reference_id: 'order_1',
      metadata: { plan: 'pro', nested_key: { keep_me: 1 } },
    });
    assert.equal(added.success, true);
    assert.equal(added.user_id, user);
    assert.equal(added.amount, 100);
    assert.equal(added.balance_after, 100);

    const deducted = await tally.credits.deduct({ user_id: user, amount: 10, description: 'AI generation' });
    assert.equal(deducted.success, true);
    assert.equal(deducted.balance_before, 100);
    assert.equal(deducted.balance_after, 90);

    const balance = await tally.credits.balance(user);
    assert.equal(balance.user_id, user);
    assert.equal(balance.balance, 90);
    assert.match(balance.updated_at, /Z$/);

    const history = await tally.credits.history(user, { limit: 1 });
    assert.equal(history.has_more, true);
    assert.equal(history.limit, 1);
    assert.deepEqual(
      history.entries.map((e) => [e.ledger_id, e.kind, e.amount, e.amount_delta, e.reason, e.balance_after]),
      [[deducted.ledger_id, 'deduct', -10, -10, 'AI generation', 90]],
    );
    const older = await tally.credits.history(user, { limit: 1, offset: 1 });
    assert.equal(older.has_more, false);
    const [entry] = older.entries;
    assert.equal(entry.ledger_id, added.ledger_id);
    assert.equal(entry.reference_id, 'order_1');
    assert.deepEqual(entry.metadata, { plan: 'pro', nested_key: { keep_me: 1 } });
  });

  test('an unknown user has balance 0; user ids are sent exactly (unicode, & and =)', async () => {
    const user = `${newUser('café & co')}=ü`;
    assert.deepEqual(await tally.credits.balance(user), {
      user_id: user,
      balance: 0,
      updated_at: null,
      available: 0,
      held: 0,
      grants: [],
    });
    await tally.credits.add({ user_id: user, amount: 7 });
    assert.equal((await tally.credits.balance(user)).balance, 7);
    assert.equal((await tally.credits.history(user)).entries[0].amount, 7);
  });

  test('deduct resolves the 402 body instead of throwing, and writes nothing', async () => {
    const user = newUser('broke');
    await tally.credits.add({ user_id: user, amount: 5 });
    const result = await tally.credits.deduct({ user_id: user, amount: 10 });
    assert.deepEqual(result, { success: false, error: 'Insufficient credits', balance: 5 });
    assert.equal((await tally.credits.history(user)).entries.length, 1);
  });

  test('the same Idempotency-Key applies once: one entry, the same ledger_id', async () => {
    const user = newUser('idem');
    const key = `order-${user}`;
    const first = await tally.credits.add({ user_id: user, amount: 50 }, { idempotencyKey: key });
    const again = await tally.credits.add({ user_id: user, amount: 50 }, { idempotencyKey: key });
    assert.deepEqual(again, first);
    const charge = { user_id: user, amount: 20, description: 'once' };
    const deducted = await tally.credits.deduct(charge, { idempotencyKey: `${key}-use` });
    const replayed = await tally.credits.deduct(charge, { idempotencyKey: `${key}-use` });
    assert.equal(replayed.ledger_id, deducted.ledger_id);
    assert.equal((await tally.credits.balance(user)).balance, 30);
    assert.equal((await tally.credits.history(user)).entries.length, 2);

    // Without a key of the caller's, each call is its own: a new key every call.
    await tally.credits.add({ user_id: user, amount: 1 });
    await tally.credits.add({ user_id: user, amount: 1 });
    assert.equal((await tally.credits.balance(user)).balance, 32);

    // The same key with another request is refused (422), as a TallyError.
    const error = await tally.credits
      .add({ user_id: user, amount: 51 }, { idempotencyKey: key })
      .catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.status, 422);
    assert.ok(error.requestId);
  });

  test('refund: once; a second is a 409 TallyError with the refund in its body', async () => {
    const user = newUser('refund');
    await tally.credits.add({ user_id: user, amount: 100 });
    const deducted = await tally.credits.deduct({ user_id: user, amount: 30 });
    const refunded = await tally.credits.refund({ ledger_id: deducted.ledger_id, description: 'oops' });
    assert.equal(refunded.success, true);
    assert.equal(refunded.refunded_ledger_id, deducted.ledger_id);
    assert.equal(refunded.amount, 30);
    assert.equal(refunded.balance_after, 100);

    const error = await tally.credits.refund({ ledger_id: deducted.ledger_id }).catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.status, 409);
    assert.equal(error.body.refund_ledger_id, refunded.ledger_id);
    assert.equal(typeof error.error, 'string');
    assert.ok(error.requestId);
  });

  test('batch: operations get keys (the API refuses the header), results in order', async () => {
    const user = newUser('batch');
    const other = newUser('batch');
    const operations = [
      { type: 'add', user_id: user, amount: 10 },
      { type: 'deduct', user_id: user, amount: 3, description: 'tokens' },
      { type: 'deduct', user_id: other, amount: 1 },
      { type: 'add', user_id: other, amount: 50, idempotency_key: `grant-${other}` },
    ];
    const result = await tally.credits.batch(operations);
    assert.equal(result.success, true);
    const [added, deducted, refused, granted] = result.results;
    assert.equal(added.balance_after, 10);
    assert.equal(deducted.balance_after, 7);
    assert.equal(refused.success, false);
    assert.equal(refused.status, 402);
    assert.equal(granted.balance_after, 50);
    assert.equal(granted.idempotency_key, `grant-${other}`);
    assert.match(added.idempotency_key, /^[0-9a-f-]{36}$/);
    assert.notEqual(deducted.idempotency_key, added.idempotency_key);

    // Resending with the keys the results carry replays what was applied; the refused deduct
    // (its key not used up) applies now that the grant gave `other` credits.
    const keyed = operations.map((op, i) => ({ ...op, idempotency_key: result.results[i].idempotency_key }));
    const again = await tally.credits.batch({ operations: keyed });
    assert.deepEqual(
      again.results.map((r) => [r.success, r.replayed]),
      [[true, true], [true, true], [true, false], [true, true]],
    );
    assert.equal((await tally.credits.balance(user)).balance, 7);
    assert.equal((await tally.credits.balance(other)).balance, 49);
  });

  test('API errors are TallyErrors with status, the API message and the request id', async () => {
    const error = await tally.credits.add({ user_id: newUser(), amount: '10' }).catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.status, 400);
    assert.match(error.error, /amount/);
    assert.match(error.requestId, /\S/);
    assert.ok(error.message.includes(error.error) && error.message.includes(error.requestId));

    const missing = await tally.credits
      .refund({ ledger_id: '00000000-0000-4000-8000-000000000000' })
      .catch((e) => e);
    assert.equal(missing.status, 404);
  });

  test('a wrong API key: 401, and the key is nowhere in the error', async () => {
    const wrongKey = 'tally_this_key_does_not_exist_0123456789abcdef';
    const stranger = new Tally({ apiKey: wrongKey, baseUrl: TALLY_URL });
    const error = await stranger.credits.balance(newUser()).catch((e) => e);
    assert.ok(error instanceof TallyError);
    assert.equal(error.status, 401);
    assert.ok(error.requestId);
    const { inspect } = await import('node:util');
    assert.ok(!inspect(error, { showHidden: true, depth: 10 }).includes(wrongKey));
    assert.ok(!inspect(error, { showHidden: true, depth: 10 }).includes(TALLY_API_KEY));
  });

  test('client tokens are minted for one user', async () => {
    const user = newUser('token');
    const issued = await tally.clientTokens.create({ user_id: user, ttl_seconds: 60 });
    assert.equal(issued.user_id, user);
    assert.match(issued.token, /^tct_/);
    assert.match(issued.expires_at, /Z$/);
  });
});

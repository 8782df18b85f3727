// Holds and grants against the live stack (TALLY_URL, TALLY_API_KEY), through both server clients.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Tally, TallyError } from '../src/index.js';
import { InsufficientBalanceError, createServerClient } from '../src/server.js';
import { TALLY_API_KEY, TALLY_URL, live, newUser, recordingFetch, sleep } from '../test-support/env.js';

const options = { apiKey: TALLY_API_KEY, baseUrl: TALLY_URL };
const tally = live.skip ? null : new Tally(options);
const reauth = live.skip ? null : createServerClient(options);

async function statusOf(promise) {
  const error = await promise.catch((e) => e);
  assert.ok(error instanceof TallyError, `expected a TallyError, got ${error}`);
  return error.status;
}

describe('Tally holds', live, () => {
  test('hold, capture part: the rest is released; a second capture is a 409', async () => {
    const user = newUser('hold');
    await tally.credits.add({ user_id: user, amount: 100 });
    const hold = await tally.credits.hold({
      user_id: user,
      amount: 60,
      ttl_seconds: 120,
      description: 'AI generation',
      reference_id: 'job-1',
      metadata: { model: 'm' },
    });
    assert.equal(hold.success, true);
    assert.match(hold.hold_id, /^hold_/);
    assert.deepEqual(
      [hold.user_id, hold.amount, hold.balance, hold.available],
      [user, 60, 100, 40],
    );
    assert.match(hold.expires_at, /Z$/);

    const during = await tally.credits.balance(user);
    assert.deepEqual([during.balance, during.available, during.held], [100, 40, 60]);
    const listed = await tally.credits.listHolds(user);
    assert.deepEqual(listed.holds.map((h) => [h.hold_id, h.status, h.amount]), [[hold.hold_id, 'active', 60]]);
    const refused = await tally.credits.deduct({ user_id: user, amount: 41 });
    assert.deepEqual(refused, { success: false, error: 'Insufficient credits', balance: 100, available: 40 });

    const captured = await tally.credits.captureHold(hold.hold_id, { amount: 25, description: 'tokens' });
    assert.deepEqual(
      [captured.captured, captured.released, captured.balance_before, captured.balance_after, captured.available],
      [25, 35, 100, 75, 75],
    );
    const settled = await tally.credits.getHold(hold.hold_id);
    assert.equal(settled.status, 'captured');
    assert.equal(settled.captured, 25);
    assert.equal(settled.settled_by, captured.ledger_id);
    assert.deepEqual(settled.metadata, { model: 'm' });

    assert.equal(await statusOf(tally.credits.captureHold(hold.hold_id)), 409);
    assert.equal(await statusOf(tally.credits.releaseHold(hold.hold_id)), 409);
    const after = await tally.credits.balance(user);
    assert.deepEqual([after.balance, after.available, after.held], [75, 75, 0]);
    assert.deepEqual((await tally.credits.listHolds(user)).holds, []);

    const { entries } = await tally.credits.history(user);
    const capture = entries.find((e) => e.ledger_id === captured.ledger_id);
    assert.deepEqual([capture.kind, capture.amount, capture.hold_id, capture.held], ['deduct', -25, hold.hold_id, -60]);
  });

  test('hold refusals: 402 with available, 400 over the hold, 404 unknown', async () => {
    const user = newUser('hold');
    await tally.credits.add({ user_id: user, amount: 10 });
    const short = await tally.credits.hold({ user_id: user, amount: 11 }).catch((e) => e);
    assert.ok(short instanceof TallyError);
    assert.deepEqual([short.status, short.body.balance, short.body.available], [402, 10, 10]);
    const hold = await tally.credits.hold({ user_id: user, amount: 5 });
    assert.equal(await statusOf(tally.credits.captureHold(hold.hold_id, { amount: 6 })), 400);
    assert.equal(await statusOf(tally.credits.getHold('hold_nope')), 404);
    assert.equal(await statusOf(tally.credits.captureHold('a/b?c')), 404);
    const released = await tally.credits.releaseHold(hold.hold_id);
    assert.deepEqual([released.released, released.balance, released.available], [5, 10, 10]);
  });

  test('withHold: capture inside, release when it throws or settles nothing', async () => {
    const user = newUser('with');
    await tally.credits.add({ user_id: user, amount: 100 });
    const fetch = recordingFetch();
    const client = new Tally({ ...options, fetch });

    const answer = await client.credits.withHold(user, 50, async (hold) => {
      assert.deepEqual([hold.amount, hold.available, hold.settled], [50, 50, false]);
      const captured = await hold.capture(20);
      assert.equal(hold.settlement, captured);
      return captured.balance_after;
    }, { description: 'AI generation' });
    assert.equal(answer, 80);
    assert.equal(fetch.calls.filter((c) => c.url.endsWith('/release')).length, 0);

    let seen;
    const failure = new Error('the model failed');
    const thrown = await client.credits
      .withHold(user, 70, async (hold) => {
        seen = hold;
        assert.equal((await tally.credits.balance(user)).available, 10);
        throw failure;
      })
      .catch((e) => e);
    assert.equal(thrown, failure);
    assert.equal((await tally.credits.getHold(seen.hold_id)).status, 'released');
    assert.equal(seen.settlement.released, 70);

    const quiet = await client.credits.withHold(user, 30, (hold) => hold.hold_id);
    assert.equal((await tally.credits.getHold(quiet)).status, 'released');

    // Captured behind the handle's back: the release finds nothing to do.
    const elsewhere = await client.credits.withHold(user, 10, async (hold) => {
      await tally.credits.captureHold(hold.hold_id, { amount: 4 });
      return hold.hold_id;
    });
    assert.equal((await tally.credits.getHold(elsewhere)).status, 'captured');

    // Expired before the function threw: the release's 409 does not replace its error.
    const late = new RangeError('late');
    const expired = await client.credits
      .withHold(user, 10, async (hold) => {
        seen = hold;
        await sleep(1300);
        throw late;
      }, { ttl_seconds: 1 })
      .catch((e) => e);
    assert.equal(expired, late);
    assert.equal((await tally.credits.getHold(seen.hold_id)).status, 'expired');

    const balance = await tally.credits.balance(user);
    assert.deepEqual([balance.balance, balance.available, balance.held], [76, 76, 0]);
    const holdPosts = fetch.calls.filter((c) => c.url.endsWith('/credits/holds'));
    assert.ok(holdPosts.every((c) => c.headers['Idempotency-Key']));
    await assert.rejects(client.credits.withHold(user, 1000, () => 'never'), (e) => e.status === 402);
    await assert.rejects(client.credits.withHold(user, 1), TypeError);
  });

  test('grants: add with expires_at; the balance lists them, soonest first', async () => {
    const user = newUser('grant');
    const later = new Date(Date.now() + 30 * 86_400_000);
    const trial = await tally.credits.add({
      user_id: user,
      amount: 30,
      expires_at: new Date(Date.now() + 86_400_000),
    });
    assert.equal(trial.grant_id, trial.ledger_id);
    assert.match(trial.expires_at, /Z$/);
    const monthly = await tally.credits.add({ user_id: user, amount: 20, expires_at: later.toISOString() });
    const paid = await tally.credits.add({ user_id: user, amount: 100 });
    assert.equal(paid.grant_id, undefined);
    await tally.credits.deduct({ user_id: user, amount: 10 });
    const balance = await tally.credits.balance(user);
    assert.deepEqual([balance.balance, balance.available, balance.held], [140, 140, 0]);
    assert.deepEqual(balance.grants, [
      { grant_id: trial.grant_id, remaining: 20, expires_at: trial.expires_at },
      { grant_id: monthly.grant_id, remaining: 20, expires_at: monthly.expires_at },
    ]);
    const [deducted] = (await tally.credits.history(user, { limit: 1 })).entries;
    assert.deepEqual(deducted.grants, [{ grant_id: trial.grant_id, amount: -10 }]);

    const batch = await tally.credits.batch([
      { type: 'add', user_id: user, amount: 5, expires_at: later },
    ]);
    assert.equal(batch.results[0].success, true);
    assert.equal((await tally.credits.balance(user)).grants.length, 3);

    assert.equal(await statusOf(tally.credits.add({ user_id: user, amount: 1, expires_at: '2020-01-01T00:00:00Z' })), 400);
    await assert.rejects(
      tally.credits.add({ user_id: user, amount: 1, expires_at: new Date(Number.NaN) }),
      TypeError,
    );
  });
});

describe('createServerClient holds', live, () => {
  test('hold, captureHold, releaseHold and withHold in camelCase', async () => {
    const user = newUser('reauth-hold');
    const deposited = await reauth.deposit(user, {
      amount: 100,
      note: 'Trial',
      expiresAt: new Date(Date.now() + 86_400_000),
    });
    assert.equal(deposited.newBalance, 100);
    assert.equal(deposited.grantId, deposited.ledgerId);
    assert.match(deposited.expiresAt, /Z$/);

    const hold = await reauth.hold(user, { amount: 40, ttlSeconds: 60, note: 'AI call', referenceId: 'r' });
    assert.deepEqual([hold.amount, hold.balance, hold.available], [40, 100, 60]);
    const [listed] = (await reauth.listHolds(user)).holds;
    assert.deepEqual([listed.holdId, listed.status, listed.description, listed.referenceId], [hold.holdId, 'active', 'AI call', 'r']);
    const captured = await reauth.captureHold(hold.holdId, { amount: 15, requestUuid: `cap-${user}` });
    assert.deepEqual([captured.captured, captured.released, captured.balanceAfter], [15, 25, 85]);
    const replayed = await reauth.captureHold(hold.holdId, { amount: 15, requestUuid: `cap-${user}` });
    assert.equal(replayed.ledgerId, captured.ledgerId);
    assert.equal((await reauth.getHold(hold.holdId)).settledBy, captured.ledgerId);
    assert.equal(await statusOf(reauth.captureHold(hold.holdId, { amount: 1 })), 409);

    const spent = await reauth.withHold(user, 50, (h) => h.capture(5), { note: 'job' });
    assert.deepEqual([spent.captured, spent.released, spent.balanceAfter], [5, 45, 80]);
    const failure = new Error('boom');
    assert.equal(await reauth.withHold(user, 50, () => { throw failure; }).catch((e) => e), failure);

    const err = await reauth.hold(user, { amount: 81 }).catch((e) => e);
    assert.ok(err instanceof InsufficientBalanceError);
    assert.equal(err.message, 'Insufficient balance');

    const balance = await reauth.getBalance(user);
    assert.deepEqual(
      [balance.balance, balance.available, balance.held, balance.grants.map((g) => g.remaining)],
      [80, 80, 0, [80]],
    );
    assert.equal(balance.grants[0].grantId, deposited.grantId);
    const { transactions } = await reauth.getTransactions(user);
    const capture = transactions.find((t) => t.id === spent.ledgerId);
    assert.deepEqual([capture.kind, capture.amountDelta, capture.holdId], ['deduct', -5, spent.holdId]);
    assert.deepEqual(capture.grants, [{ grantId: deposited.grantId, amount: -5 }]);
  });
});

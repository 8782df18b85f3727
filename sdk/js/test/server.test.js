// createServerClient: reauth's server API over the live stack.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { InsufficientBalanceError, TallyError, createServerClient } from '../src/server.js';
import { Tally } from '../src/index.js';
import { TALLY_API_KEY, TALLY_URL, live, newUser } from '../test-support/env.js';

const reauth = live.skip ? null : createServerClient({ baseUrl: TALLY_URL, apiKey: TALLY_API_KEY });

describe('createServerClient', live, () => {
  test('deposit and charge answer { newBalance }; getBalance { balance }', async () => {
    const user = newUser('reauth');
    const deposited = await reauth.deposit(user, { amount: 100, requestUuid: `welcome-${user}`, note: 'Welcome bonus' });
    assert.equal(deposited.newBalance, 100);
    const charged = await reauth.charge(user, { amount: 10, requestUuid: `api-call-${user}`, note: 'API call: generate-report' });
    assert.equal(charged.newBalance, 90);
    assert.match(charged.ledgerId, /^[0-9a-f-]{36}$/);
    const { balance } = await reauth.getBalance(user);
    assert.equal(balance, 90);
  });

  test('requestUuid is the idempotency key: the same one charges once', async () => {
    const user = newUser('reauth');
    await reauth.deposit(user, { amount: 50, requestUuid: `d-${user}` });
    await reauth.deposit(user, { amount: 50, requestUuid: `d-${user}` });
    const first = await reauth.charge(user, { amount: 10, requestUuid: `todo-${user}` });
    const second = await reauth.charge(user, { amount: 10, requestUuid: `todo-${user}` });
    assert.deepEqual(second, first);
    assert.equal((await reauth.getBalance(user)).balance, 40);
    assert.equal((await reauth.getTransactions(user)).transactions.length, 2);
    // Without a requestUuid each call gets a key of its own.
    await reauth.charge(user, { amount: 1 });
    await reauth.charge(user, { amount: 1 });
    assert.equal((await reauth.getBalance(user)).balance, 38);
  });

  test("a 402 throws an Error whose message is 'Insufficient balance'", async () => {
    const user = newUser('reauth');
    await reauth.deposit(user, { amount: 5 });
    const err = await reauth.charge(user, { amount: 10, requestUuid: `op-${user}` }).catch((e) => e);
    // What reauth's docs tell apps to check:
    assert.ok(err instanceof Error && err.message === 'Insufficient balance');
    assert.ok(err instanceof InsufficientBalanceError && err instanceof TallyError);
    assert.equal(err.status, 402);
    assert.equal(err.error, 'Insufficient credits');
    assert.equal(err.balance, 5);
    assert.ok(err.requestId);
    // A refused charge does not use up its requestUuid: after a top-up the same one works.
    await reauth.deposit(user, { amount: 10 });
    assert.equal((await reauth.charge(user, { amount: 10, requestUuid: `op-${user}` })).newBalance, 5);
  });

  test('getTransactions: { transactions: [{ id, amountDelta, reason, balanceAfter, createdAt }] }', async () => {
    const user = newUser('reauth');
    const deposited = await reauth.deposit(user, { amount: 100, note: 'Welcome bonus' });
    const charged = await reauth.charge(user, { amount: 10, note: 'Create todo: buy milk' });
    const { transactions, hasMore } = await reauth.getTransactions(user, { limit: 50, offset: 0 });
    assert.equal(hasMore, false);
    assert.deepEqual(
      transactions.map(({ id, amountDelta, reason, balanceAfter }) => ({ id, amountDelta, reason, balanceAfter })),
      [
        { id: charged.ledgerId, amountDelta: -10, reason: 'Create todo: buy milk', balanceAfter: 90 },
        { id: deposited.ledgerId, amountDelta: 100, reason: 'Welcome bonus', balanceAfter: 100 },
      ],
    );
    assert.ok(!Number.isNaN(Date.parse(transactions[0].createdAt)));
    const page = await reauth.getTransactions(user, { limit: 1, offset: 1 });
    assert.deepEqual(page.transactions.map((t) => t.id), [deposited.ledgerId]);
  });

  test('other failures throw TallyErrors with status and request id', async () => {
    const err = await reauth.deposit(newUser(), { amount: 0 }).catch((e) => e);
    assert.ok(err instanceof TallyError);
    assert.equal(err.status, 400);
    assert.match(err.error, /amount/);
    assert.ok(err.requestId);
  });

  test('what it writes, Tally reads back the same (one ledger under both APIs)', async () => {
    const user = newUser('reauth');
    await reauth.deposit(user, { amount: 3, note: 'n' });
    const tally = new Tally({ baseUrl: TALLY_URL, apiKey: TALLY_API_KEY });
    const [entry] = (await tally.credits.history(user)).entries;
    assert.equal(entry.description, 'n');
    assert.equal(entry.amount, 3);
  });
});

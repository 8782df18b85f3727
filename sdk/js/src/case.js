/**
 * reauth's camelCase shapes from the API's snake_case: top-level keys only, so what a caller
 * stored (an entry's `metadata`) comes back exactly as it was written.
 */
export function camelKeys(object) {
  if (object === null || typeof object !== 'object' || Array.isArray(object)) return object;
  return Object.fromEntries(Object.entries(object).map(([key, value]) => [camel(key), value]));
}

export function camel(key) {
  return key.replace(/_([a-z0-9])/g, (_, letter) => letter.toUpperCase());
}

/** A ledger entry as reauth's transaction: `{ id, amountDelta, reason, balanceAfter, createdAt, … }`. */
export function transactionOf(entry) {
  const transaction = { id: entry.id ?? entry.ledger_id, ...camelKeys(entry) };
  if (Array.isArray(entry.grants)) transaction.grants = entry.grants.map(camelKeys);
  return transaction;
}

/** `{ entries | transactions, has_more, … }` → `{ transactions, hasMore, limit, offset }`. */
export function transactionsPage(page, entries) {
  return {
    transactions: entries.map(transactionOf),
    hasMore: page.has_more,
    limit: page.limit,
    offset: page.offset,
  };
}

/** Types the three entry points share (declarations only: the code is in transport.js and case.js). */

/** Enough of AbortSignal (DOM or Node) for cancelling a call. */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: any;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** A fetch implementation (the global one by default). */
export type FetchLike = (url: string, init?: any) => Promise<any>;

/** What every client takes besides its credential. */
export interface TransportOptions {
  /** Where Tally listens, e.g. 'http://127.0.0.1:8000' (a browser page may give '/tally'). */
  baseUrl: string;
  /** Per attempt; default 10000. */
  timeoutMs?: number;
  /** Retries of a network error, timeout, 429 or 503; default 2. */
  maxRetries?: number;
  /** Default: the global fetch. */
  fetch?: FetchLike;
}

export type Metadata = { [key: string]: unknown };

/** reauth's transaction, with the rest of Tally's entry beside it. */
export interface Transaction {
  id: string;
  /** Positive for deposits, negative for charges. */
  amountDelta: number;
  reason: string | null;
  balanceAfter: number;
  createdAt: string | null;
  ledgerId: string;
  kind: string;
  amount: number;
  description: string | null;
  referenceId: string | null;
  metadata: Metadata | null;
  refundOf: string | null;
  /** The hold this entry made or settled. */
  holdId: string | null;
  /** Change of held credits: +amount by a hold, -amount when it is settled or expires. */
  held: number | null;
  /** A grant's or a hold's expiry. */
  expiresAt: string | null;
  /** Grant credits the entry took (negative) or gave back, per grant. */
  grants: Array<{ grantId: string; amount: number }> | null;
}

export interface TransactionsPage {
  transactions: Transaction[];
  hasMore: boolean;
  limit: number;
  offset: number;
}

import type { AbortSignalLike, TransactionsPage, TransportOptions } from './types.js';

export { TallyError, InsufficientBalanceError } from './errors.js';
export type { TallyErrorCode } from './errors.js';
export type { Transaction, TransactionsPage } from './types.js';

export interface ServerClientOptions extends TransportOptions {
  /** The app's API key, `tally_...`. */
  apiKey: string;
}

export interface CreditParams {
  amount: number;
  /** The Idempotency-Key: the same requestUuid applies once. Generated when omitted. */
  requestUuid?: string;
  /** Stored as the entry's description (reauth's `reason`). */
  note?: string;
  signal?: AbortSignalLike;
}

export interface CreditResult {
  newBalance: number;
  /** The ledger entry, e.g. for a refund. */
  ledgerId: string;
}

export interface ServerClient {
  /** POST /credits/deduct; throws InsufficientBalanceError ('Insufficient balance') on 402. */
  charge(userId: string, params: CreditParams): Promise<CreditResult>;
  /** POST /credits/add. */
  deposit(userId: string, params: CreditParams): Promise<CreditResult>;
  getBalance(
    userId: string,
    options?: { signal?: AbortSignalLike },
  ): Promise<{ balance: number; userId: string; updatedAt: string | null }>;
  getTransactions(
    userId: string,
    options?: { limit?: number; offset?: number; signal?: AbortSignalLike },
  ): Promise<TransactionsPage>;
}

export declare function createServerClient(options: ServerClientOptions): ServerClient;

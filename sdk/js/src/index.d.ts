import type { AbortSignalLike, Metadata, TransportOptions } from './types.js';

export { TallyError, InsufficientBalanceError } from './errors.js';
export type { TallyErrorCode } from './errors.js';
export type { AbortSignalLike, FetchLike, Metadata, TransportOptions } from './types.js';

export interface TallyOptions extends TransportOptions {
  /** The app's API key, `tally_...`: keep it on your servers. */
  apiKey: string;
}

export interface RequestOptions {
  signal?: AbortSignalLike;
}

export interface WriteOptions extends RequestOptions {
  /** Sent as Idempotency-Key; one is generated when omitted. The same on every retry. */
  idempotencyKey?: string;
}

export interface EntryParams {
  user_id: string;
  amount: number;
  description?: string;
  reference_id?: string;
  metadata?: Metadata;
}

export interface AddResult {
  success: true;
  ledger_id: string;
  user_id: string;
  amount: number;
  balance_after: number;
}

export interface DeductSuccess {
  success: true;
  ledger_id: string;
  balance_before: number;
  balance_after: number;
  /** Present (true) when this deduct started the user's auto top-up. */
  auto_top_up_started?: true;
}

/** The 402 body, which `deduct` resolves instead of throwing. */
export interface InsufficientCredits {
  success: false;
  error: 'Insufficient credits';
  balance: number;
  /** With overdraft on: how far down the user may go. */
  floor?: number;
}

export type DeductResult = DeductSuccess | InsufficientCredits;

export interface RefundParams {
  ledger_id: string;
  description?: string;
}

export interface RefundResult {
  success: true;
  ledger_id: string;
  refunded_ledger_id: string;
  user_id: string;
  /** The signed change the refund made (positive when a deduct was refunded). */
  amount: number;
  balance_after: number;
}

export interface BatchOperation extends EntryParams {
  type: 'add' | 'deduct';
  /** Generated when omitted, before the first attempt. */
  idempotency_key?: string;
}

export interface BatchApplied {
  success: true;
  ledger_id: string;
  user_id: string;
  amount: number;
  balance_before: number;
  balance_after: number;
  replayed: boolean;
  /** The operation's key (yours or the generated one): retry a failed operation with it. */
  idempotency_key: string;
}

export interface BatchRefused {
  success: false;
  /** 402 for insufficient credits; 503 when it could not be applied now: retry it alone. */
  status: number;
  error: string;
  balance?: number;
  floor?: number;
  idempotency_key: string;
}

export interface BatchResult {
  success: true;
  /** One per operation, in order. */
  results: Array<BatchApplied | BatchRefused>;
}

export interface BalanceResult {
  user_id: string;
  balance: number;
  /** null for a user never seen. */
  updated_at: string | null;
}

export interface LedgerEntry {
  ledger_id: string;
  kind: string;
  amount: number;
  /** reauth's name for `amount`. */
  amount_delta: number;
  /** reauth's name for `description`. */
  reason: string | null;
  balance_after: number;
  description: string | null;
  reference_id: string | null;
  metadata: Metadata | null;
  refund_of: string | null;
  created_at: string;
}

export interface HistoryResult {
  user_id: string;
  entries: LedgerEntry[];
  limit: number;
  offset: number;
  has_more: boolean;
}

export interface HistoryOptions extends RequestOptions {
  /** 1–1000, default 50. */
  limit?: number;
  offset?: number;
}

export interface ClientTokenParams {
  user_id: string;
  /** 1–86400, default 3600. */
  ttl_seconds?: number;
}

export interface ClientTokenResult {
  token: string;
  user_id: string;
  expires_at: string;
}

export interface Credits {
  add(params: EntryParams, options?: WriteOptions): Promise<AddResult>;
  /** Resolves `{ success: false, error: 'Insufficient credits', balance }` on a 402. */
  deduct(params: EntryParams, options?: WriteOptions): Promise<DeductResult>;
  refund(params: RefundParams, options?: WriteOptions): Promise<RefundResult>;
  /** No Idempotency-Key header: each operation carries its own `idempotency_key`. */
  batch(
    operations: BatchOperation[] | { operations: BatchOperation[] },
    options?: RequestOptions,
  ): Promise<BatchResult>;
  balance(userId: string, options?: RequestOptions): Promise<BalanceResult>;
  history(userId: string, options?: HistoryOptions): Promise<HistoryResult>;
}

export interface ClientTokens {
  /** A token for one user's browser (see `tally-credits-sdk/browser`). */
  /** A retry after a lost answer mints another token: tokens are not idempotent. */
  create(params: ClientTokenParams, options?: RequestOptions): Promise<ClientTokenResult>;
  /** Rotates the app's signing secret: every token issued so far gets 401. */
  revokeAll(options?: RequestOptions): Promise<{ success: true }>;
}

export declare class Tally {
  constructor(options: TallyOptions);
  readonly credits: Credits;
  readonly clientTokens: ClientTokens;
}

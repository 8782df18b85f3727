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

export interface AddParams extends EntryParams {
  /**
   * Makes the credits a grant that expires then: ISO 8601 with a time zone
   * ('2027-01-31T00:00:00Z') or a Date; in the future, at most 10 years ahead.
   */
  expires_at?: string | Date;
}

export interface AddResult {
  success: true;
  ledger_id: string;
  user_id: string;
  amount: number;
  balance_after: number;
  /** Present for a grant (an add with `expires_at`): its id, the entry's `ledger_id`. */
  grant_id?: string;
  expires_at?: string;
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
  /** The balance less what active holds reserve. */
  available?: number;
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
  /** Adds only: a grant, as `credits.add`. */
  expires_at?: string | Date;
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
  available?: number;
  floor?: number;
  idempotency_key: string;
}

export interface BatchResult {
  success: true;
  /** One per operation, in order. */
  results: Array<BatchApplied | BatchRefused>;
}

export interface Grant {
  grant_id: string;
  /** What is left of the grant, less what holds reserve. */
  remaining: number;
  expires_at: string;
}

export interface BalanceResult {
  user_id: string;
  balance: number;
  /** null for a user never seen. */
  updated_at: string | null;
  /** The balance less what active holds reserve: what a deduct or a hold may spend. */
  available: number;
  held: number;
  /** Active grants, soonest expiry first. */
  grants: Grant[];
}

export interface GrantPart {
  grant_id: string;
  /** Grant credits taken (negative) or given back; on a hold, reserved. */
  amount: number;
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
  /** The hold this entry made or settled. */
  hold_id: string | null;
  /** Change of held credits: +amount by a hold, -amount when it is settled or expires. */
  held: number | null;
  /** A grant's or a hold's expiry. */
  expires_at: string | null;
  grants: GrantPart[] | null;
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

export interface HoldParams {
  user_id: string;
  amount: number;
  /** 1–86400, default 300: an unsettled hold expires then and holds nothing. */
  ttl_seconds?: number;
  description?: string;
  reference_id?: string;
  metadata?: Metadata;
}

export interface HoldCreated {
  success: true;
  hold_id: string;
  user_id: string;
  amount: number;
  expires_at: string;
  /** Unchanged by a hold. */
  balance: number;
  /** The balance less every active hold, this one included. */
  available: number;
}

export interface CaptureParams {
  /** Default: the whole hold. */
  amount?: number;
  description?: string;
}

export interface CaptureResult {
  success: true;
  /** The deduct entry of the capture. */
  ledger_id: string;
  balance_before: number;
  balance_after: number;
  hold_id: string;
  user_id: string;
  captured: number;
  /** The rest of the hold, given back. */
  released: number;
  available: number;
  auto_top_up_started?: true;
}

export interface ReleaseParams {
  description?: string;
}

export interface ReleaseResult {
  success: true;
  hold_id: string;
  user_id: string;
  ledger_id: string;
  released: number;
  balance: number;
  available: number;
}

export type HoldStatus = 'active' | 'captured' | 'released' | 'expired';

export interface Hold {
  hold_id: string;
  user_id: string;
  amount: number;
  status: HoldStatus;
  expires_at: string;
  created_at: string;
  description: string | null;
  reference_id: string | null;
  metadata: Metadata | null;
  /** The entry that made the hold. */
  ledger_id: string;
  /** The entry that captured or released it. */
  settled_by: string | null;
  captured: number | null;
}

export interface HoldsList {
  user_id: string;
  holds: Hold[];
}

/** What `withHold` hands its function: the hold's answer, and how to settle it once. */
export interface HoldHandle extends HoldCreated {
  /** True once a capture or release through this handle succeeded. */
  readonly settled: boolean;
  readonly settlement: CaptureResult | ReleaseResult | null;
  /** Spends `amount` (the whole hold when omitted) and releases the rest. */
  capture(
    amount?: number,
    params?: { description?: string },
    options?: WriteOptions,
  ): Promise<CaptureResult>;
  release(params?: ReleaseParams, options?: WriteOptions): Promise<ReleaseResult>;
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
  add(params: AddParams, options?: WriteOptions): Promise<AddResult>;
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
  /** Throws a TallyError with status 402 when fewer credits are available. */
  hold(params: HoldParams, options?: WriteOptions): Promise<HoldCreated>;
  /** 400 when `amount` is more than the hold; 409 when it is already settled or expired. */
  captureHold(holdId: string, params?: CaptureParams, options?: WriteOptions): Promise<CaptureResult>;
  /** 409 when the hold is already settled or expired. */
  releaseHold(holdId: string, params?: ReleaseParams, options?: WriteOptions): Promise<ReleaseResult>;
  getHold(holdId: string, options?: RequestOptions): Promise<Hold>;
  /** Active holds, soonest expiry first. */
  listHolds(userId: string, options?: RequestOptions): Promise<HoldsList>;
  /**
   * Holds `amount`, runs `fn` and resolves what it resolves. A hold `fn` leaves unsettled is
   * released, also when it throws (the error is thrown on).
   */
  withHold<T>(
    userId: string,
    amount: number,
    fn: (hold: HoldHandle) => T | Promise<T>,
    params?: Omit<HoldParams, 'user_id' | 'amount'>,
    options?: WriteOptions,
  ): Promise<T>;
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

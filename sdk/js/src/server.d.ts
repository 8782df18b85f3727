import type { AbortSignalLike, Metadata, TransactionsPage, TransportOptions } from './types.js';

export { TallyError, InsufficientBalanceError, WebhookVerificationError } from './errors.js';
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

export interface DepositParams extends CreditParams {
  /** Makes the credits a grant that expires then: ISO 8601 with a time zone, or a Date. */
  expiresAt?: string | Date;
}

export interface CreditResult {
  newBalance: number;
  /** The ledger entry, e.g. for a refund. */
  ledgerId: string;
  /** A deposit with `expiresAt`: the grant's id (its ledgerId) and expiry. */
  grantId?: string;
  expiresAt?: string;
}

export interface Grant {
  grantId: string;
  /** What is left, less what holds reserve. */
  remaining: number;
  expiresAt: string;
}

export interface BalanceView {
  balance: number;
  userId: string;
  updatedAt: string | null;
  /** The balance less what active holds reserve. */
  available: number;
  held: number;
  /** Active grants, soonest expiry first. */
  grants: Grant[];
}

export interface WriteParams {
  /** The Idempotency-Key; generated when omitted. */
  requestUuid?: string;
  /** Stored as the entry's description. */
  note?: string;
  signal?: AbortSignalLike;
}

export interface HoldParams extends WriteParams {
  amount: number;
  /** 1–86400, default 300. */
  ttlSeconds?: number;
  referenceId?: string;
  metadata?: Metadata;
}

export interface HoldCreated {
  success: true;
  holdId: string;
  userId: string;
  amount: number;
  expiresAt: string;
  balance: number;
  /** The balance less every active hold, this one included. */
  available: number;
}

export interface CaptureParams extends WriteParams {
  /** Default: the whole hold. */
  amount?: number;
}

export interface CaptureResult {
  success: true;
  ledgerId: string;
  balanceBefore: number;
  balanceAfter: number;
  holdId: string;
  userId: string;
  captured: number;
  released: number;
  available: number;
  autoTopUpStarted?: true;
}

export interface ReleaseResult {
  success: true;
  holdId: string;
  userId: string;
  ledgerId: string;
  released: number;
  balance: number;
  available: number;
}

export interface Hold {
  holdId: string;
  userId: string;
  amount: number;
  status: 'active' | 'captured' | 'released' | 'expired';
  expiresAt: string;
  createdAt: string;
  description: string | null;
  referenceId: string | null;
  metadata: Metadata | null;
  ledgerId: string;
  settledBy: string | null;
  captured: number | null;
}

/** What `withHold` hands its function. */
export interface HoldHandle extends HoldCreated {
  readonly settled: boolean;
  readonly settlement: CaptureResult | ReleaseResult | null;
  capture(amount?: number, params?: WriteParams): Promise<CaptureResult>;
  release(params?: WriteParams): Promise<ReleaseResult>;
}

export interface ServerClient {
  /** POST /credits/deduct; throws InsufficientBalanceError ('Insufficient balance') on 402. */
  charge(userId: string, params: CreditParams): Promise<CreditResult>;
  /** POST /credits/add. */
  deposit(userId: string, params: DepositParams): Promise<CreditResult>;
  getBalance(userId: string, options?: { signal?: AbortSignalLike }): Promise<BalanceView>;
  getTransactions(
    userId: string,
    options?: { limit?: number; offset?: number; signal?: AbortSignalLike },
  ): Promise<TransactionsPage>;
  /** POST /credits/holds; throws InsufficientBalanceError on 402. */
  hold(userId: string, params: HoldParams): Promise<HoldCreated>;
  /** 400 when `amount` is more than the hold; 409 when it is already settled or expired. */
  captureHold(holdId: string, params?: CaptureParams): Promise<CaptureResult>;
  releaseHold(holdId: string, params?: WriteParams): Promise<ReleaseResult>;
  getHold(holdId: string, options?: { signal?: AbortSignalLike }): Promise<Hold>;
  listHolds(
    userId: string,
    options?: { signal?: AbortSignalLike },
  ): Promise<{ userId: string; holds: Hold[] }>;
  /** Holds `amount`, runs `fn`; releases what `fn` leaves unsettled, also when it throws. */
  withHold<T>(
    userId: string,
    amount: number,
    fn: (hold: HoldHandle) => T | Promise<T>,
    params?: Omit<HoldParams, 'amount'>,
  ): Promise<T>;
}

export declare function createServerClient(options: ServerClientOptions): ServerClient;

/** The request body exactly as received: a Buffer is a Uint8Array. */
export type WebhookPayload = string | Uint8Array | ArrayBuffer;

/**
 * Node's `req.headers`, any plain object (names in any case), or a fetch `Headers`: anything
 * with a `get` is asked through it, and a Headers' `get` ignores case.
 */
export type WebhookHeaders =
  | Record<string, string | string[] | undefined>
  | { get(name: string): string | null | undefined };

export interface VerifyWebhookOptions {
  /** How many seconds `webhook-timestamp` may be from now, either way. Default 300. */
  tolerance?: number;
  /** The time to check against: a Date, or milliseconds as Date.now() gives. Default now. */
  now?: Date | number;
}

/** A verified event: the body's `type`, `timestamp` and `data`, with the message id. */
export interface WebhookEvent<Data = Record<string, any>> {
  /** The `webhook-id` header: the same on every retry of one event, so deduplicate on it. */
  id: string;
  /** 'balance.low', 'payment.credited', … */
  type: string;
  /** When the event happened, ISO 8601 as sent. */
  timestamp: string;
  /** As sent: the API's snake_case field names. */
  data: Data;
  /** The whole body, parsed. */
  raw: { type: string; timestamp: string; data: Data; [field: string]: unknown };
}

/**
 * Checks that a webhook came from Tally and is recent, and returns its event. `payload` must be
 * the raw body (`express.raw({ type: 'application/json' })`, `await request.text()`): JSON
 * parsed and serialized again is not the same bytes and does not verify. Throws a
 * WebhookVerificationError otherwise, and a TypeError for a payload that is not a string or
 * bytes.
 */
export declare function verifyWebhook<Data = Record<string, any>>(
  payload: WebhookPayload,
  headers: WebhookHeaders,
  secret: string,
  options?: VerifyWebhookOptions,
): WebhookEvent<Data>;

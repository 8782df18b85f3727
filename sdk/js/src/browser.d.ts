import type { TransactionsPage, TransportOptions } from './types.js';

export { TallyError } from './errors.js';
export type { TallyErrorCode } from './errors.js';
export type { Transaction, TransactionsPage } from './types.js';

/** A client token (`tct_...`), or what POST /client-tokens answered (`{ token, ... }`). */
export type TokenSource = string | { token: string };

export interface BrowserClientOptions extends TransportOptions {
  /**
   * Asks your backend for a client token for the signed-in user. Called when the client has
   * none, when the one it has expired, and after a 401 (the request is then sent once more).
   */
  getToken: () => TokenSource | Promise<TokenSource>;
}

export interface CreditsConfig {
  creditsEnabled: boolean;
  creditsPerDollar: number | null;
  displayName: string;
  displaySymbol: string | null;
  displaySymbolPosition: 'left' | 'right';
  displayDecimals: number;
  minPurchaseCents: number;
  maxPurchaseCents: number;
  manualTopUpAvailable: boolean;
  autoTopUpAvailable: boolean;
  /** reauth's name for `overdraftEnabled`. */
  overdrawEnabled: boolean;
  overdraftEnabled: boolean;
  overdraftLimit: number;
  currency: string;
}

export interface PaymentMethod {
  id: string;
  provider: string;
  methodType: string;
  cardBrand: string | null;
  cardLast4: string | null;
  cardExpMonth: number | null;
  cardExpYear: number | null;
  /** 1 is charged first. */
  priority: number | null;
}

export interface SetupIntent {
  clientSecret: string;
  setupIntentId: string;
}

export interface PurchaseParams {
  amountCents: number;
  paymentMethodId: string;
  /** The same key returns the first outcome; generated when omitted. */
  idempotencyKey?: string;
}

export interface PurchaseResult {
  success: boolean;
  /** 'succeeded', or 'requires_action' (then pass `clientSecret` to stripe.handleCardAction). */
  status: 'succeeded' | 'requires_action' | string;
  creditsPurchased: number;
  newBalance: number | null;
  paymentIntentId: string | null;
  purchaseId: number;
  amountCents: number;
  clientSecret?: string;
}

export interface AutoTopUpSettings {
  enabled: boolean;
  thresholdCents: number;
  purchaseAmountCents: number;
}

export interface AutoTopUpStatus extends AutoTopUpSettings {
  userId: string;
  /** 'active', 'retrying', 'paused'… */
  status: string;
  lastFailureReason: string | null;
  retriesRemaining: number;
  nextRetryAt: string | null;
}

export interface BrowserClient {
  getBalance(): Promise<{ balance: number; userId: string; updatedAt: string | null }>;
  getTransactions(options?: { limit?: number; offset?: number }): Promise<TransactionsPage>;
  getCreditsConfig(): Promise<CreditsConfig>;
  getPaymentMethods(): Promise<PaymentMethod[]>;
  createSetupIntent(): Promise<SetupIntent>;
  savePaymentMethod(setupIntentId: string): Promise<PaymentMethod>;
  deletePaymentMethod(id: string): Promise<{ success: true; deleted: string }>;
  /** Name every card once; the first is charged first. Resolves the new order. */
  reorderPaymentMethods(ids: string[]): Promise<PaymentMethod[]>;
  purchaseCredits(params: PurchaseParams): Promise<PurchaseResult>;
  getAutoTopUpStatus(): Promise<AutoTopUpStatus>;
  updateAutoTopUp(settings: AutoTopUpSettings): Promise<AutoTopUpStatus>;
}

export declare function createBrowserClient(options: BrowserClientOptions): BrowserClient;

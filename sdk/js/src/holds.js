/**
 * Holds, shared by both server clients: the paths, and `withHold`'s handle and rules.
 *
 *   await tally.credits.withHold('user_001', 500, async (hold) => {
 *     const cost = await runModel({ maxCredits: hold.amount })
 *     await hold.capture(cost) // spend `cost`, give the rest of the 500 back
 *   })
 *
 * The hold is made before `fn` runs. When `fn` resolves without a capture or a release, the
 * whole hold is released: nothing is spent that was not captured. When `fn` throws, the hold is
 * released and the same error is thrown on. A release answered 409 (the hold was already
 * captured, released or expired) has nothing left to do and is not an error. Any other failure
 * of that release is thrown when `fn` resolved, and dropped in favour of the original error
 * when `fn` threw (the hold then expires by itself after its ttl_seconds).
 */
import { TallyError } from './errors.js';

export function holdPath(holdId, action = '') {
  return `/credits/holds/${encodeURIComponent(holdId)}${action}`;
}

/**
 * The object `fn` gets: the hold's answer (its own field names) and `capture` / `release`,
 * which record the settlement. `settle.capture(amount, ...rest)` and `settle.release(...rest)`
 * do the calls.
 */
export class HoldHandle {
  #settle;

  constructor(created, settle) {
    Object.assign(this, created);
    this.settlement = null;
    this.#settle = settle;
  }

  /** True once a capture or release through this handle succeeded. */
  get settled() {
    return this.settlement !== null;
  }

  /** Spend `amount` of the hold (all of it when omitted) and release the rest. */
  async capture(amount, ...rest) {
    const result = await this.#settle.capture(amount, ...rest);
    this.settlement = result;
    return result;
  }

  /** Give the whole hold back; nothing is spent. */
  async release(...rest) {
    const result = await this.#settle.release(...rest);
    this.settlement = result;
    return result;
  }
}

/** Runs `fn(handle)` under the rules above; resolves what `fn` resolved. */
export async function runUnderHold(handle, fn) {
  let result;
  try {
    result = await fn(handle);
  } catch (error) {
    if (!handle.settled) {
      try {
        await handle.release();
      } catch {
        // The original error is what the caller needs; the hold expires by itself.
      }
    }
    throw error;
  }
  if (!handle.settled) {
    try {
      await handle.release();
    } catch (error) {
      if (!isSettledAlready(error)) throw error;
    }
  }
  return result;
}

export function checkHoldFunction(fn) {
  if (typeof fn !== 'function') {
    throw new TypeError('withHold: give the function to run under the hold');
  }
}

/** 409 on a release: the hold is captured, released or expired, so it holds nothing. */
function isSettledAlready(error) {
  return error instanceof TallyError && error.status === 409;
}

/** A Date as ISO 8601 (an invalid one is refused here rather than sent as null). */
export function isoMoment(name, value) {
  if (!(value instanceof Date)) return value;
  if (Number.isNaN(value.getTime())) throw new TypeError(`${name} is an invalid Date`);
  return value.toISOString();
}

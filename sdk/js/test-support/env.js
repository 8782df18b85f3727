/**
 * The live stack the tests run against: TALLY_URL and TALLY_API_KEY (an app without Stripe),
 * and optionally TALLY_BILLING_API_KEY with TALLY_STRIPE_URL (an app whose Stripe account is
 * localstripe, for cards and purchases). tests/test_sdk_js.py sets them all.
 */
import { randomUUID } from 'node:crypto';

export const TALLY_URL = process.env.TALLY_URL;
export const TALLY_API_KEY = process.env.TALLY_API_KEY;
export const TALLY_BILLING_API_KEY = process.env.TALLY_BILLING_API_KEY;
export const TALLY_STRIPE_URL = process.env.TALLY_STRIPE_URL;

/** `{ skip }` for node:test: the live tests need a stack. */
export const live = {
  skip:
    TALLY_URL && TALLY_API_KEY
      ? false
      : 'TALLY_URL and TALLY_API_KEY are not set: run through tests/test_sdk_js.py',
};

export const billing = {
  skip:
    live.skip ||
    (TALLY_BILLING_API_KEY && TALLY_STRIPE_URL
      ? false
      : 'TALLY_BILLING_API_KEY and TALLY_STRIPE_URL are not set: no app with a Stripe account'),
};

/** A user of its own for each test: test files run in parallel against one app. */
export function newUser(label = 'user') {
  return `${label}-${randomUUID()}`;
}

/** POST /client-tokens by hand (not through the SDK under test). */
export async function mintToken(userId, { ttlSeconds = 3600, apiKey = TALLY_API_KEY } = {}) {
  const response = await fetch(`${TALLY_URL}/client-tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ user_id: userId, ttl_seconds: ttlSeconds }),
  });
  if (response.status !== 200) throw new Error(`minting a token: ${await response.text()}`);
  return (await response.json()).token;
}

/** A fetch that records every request it passes on and every status it got back. */
export function recordingFetch() {
  const calls = [];
  const spy = async (url, init) => {
    const call = { url, method: init.method, headers: { ...init.headers }, body: init.body };
    calls.push(call);
    const response = await fetch(url, init);
    call.status = response.status;
    return response;
  };
  spy.calls = calls;
  return spy;
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Verifying the webhooks Tally sends, as the Standard Webhooks specification signs them:
 * HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}` under the endpoint's secret
 * (`whsec_` + base64 of the key), sent as `webhook-signature: v1,<base64> ...`. While a secret
 * is being rotated the old and the new one both sign, so any one matching signature will do.
 *
 * node:crypto is imported statically, so this module is reachable from the server entry only:
 * the browser entry must stay free of Node built-ins for bundlers.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

import { WebhookVerificationError } from './errors.js';

const SECRET_PREFIX = 'whsec_';
const BASE64 = /^[A-Za-z0-9+/]*$/;
const PADDED_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const UNIX_SECONDS = /^\d+$/;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The event a webhook carries, once its signature and timestamp check out; throws a
 * WebhookVerificationError otherwise. `payload` is the raw body (types in server.d.ts).
 */
export function verifyWebhook(payload, headers, secret, { tolerance = 300, now } = {}) {
  const key = secretKey(secret);
  const body = rawBody(payload);
  const id = header(headers, 'webhook-id');
  const sentAt = header(headers, 'webhook-timestamp');
  const signatures = header(headers, 'webhook-signature');
  if (!id || !sentAt || !signatures) {
    throw new WebhookVerificationError('missing webhook-id, webhook-timestamp or webhook-signature header');
  }
  checkTimestamp(sentAt, tolerance, now);
  // The header's own text is what was signed: no reformatting of the timestamp.
  const expected = createHmac('sha256', key).update(`${id}.${sentAt}.`).update(body).digest();
  const matches = v1Signatures(signatures).some(
    // timingSafeEqual throws on unequal lengths; an HMAC's length is no secret.
    (given) => given.length === expected.length && timingSafeEqual(given, expected),
  );
  if (!matches) throw new WebhookVerificationError('no matching signature in webhook-signature');
  return event(id, body);
}

function secretKey(secret) {
  // undefined: an unset environment variable, most likely.
  if (typeof secret !== 'string') throw new TypeError("secret must be the endpoint's whsec_... string");
  // Padding is optional (the reference libraries accept secrets without it).
  let encoded = secret.trim();
  if (encoded.startsWith(SECRET_PREFIX)) encoded = encoded.slice(SECRET_PREFIX.length);
  encoded = encoded.replace(/=+$/, '');
  // Buffer.from(…, 'base64') skips what is not base64 instead of refusing it: check first.
  if (!BASE64.test(encoded) || encoded.length % 4 === 1) {
    throw new WebhookVerificationError('the webhook secret is not whsec_ followed by base64');
  }
  if (encoded.length === 0) throw new WebhookVerificationError('the webhook secret is empty');
  return Buffer.from(encoded, 'base64');
}

/** A Headers (whose get ignores case), or a plain object such as Node's req.headers. */
function header(headers, name) {
  if (headers == null) return undefined;
  let value;
  if (typeof headers.get === 'function') {
    value = headers.get(name);
  } else {
    const found = Object.keys(headers).find((key) => key.toLowerCase() === name);
    value = found === undefined ? undefined : headers[found];
  }
  // Node gives a header sent twice as an array: every signature in it counts.
  return Array.isArray(value) ? value.join(' ') : (value ?? undefined);
}

function checkTimestamp(sentAt, tolerance, now) {
  if (!UNIX_SECONDS.test(sentAt)) {
    throw new WebhookVerificationError('webhook-timestamp is not unix seconds');
  }
  let nowMs = now ?? Date.now();
  if (nowMs instanceof Date) nowMs = nowMs.getTime();
  const age = nowMs / 1000 - Number(sentAt);
  if (age > tolerance) throw new WebhookVerificationError('webhook-timestamp is too old');
  if (age < -tolerance) throw new WebhookVerificationError('webhook-timestamp is too new');
}

function rawBody(payload) {
  if (typeof payload === 'string') return Buffer.from(payload, 'utf8');
  if (payload instanceof Uint8Array) return payload; // a Buffer too
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  // An object here means a body parser (express.json()) ran first: the signed bytes are gone.
  throw new TypeError('payload must be the raw body: a string, Buffer, Uint8Array or ArrayBuffer');
}

/**
 * The v1 signatures listed. Other versions (v1a is asymmetric) and entries that are not
 * base64 are skipped, not refused: one unusable entry must not hide a valid one.
 */
function v1Signatures(value) {
  const found = [];
  for (const entry of value.split(/\s+/)) {
    const comma = entry.indexOf(',');
    if (comma < 0 || entry.slice(0, comma) !== 'v1') continue;
    const signature = entry.slice(comma + 1);
    if (PADDED_BASE64.test(signature)) found.push(Buffer.from(signature, 'base64'));
  }
  return found;
}

function event(id, body) {
  let parsed;
  try {
    parsed = JSON.parse(utf8.decode(body));
  } catch {
    throw new WebhookVerificationError('the webhook body is not JSON');
  }
  if (!isObject(parsed)) {
    throw new WebhookVerificationError('the webhook body is not a JSON object');
  }
  const { type, timestamp, data } = parsed;
  if (typeof type !== 'string' || typeof timestamp !== 'string' || !isObject(data)) {
    throw new WebhookVerificationError('the webhook body lacks its type, timestamp or data');
  }
  return { id, type, timestamp, data, raw: parsed };
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

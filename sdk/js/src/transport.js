/**
 * The one HTTP layer under every client: URL building, JSON bodies, per-attempt timeouts
 * (AbortController) and the retry policy.
 *
 * Retry policy: a network error, a timeout, 429 or 503 is retried up to `maxRetries` times
 * (default 2), waiting `Retry-After` when the answer gives it and otherwise an exponential
 * backoff with full jitter. Every attempt of a call sends the same headers, so the same
 * Idempotency-Key: a retried write applies once. Nothing else is retried.
 *
 * The credential lives in a private field and is only ever put in the Authorization header:
 * it is never logged, never in an error, never shown by console.log of a client.
 */
import { TallyError } from './errors.js';

export const DEFAULT_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_RETRIES = 2;
const RETRIED_STATUSES = new Set([429, 503]);
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 8_000;
const RETRY_AFTER_CAP_MS = 60_000;

/** The transport of a server-side client, which authenticates with the app's API key. */
export function apiKeyTransport(who, { apiKey, baseUrl, timeoutMs, maxRetries, fetch } = {}) {
  if (typeof apiKey !== 'string' || apiKey === '') {
    throw new TypeError(`${who}: apiKey is required (tally_...)`);
  }
  return new Transport({ baseUrl, authorization: `Bearer ${apiKey}`, timeoutMs, maxRetries, fetch });
}

export class Transport {
  #baseUrl;
  #authorization;
  #timeoutMs;
  #maxRetries;
  #fetch;

  constructor({ baseUrl, authorization, timeoutMs, maxRetries, fetch } = {}) {
    this.#baseUrl = checkBaseUrl(baseUrl);
    this.#authorization = authorization;
    this.#timeoutMs = checkNumber('timeoutMs', timeoutMs ?? DEFAULT_TIMEOUT_MS, 1);
    this.#maxRetries = checkNumber('maxRetries', maxRetries ?? DEFAULT_MAX_RETRIES, 0);
    if (fetch !== undefined && typeof fetch !== 'function') {
      throw new TypeError('Tally: fetch must be a function');
    }
    // Looked up at call time and called unbound from globalThis (window.fetch needs that).
    this.#fetch = fetch ?? ((url, init) => globalThis.fetch(url, init));
  }

  /**
   * One call, retried as above. Resolves `{ status, body, requestId, replayed }` for a 2xx;
   * throws a TallyError for anything else.
   */
  async request({ method, path, query, body, idempotencyKey, authorization, signal }) {
    const url = this.#baseUrl + path + queryString(query);
    const headers = { Accept: 'application/json' };
    const credential = authorization ?? this.#authorization;
    if (credential) headers.Authorization = credential;
    if (idempotencyKey !== undefined) headers['Idempotency-Key'] = idempotencyKey;
    let payload;
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      payload = JSON.stringify(body);
    }
    const init = { method, headers, body: payload };

    for (let attempt = 0; ; attempt += 1) {
      const retriesLeft = attempt < this.#maxRetries;
      let answer;
      try {
        answer = await this.#attempt(url, init, signal);
      } catch (failure) {
        if (failure.code === 'aborted' || !retriesLeft) throw failure;
        await sleep(backoffMs(attempt), signal);
        continue;
      }
      if (answer.status >= 200 && answer.status < 300) {
        if (answer.invalid) {
          throw answerError(answer, 'invalid_response', 'the answer is not valid JSON');
        }
        return answer;
      }
      if (RETRIED_STATUSES.has(answer.status) && retriesLeft) {
        await sleep(answer.retryAfterMs ?? backoffMs(attempt), signal);
        continue;
      }
      throw answerError(answer);
    }
  }

  async #attempt(url, init, signal) {
    if (signal?.aborted) throw abortedError(signal);
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.#timeoutMs);
    const forwardAbort = () => controller.abort();
    signal?.addEventListener('abort', forwardAbort, { once: true });
    try {
      const response = await this.#fetch(url, { ...init, signal: controller.signal });
      const text = await response.text(); // under the same timeout as the headers
      return readAnswer(response, text);
    } catch (cause) {
      if (signal?.aborted) throw abortedError(signal);
      if (timedOut) {
        throw new TallyError({
          code: 'timeout',
          error: `no answer within ${this.#timeoutMs} ms`,
        });
      }
      const reason = cause?.cause?.code ?? cause?.cause?.message;
      throw new TallyError({
        code: 'network_error',
        error: `network error: ${cause?.message ?? cause}${reason ? ` (${reason})` : ''}`,
        cause,
      });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', forwardAbort);
    }
  }
}

function readAnswer(response, text) {
  const header = (name) => response.headers?.get?.(name) ?? null;
  let body = null;
  let invalid = false;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
      invalid = true;
    }
  }
  return {
    status: response.status,
    body,
    invalid,
    requestId: header('x-request-id'),
    replayed: header('idempotent-replayed') === 'true',
    retryAfterMs: parseRetryAfter(header('retry-after')),
  };
}

function answerError(answer, code, message) {
  const apiMessage = typeof answer.body?.error === 'string' ? answer.body.error : undefined;
  return new TallyError({
    status: answer.status,
    error: message ?? apiMessage,
    requestId: answer.requestId,
    body: answer.body,
    code,
  });
}

function abortedError(signal) {
  const reason = signal.reason;
  return new TallyError({
    code: 'aborted',
    error: 'the request was aborted',
    cause: reason === undefined ? undefined : reason,
  });
}

/** Retry-After in seconds (what Tally sends) or as an HTTP date; capped at a minute. */
export function parseRetryAfter(value) {
  if (value == null || value.trim() === '') return undefined;
  const seconds = Number(value);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(value) - Date.now();
  if (Number.isNaN(ms)) return undefined;
  return Math.min(Math.max(ms, 0), RETRY_AFTER_CAP_MS);
}

/** Full jitter: anywhere from 0 to min(cap, base * 2^attempt). */
export function backoffMs(attempt) {
  return Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortedError(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortedError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function queryString(query) {
  if (!query) return '';
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) params.append(name, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

function checkBaseUrl(baseUrl) {
  if (typeof baseUrl !== 'string' || baseUrl.trim() === '') {
    throw new TypeError('Tally: baseUrl is required, e.g. "http://127.0.0.1:8000"');
  }
  try {
    // Relative URLs ("/tally") are fine in a browser page, which resolves them.
    new URL(baseUrl, globalThis.location?.href);
  } catch {
    throw new TypeError(`Tally: baseUrl is not a URL: ${JSON.stringify(baseUrl)}`);
  }
  return baseUrl.replace(/\/+$/, '');
}

function checkNumber(name, value, minimum) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < minimum) {
    throw new TypeError(`Tally: ${name} must be a number >= ${minimum}`);
  }
  return name === 'maxRetries' ? Math.floor(value) : value;
}

/**
 * Client tokens in the browser: `tct_<payload>.<signature>`, the payload base64url JSON with
 * `exp` in epoch seconds (engine/accounts/client_tokens.py). The cache asks `getToken` again
 * when the token it holds has expired (or is about to), or after the API refused it with 401.
 */
const EXPIRY_MARGIN_MS = 1_000; // a token this close to its expiry could lapse in flight

/** The token's expiry in epoch milliseconds, or undefined when it cannot be read. */
export function tokenExpiresAt(token) {
  if (typeof token !== 'string' || !token.startsWith('tct_')) return undefined;
  try {
    const claims = JSON.parse(decodeBase64Url(token.slice(4).split('.')[0]));
    return typeof claims?.exp === 'number' ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

function decodeBase64Url(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const binary = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
  return new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
}

export class TokenCache {
  #getToken;
  #token = null;
  #expiresAt;
  #pending = null;

  constructor(getToken) {
    if (typeof getToken !== 'function') {
      throw new TypeError('createBrowserClient: getToken must be a function returning a client token');
    }
    this.#getToken = getToken;
  }

  /** The cached token while it is valid; otherwise a fresh one (one getToken call at a time). */
  async current() {
    if (this.#token !== null && !this.#expired()) return this.#token;
    return this.#refresh();
  }

  /** The API refused `token`: forget it, unless a newer one replaced it meanwhile. */
  discard(token) {
    if (this.#token === token) this.#token = null;
  }

  #expired() {
    return this.#expiresAt !== undefined && this.#expiresAt - EXPIRY_MARGIN_MS <= Date.now();
  }

  #refresh() {
    // Promise.resolve().then: a getToken that throws at once rejects this call only.
    this.#pending ??= Promise.resolve()
      .then(() => this.#getToken())
      .then((value) => {
        const token = tokenOf(value);
        this.#token = token;
        this.#expiresAt = tokenExpiresAt(token);
        return token;
      })
      .finally(() => {
        this.#pending = null;
      });
    return this.#pending;
  }
}

/** getToken may give the token, or what POST /client-tokens answered (`{ token, … }`). */
function tokenOf(value) {
  const token = typeof value === 'string' ? value : value?.token;
  if (typeof token !== 'string' || token === '') {
    throw new TypeError('createBrowserClient: getToken gave no client token (tct_...)');
  }
  return token;
}

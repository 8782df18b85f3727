/**
 * Idempotency keys: one per call, made before its first attempt and sent on every retry.
 * crypto.randomUUID where the platform has it (Node >= 19, browsers in secure contexts);
 * getRandomValues (any browser); node:crypto on Node 18, whose global has no webcrypto.
 */
export async function newIdempotencyKey() {
  const webcrypto = globalThis.crypto;
  if (typeof webcrypto?.randomUUID === 'function') return webcrypto.randomUUID();
  if (typeof webcrypto?.getRandomValues === 'function') {
    return uuidFromBytes(webcrypto.getRandomValues(new Uint8Array(16)));
  }
  const nodeCrypto = await import(/* webpackIgnore: true */ /* @vite-ignore */ 'node:crypto');
  return nodeCrypto.randomUUID();
}

function uuidFromBytes(bytes) {
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

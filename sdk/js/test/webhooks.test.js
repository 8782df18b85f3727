// verifyWebhook: Standard Webhooks signatures, checked against a vector the Python
// `standardwebhooks` package made and against messages signed here with node:crypto directly.
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';

import { TallyError, WebhookVerificationError, verifyWebhook } from '../src/server.js';

// Made once with `standardwebhooks.webhooks.Webhook(secret).sign(id, datetime(2026, 1, 1,
// tzinfo=UTC), BODY)` for both secrets: the old secret's signature first, as during a rotation.
const VECTOR = {
  secret: 'whsec_cSyTTAmV/sDLYtYN3Bwny1Hnn1wFLApR4IMktbtqv3E=',
  oldSecret: 'whsec_ZToQtcOT/rnxiXGvl/KlK6ARJSBNooXp',
  headers: {
    'webhook-id': 'evt_01JGF1A8Q6V7Z3N4K5M2P9R8T0',
    'webhook-timestamp': '1767225600',
    'webhook-signature':
      'v1,sxuPOYCnL5oKiE7dtrUUS2YKXnFKGN+JkT+7oqEc2lE= v1,gBqC1DTFMr9JF4V3Kd1xxnnWGfi5KB3kvscrnjVOtyA=',
  },
  body: '{"type":"balance.low","timestamp":"2026-01-01T00:00:00.000000Z","data":{"user_id":"user_001","available":40,"threshold":50}}',
  sentAt: new Date('2026-01-01T00:00:00Z'),
};

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const BODY = JSON.stringify({
  type: 'payment.credited',
  timestamp: '2026-02-03T04:05:06.000000Z',
  data: { user_id: 'user_002', credits: 1000, amount_cents: 1000 },
});

/** Signs as the specification says, without the SDK: `v1,` + base64 HMAC-SHA256. */
function sign(secret, id, seconds, body) {
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const mac = createHmac('sha256', key).update(`${id}.${seconds}.`).update(body).digest('base64');
  return `v1,${mac}`;
}

function signed({ secret = SECRET, body = BODY, id = 'msg_1', seconds = nowSeconds() } = {}) {
  return {
    'webhook-id': id,
    'webhook-timestamp': String(seconds),
    'webhook-signature': sign(secret, id, seconds, body),
  };
}

function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}

function refused(run, message) {
  assert.throws(run, (error) => {
    assert.ok(error instanceof WebhookVerificationError, `not a WebhookVerificationError: ${error}`);
    assert.match(error.message, message);
    return true;
  });
}

describe('verifyWebhook', () => {
  test('verifies the vector standardwebhooks signed, under the new secret and the old', () => {
    const now = new Date(VECTOR.sentAt.getTime() + 120_000);
    for (const secret of [VECTOR.secret, VECTOR.oldSecret]) {
      const event = verifyWebhook(VECTOR.body, VECTOR.headers, secret, { now });
      assert.deepEqual(event, {
        id: 'evt_01JGF1A8Q6V7Z3N4K5M2P9R8T0',
        type: 'balance.low',
        timestamp: '2026-01-01T00:00:00.000000Z',
        data: { user_id: 'user_001', available: 40, threshold: 50 },
        raw: JSON.parse(VECTOR.body),
      });
    }
    const other = `whsec_${randomBytes(32).toString('base64')}`;
    refused(() => verifyWebhook(VECTOR.body, VECTOR.headers, other, { now }), /no matching signature/);
    // The same message checked at the real time is long past the tolerance.
    refused(() => verifyWebhook(VECTOR.body, VECTOR.headers, VECTOR.secret), /too old/);
    // `now` may be milliseconds, as Date.now() gives.
    const at = VECTOR.sentAt.getTime() - 60_000;
    assert.equal(verifyWebhook(VECTOR.body, VECTOR.headers, VECTOR.secret, { now: at }).type, 'balance.low');
  });

  test('takes the body as a string, Buffer, Uint8Array or ArrayBuffer', () => {
    const headers = signed();
    const bytes = Buffer.from(BODY);
    const copy = new Uint8Array(bytes);
    for (const payload of [BODY, bytes, copy, copy.buffer]) {
      const event = verifyWebhook(payload, headers, SECRET);
      assert.equal(event.type, 'payment.credited');
      assert.deepEqual(event.data, { user_id: 'user_002', credits: 1000, amount_cents: 1000 });
      assert.equal(event.id, 'msg_1');
    }
    // A parsed body is no body: a TypeError, not a verification failure.
    assert.throws(() => verifyWebhook(JSON.parse(BODY), headers, SECRET), TypeError);
  });

  test('a wrong secret or a changed body, id or timestamp does not verify', () => {
    const headers = signed();
    refused(() => verifyWebhook(BODY, headers, `whsec_${randomBytes(32).toString('base64')}`), /no matching signature/);
    refused(() => verifyWebhook(BODY.replace('1000', '9000'), headers, SECRET), /no matching signature/);
    // Reserialized JSON (here with spaces) is other bytes: it does not verify.
    refused(() => verifyWebhook(JSON.stringify(JSON.parse(BODY), null, 1), headers, SECRET), /no matching signature/);
    refused(() => verifyWebhook(BODY, { ...headers, 'webhook-id': 'msg_2' }, SECRET), /no matching signature/);
    const later = String(Number(headers['webhook-timestamp']) + 1);
    refused(() => verifyWebhook(BODY, { ...headers, 'webhook-timestamp': later }, SECRET), /no matching signature/);
    assert.equal(verifyWebhook(BODY, headers, SECRET).type, 'payment.credited');
  });

  test('the timestamp must be within the tolerance, either way', () => {
    const now = nowSeconds();
    const at = (seconds) => signed({ seconds });
    refused(() => verifyWebhook(BODY, at(now - 301), SECRET, { now: now * 1000 }), /too old/);
    refused(() => verifyWebhook(BODY, at(now + 301), SECRET, { now: now * 1000 }), /too new/);
    assert.ok(verifyWebhook(BODY, at(now - 300), SECRET, { now: now * 1000 }));
    assert.ok(verifyWebhook(BODY, at(now + 300), SECRET, { now: now * 1000 }));
    assert.ok(verifyWebhook(BODY, at(now - 3000), SECRET, { now: now * 1000, tolerance: 3600 }));
    refused(() => verifyWebhook(BODY, at(now - 31), SECRET, { now: now * 1000, tolerance: 30 }), /too old/);
    for (const bad of ['', 'soon', '1.7e9', '-5', `${now}.5`]) {
      const headers = { ...at(now), 'webhook-timestamp': bad };
      refused(() => verifyWebhook(BODY, headers, SECRET), bad ? /not unix seconds/ : /missing/);
    }
  });

  test('any one of several signatures verifies, as during a secret rotation', () => {
    const old = `whsec_${randomBytes(32).toString('base64')}`;
    const seconds = nowSeconds();
    const both = [sign(old, 'msg_r', seconds, BODY), sign(SECRET, 'msg_r', seconds, BODY)];
    const headers = { 'webhook-id': 'msg_r', 'webhook-timestamp': String(seconds) };
    for (const list of [both.join(' '), [...both].reverse().join(' ')]) {
      const rotating = { ...headers, 'webhook-signature': list };
      assert.equal(verifyWebhook(BODY, rotating, SECRET).id, 'msg_r');
      assert.equal(verifyWebhook(BODY, rotating, old).id, 'msg_r');
    }
    // Other versions and entries that are not signatures are skipped, not fatal.
    const mixed = `v1a,${both[1].slice(3)} junk v1,!!! v2,${both[1].slice(3)} ${both[1]}`;
    assert.ok(verifyWebhook(BODY, { ...headers, 'webhook-signature': mixed }, SECRET));
    const unversioned = `v1a,${both[1].slice(3)} v2,${both[1].slice(3)} ${both[1].slice(3)}`;
    refused(() => verifyWebhook(BODY, { ...headers, 'webhook-signature': unversioned }, SECRET), /no matching/);
    // A signature cut short is no match (and no timingSafeEqual length error).
    const short = `v1,${Buffer.from('short').toString('base64')}`;
    refused(() => verifyWebhook(BODY, { ...headers, 'webhook-signature': short }, SECRET), /no matching/);
  });

  test('header names in any case, in a plain object or a Headers', () => {
    const headers = signed();
    const upper = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toUpperCase(), v]));
    const title = {
      'Webhook-Id': headers['webhook-id'],
      'Webhook-Timestamp': headers['webhook-timestamp'],
      'Webhook-Signature': headers['webhook-signature'],
    };
    for (const form of [headers, upper, title, new Headers(upper)]) {
      assert.equal(verifyWebhook(BODY, form, SECRET).type, 'payment.credited');
    }
    // Node hands a header sent twice over as an array: each signature in it counts.
    const twice = { ...headers, 'webhook-signature': ['v1,AAAA', headers['webhook-signature']] };
    assert.ok(verifyWebhook(BODY, twice, SECRET));
    for (const name of Object.keys(headers)) {
      const { [name]: _dropped, ...rest } = headers;
      refused(() => verifyWebhook(BODY, rest, SECRET), /missing webhook-id, webhook-timestamp or webhook-signature/);
      refused(() => verifyWebhook(BODY, new Headers(rest), SECRET), /missing/);
    }
  });

  test('the secret: whsec_ optional, padding optional, anything else refused', () => {
    const key = randomBytes(24);
    const secret = `whsec_${key.toString('base64')}`;
    const headers = signed({ secret });
    for (const form of [secret, secret.slice('whsec_'.length), secret.replace(/=+$/, ''), ` ${secret}\n`]) {
      assert.ok(verifyWebhook(BODY, headers, form), form);
    }
    // Unpadded secrets: a 31-byte key has one '=' less in base64.
    const odd = `whsec_${randomBytes(31).toString('base64').replace(/=+$/, '')}`;
    assert.ok(verifyWebhook(BODY, signed({ secret: odd }), odd));
    for (const bad of ['whsec_', '', 'whsec_not base64!', 'whsec_abcde', 'whsec_ab$d']) {
      refused(() => verifyWebhook(BODY, headers, bad), /webhook secret/);
    }
    // The secret is checked first: a misconfigured receiver hears so even for a bad request.
    refused(() => verifyWebhook(BODY, {}, 'whsec_'), /webhook secret/);
    // An unset environment variable is a mistake in the code, not a bad request.
    assert.throws(() => verifyWebhook(BODY, headers, undefined), TypeError);
  });

  test('a signed body must be a Tally event: a JSON object with type, timestamp and data', () => {
    const cases = [
      ['not json', /not JSON/],
      [Buffer.from([0x7b, 0xff, 0x7d]), /not JSON/],
      ['[1, 2]', /not a JSON object/],
      ['null', /not a JSON object/],
      ['{"type": "balance.low", "timestamp": "2026-01-01T00:00:00Z"}', /lacks/],
      ['{"type": 1, "timestamp": "2026-01-01T00:00:00Z", "data": {}}', /lacks/],
    ];
    for (const [body, message] of cases) {
      const bytes = Buffer.from(body);
      refused(() => verifyWebhook(bytes, signed({ body: bytes }), SECRET), message);
    }
  });

  test('its error is a TallyError with code invalid_webhook and no status', () => {
    const error = (() => {
      try {
        verifyWebhook(BODY, {}, SECRET);
      } catch (caught) {
        return caught;
      }
      return null;
    })();
    assert.ok(error instanceof WebhookVerificationError && error instanceof TallyError);
    assert.equal(error.name, 'WebhookVerificationError');
    assert.equal(error.code, 'invalid_webhook');
    assert.equal(error.status, 0);
    assert.equal(error.requestId, null);
    assert.ok(!error.message.includes(SECRET.slice(6)), 'the secret is never part of an error');
  });
});

describe('the browser entry', () => {
  test('imports no Node built-in, statically: node:crypto stays on the server', () => {
    // Follows the static import graph from browser.js; a dynamic import('node:crypto') (Node 18
    // fallback for ids) is not followed by bundlers and is allowed.
    const seen = new Set();
    const builtins = [];
    const visit = (url) => {
      if (seen.has(url.href)) return;
      seen.add(url.href);
      const source = readFileSync(url, 'utf8');
      for (const [, specifier] of source.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/gms)) {
        if (specifier.startsWith('.')) visit(new URL(specifier, url));
        else builtins.push(`${url.pathname.split('/').pop()}: ${specifier}`);
      }
    };
    visit(new URL('../src/browser.js', import.meta.url));
    assert.ok(seen.size > 3, `too few modules found: ${[...seen]}`);
    assert.ok(![...seen].some((href) => href.endsWith('/webhooks.js')));
    assert.deepEqual(builtins, []);
    // And the same walk from the server entry does find node:crypto, so the walk works.
    seen.clear();
    visit(new URL('../src/server.js', import.meta.url));
    assert.deepEqual(builtins, ['webhooks.js: node:crypto']);
  });
});

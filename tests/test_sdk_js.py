"""The JavaScript SDK (sdk/js): its own tests under `node --test` against the real stack, the
packed tarball installed into a clean directory running the quickstart, and a TypeScript
consumer type-checked against the shipped declarations."""

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks.webhooks import Webhook

from engine.accounts.apps import Apps
from engine.accounts.repository import AppRepository
from tests.browser import enable_purchases
from tests.conftest import ApiServer, AppUnderTest, PrivateStack, readme_example
from tests.servers import LocalStripe

SDK = Path(__file__).resolve().parent.parent / "sdk" / "js"
NODE = shutil.which("node")
NPM = shutil.which("npm")
NPX = shutil.which("npx")

# .ci/setup installs Node: without it these tests fail rather than skip, so CI cannot pass them
# unrun.
assert NODE and NPM, "node and npm are needed: bash .ci/setup installs them"


def run(
    command: list[str], cwd: Path, timeout: float, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "npm_config_update_notifier": "false", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def shown(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


@pytest.fixture
def billing_app(repository: AppRepository) -> AppUnderTest:
    """An app whose Stripe account is localstripe, for cards and purchases."""
    app, new_key = Apps(repository).create("sdk-js-billing")
    billing = AppUnderTest(app.app_id, new_key.api_key, new_key.key.key_id)
    enable_purchases(repository, billing)
    return billing


def test_the_node_tests_pass_against_the_live_stack(
    api_server: ApiServer,
    test_app: AppUnderTest,
    billing_app: AppUnderTest,
    localstripe: LocalStripe,
) -> None:
    done = run(
        [str(NODE), "--test", "test/"],
        SDK,
        timeout=300,
        TALLY_URL=api_server.url,
        TALLY_API_KEY=test_app.api_key,
        TALLY_BILLING_API_KEY=billing_app.api_key,
        TALLY_STRIPE_URL=localstripe.url,
    )
    assert done.returncode == 0, shown(done)
    # With the stack given, nothing may have skipped itself.
    assert "# SKIP" not in done.stdout, shown(done)
    assert "# fail 0" in done.stdout, shown(done)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`npm pack` of sdk/js, installed into a clean directory as a user would."""
    assert NPM is not None
    packed = tmp_path_factory.mktemp("pack")
    done = run([NPM, "pack", "--pack-destination", str(packed)], SDK, timeout=120)
    assert done.returncode == 0, shown(done)
    tarballs = list(packed.glob("tally-credits-sdk-*.tgz"))
    assert len(tarballs) == 1, shown(done)

    consumer = tmp_path_factory.mktemp("consumer")
    (consumer / "package.json").write_text(
        json.dumps({"name": "sdk-consumer", "private": True, "type": "module"})
    )
    done = run([NPM, "install", "--no-audit", "--no-fund", str(tarballs[0])], consumer, timeout=180)
    assert done.returncode == 0, shown(done)
    yield consumer


def test_the_tarball_ships_the_sources_and_declarations_only(installed: Path) -> None:
    package = installed / "node_modules" / "tally-credits-sdk"
    shipped = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert "README.md" in shipped and "package.json" in shipped
    for entry in ("index", "server", "browser"):
        assert f"src/{entry}.js" in shipped and f"src/{entry}.d.ts" in shipped
    assert not [p for p in shipped if p.startswith(("test", "node_modules"))], shipped
    manifest = json.loads((package / "package.json").read_text())
    assert manifest["type"] == "module"
    assert not manifest.get("dependencies"), "the SDK has no runtime dependencies"


QUICKSTART = """
import { Tally } from 'tally-credits-sdk'
import { createServerClient } from 'tally-credits-sdk/server'
import { createBrowserClient } from 'tally-credits-sdk/browser'

const tally = new Tally({ apiKey: process.env.TALLY_API_KEY, baseUrl: process.env.TALLY_URL })

const data = await tally.credits.add(
  { user_id: 'user_001', amount: 100, description: 'Welcome credits' },
  { idempotencyKey: 'order_abc123_credits' },
)
console.log('add', data.success, data.balance_after)

const result = await tally.credits.deduct({
  user_id: 'user_001',
  amount: 10,
  description: 'AI generation',
})
console.log('deduct', result.success, result.balance_after)

const refused = await tally.credits.deduct({ user_id: 'user_001', amount: 1000 })
console.log('refused', refused.success, refused.error, refused.balance)

const { TALLY_API_KEY: apiKey, TALLY_URL: baseUrl } = process.env
const reauth = createServerClient({ apiKey, baseUrl })
console.log('reauth', (await reauth.getBalance('user_001')).balance)
console.log('browser', typeof createBrowserClient)
"""


def test_the_readme_quickstart_runs_as_written(
    installed: Path, api_server: ApiServer, test_app: AppUnderTest
) -> None:
    script = installed / "readme.mjs"
    script.write_text(readme_example("js"))
    env = {"TALLY_URL": api_server.url, "TALLY_API_KEY": test_app.api_key}
    done = run([str(NODE), script.name], installed, timeout=60, **env)
    assert done.returncode == 0, shown(done)
    assert done.stdout == "Balance after 90\n", shown(done)


def test_the_installed_package_runs_the_quickstart(
    installed: Path, api_server: ApiServer, test_app: AppUnderTest
) -> None:
    script = installed / "quickstart.mjs"
    script.write_text(QUICKSTART)
    done = run(
        [str(NODE), script.name],
        installed,
        timeout=60,
        TALLY_URL=api_server.url,
        TALLY_API_KEY=test_app.api_key,
    )
    assert done.returncode == 0, shown(done)
    assert done.stdout.splitlines() == [
        "add true 100",
        "deduct true 90",
        "refused false Insufficient credits 90",
        "reauth 90",
        "browser function",
    ], shown(done)


CONSUMER_TS = """
import { Tally, TallyError, type DeductResult } from 'tally-credits-sdk';
import {
  createServerClient,
  InsufficientBalanceError,
  verifyWebhook,
  WebhookVerificationError,
  type WebhookEvent,
} from 'tally-credits-sdk/server';
import { createBrowserClient, type PaymentMethod } from 'tally-credits-sdk/browser';

// No DOM and no @types/node: the declarations must stand on their own.
declare function report(...values: unknown[]): void;

export async function main(apiKey: string, baseUrl: string): Promise<number> {
  const tally = new Tally({ apiKey, baseUrl, timeoutMs: 5000, maxRetries: 1 });
  const added = await tally.credits.add(
    { user_id: 'u', amount: 1, metadata: { plan: 'pro' } },
    { idempotencyKey: 'k' },
  );
  const result: DeductResult = await tally.credits.deduct({ user_id: 'u', amount: 1 });
  if (!result.success) {
    const balance: number = result.balance;
    return balance;
  }
  const after: number = result.balance_after;
  // @ts-expect-error amount is required
  await tally.credits.add({ user_id: 'u' });
  // @ts-expect-error the API's field names are snake_case
  await tally.credits.add({ userId: 'u', amount: 1 });
  const batch = await tally.credits.batch([{ type: 'deduct', user_id: 'u', amount: 1 }]);
  const key: string = batch.results[0].idempotency_key;
  const refund = await tally.credits.refund({ ledger_id: added.ledger_id }, { signal: undefined });
  const history = await tally.credits.history('u', { limit: 10, offset: 0 });
  const hasMore: boolean = history.has_more;
  const token: string = (await tally.clientTokens.create({ user_id: 'u', ttl_seconds: 60 })).token;
  const grant = await tally.credits.add({ user_id: 'u', amount: 5, expires_at: new Date() });
  const grantId: string | undefined = grant.grant_id;
  const { available, held, grants } = await tally.credits.balance('u');
  const remaining: number = grants[0].remaining;
  const hold = await tally.credits.hold({ user_id: 'u', amount: 5, ttl_seconds: 60 });
  const captured = await tally.credits.captureHold(hold.hold_id, { amount: 1 });
  await tally.credits.releaseHold(hold.hold_id, { description: 'unused' }, { idempotencyKey: 'r' });
  const holdStatus: 'active' | 'captured' | 'released' | 'expired' = (
    await tally.credits.getHold(hold.hold_id)
  ).status;
  const holds = (await tally.credits.listHolds('u')).holds;
  const cost: number = await tally.credits.withHold('u', 10, async (h) => {
    const result = await h.capture(3);
    return result.captured + h.amount + h.available;
  }, { ttl_seconds: 30, description: 'AI call' });
  // @ts-expect-error withHold takes the function to run under the hold
  await tally.credits.withHold('u', 10);
  // @ts-expect-error a hold's fields are snake_case
  await tally.credits.hold({ user_id: 'u', amount: 1, ttlSeconds: 60 });
  report(grantId, available, held, remaining, captured.released, holdStatus, holds.length, cost);
  try {
    await tally.credits.balance('u');
  } catch (err) {
    if (err instanceof TallyError) {
      const status: number = err.status;
      const requestId: string | null = err.requestId;
      report(status, requestId, err.error);
    }
  }

  const reauth = createServerClient({ baseUrl, apiKey });
  try {
    const { newBalance } = await reauth.charge('u', { amount: 1, requestUuid: 'r', note: 'n' });
    report(newBalance);
  } catch (err) {
    if (err instanceof InsufficientBalanceError) report(err.balance, err.message);
  }
  await reauth.deposit('u', { amount: 1, requestUuid: 'd' });
  const { transactions } = await reauth.getTransactions('u', { limit: 5, offset: 0 });
  const delta: number = transactions[0].amountDelta;
  const { balance, grants: reauthGrants } = await reauth.getBalance('u');
  const granted = await reauth.deposit('u', { amount: 1, expiresAt: '2030-01-01T00:00:00Z' });
  const spent: number = await reauth.withHold('u', 5, async (h) => {
    const result = await h.capture(2, { note: 'AI call' });
    return result.balanceAfter + h.available;
  }, { ttlSeconds: 30 });
  const reauthHold = await reauth.hold('u', { amount: 1, requestUuid: 'h' });
  await reauth.captureHold(reauthHold.holdId, { amount: 1 });
  report(reauthGrants[0]?.expiresAt, granted.grantId, spent);

  const body = new Uint8Array([123, 125]);
  const headers = { 'webhook-id': 'm', 'webhook-timestamp': '1', 'webhook-signature': ['v1,x'] };
  try {
    const event: WebhookEvent<{ user_id: string }> = verifyWebhook<{ user_id: string }>(
      body, headers, 'whsec_x', { tolerance: 60, now: new Date() },
    );
    const who: string = event.data.user_id;
    const what: string = event.raw.type;
    const plain = verifyWebhook('{}', headers, 's').data;
    report(event.id, event.type, event.timestamp, who, what, plain);
  } catch (err) {
    if (err instanceof WebhookVerificationError) {
      const code: 'invalid_webhook' = err.code;
      report(code, err.message);
    }
  }
  // @ts-expect-error the raw body, not a parsed object
  verifyWebhook({ type: 'balance.low' }, headers, 'whsec_x');
  // @ts-expect-error now is a Date or milliseconds
  verifyWebhook('{}', headers, 'whsec_x', { now: '2026-01-01' });

  const browser = createBrowserClient({ baseUrl, getToken: async () => token });
  const cards: PaymentMethod[] = await browser.getPaymentMethods();
  const overdraw: boolean = (await browser.getCreditsConfig()).overdrawEnabled;
  const { clientSecret, setupIntentId } = await browser.createSetupIntent();
  await browser.savePaymentMethod(setupIntentId);
  await browser.reorderPaymentMethods(cards.map((card) => card.id));
  await browser.deletePaymentMethod(cards[0].id);
  const purchase = await browser.purchaseCredits({
    amountCents: 1000,
    paymentMethodId: cards[0].id,
    idempotencyKey: key,
  });
  const topUp = await browser.updateAutoTopUp({
    enabled: false,
    thresholdCents: 0,
    purchaseAmountCents: 0,
  });
  const status: string = (await browser.getAutoTopUpStatus()).status;
  // @ts-expect-error reauth's names are camelCase
  await browser.updateAutoTopUp({ enabled: true, threshold_cents: 1, purchase_amount_cents: 1 });
  // @ts-expect-error getToken is required
  createBrowserClient({ baseUrl });
  const purchaseId: number = purchase.purchaseId;
  const intent: string | null = purchase.paymentIntentId;
  report(clientSecret, overdraw, hasMore, status, topUp.enabled, refund.amount, purchaseId, intent);
  return after + delta + balance + purchase.creditsPurchased + (purchase.newBalance ?? 0);
}
"""

TSCONFIGS = {
    # A Node app.
    "tsconfig.node.json": {"module": "nodenext", "moduleResolution": "nodenext", "lib": ["es2022"]},
    # A bundled browser app.
    "tsconfig.bundler.json": {
        "module": "esnext",
        "moduleResolution": "bundler",
        "lib": ["es2022", "dom"],
    },
}


def test_a_typescript_consumer_type_checks(installed: Path) -> None:
    # TypeScript comes from the npm registry, as the SDK's users get it: no skipping, so the
    # declarations are checked on every run.
    assert NPX is not None, "npx comes with npm: bash .ci/setup installs it"
    tsc = [NPX, "-y", "-p", "typescript@5", "tsc"]
    probe = run([*tsc, "--version"], installed, timeout=300)
    assert probe.returncode == 0 and "Version 5." in probe.stdout, shown(probe)
    (installed / "consumer.ts").write_text(CONSUMER_TS)
    for name, options in TSCONFIGS.items():
        config = {
            "compilerOptions": {
                "strict": True,
                "noEmit": True,
                "target": "es2022",
                "types": [],
                "skipLibCheck": False,
                **options,
            },
            "files": ["consumer.ts"],
        }
        (installed / name).write_text(json.dumps(config))
        done = run([*tsc, "-p", name], installed, timeout=300)
        assert done.returncode == 0, f"{name}: {shown(done)}"


RETRYING_DEDUCT = """
import { Tally } from '%s'

const attempts = []
const tally = new Tally({
  apiKey: process.env.TALLY_API_KEY,
  baseUrl: process.env.TALLY_URL,
  maxRetries: 30,
  fetch: async (url, init) => {
    const answer = await fetch(url, init)
    attempts.push({ key: init.headers['Idempotency-Key'], status: answer.status })
    console.log('attempt', answer.status)
    return answer
  },
})
const result = await tally.credits.deduct({ user_id: 'u', amount: 30, description: 'while down' })
console.log(JSON.stringify({ result, attempts }))
"""


def test_a_deduct_retried_while_redis_is_down_applies_once(
    private_stack: PrivateStack, tmp_path: Path
) -> None:
    stack = private_stack
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    added = httpx.post(f"{stack.api.url}/credits/add", json={"user_id": "u", "amount": 100},
                       headers=headers)  # fmt: skip
    assert added.status_code == 200
    direct = redis.Redis(port=stack.redis.port)
    direct.save()  # no worker runs here: the snapshot keeps the balance over the restart
    direct.close()
    stack.redis.kill()
    script = tmp_path / "retrying.mjs"
    script.write_text(RETRYING_DEDUCT % (SDK / "src" / "index.js").as_uri())
    env = {**os.environ, "TALLY_URL": stack.api.url, "TALLY_API_KEY": stack.api_key}
    node = subprocess.Popen([str(NODE), str(script)], stdout=subprocess.PIPE, text=True, env=env)
    assert node.stdout is not None
    try:
        assert node.stdout.readline() == "attempt 503\n", "Redis is down: the API says 503"
        stack.redis.start()  # the same port and directory
        out, _ = node.communicate(timeout=60)
    finally:
        node.kill()
    report = json.loads(out.splitlines()[-1])
    assert report["result"]["success"] and report["result"]["balance_after"] == 70, report
    statuses = [a["status"] for a in report["attempts"]]
    keys = {a["key"] for a in report["attempts"]}
    assert statuses[0] == 503 and statuses[-1] == 200 and len(keys) == 1 and None not in keys
    history = httpx.get(f"{stack.api.url}/credits/history", params={"user_id": "u"},
                        headers=headers).json()  # fmt: skip
    assert [(e["kind"], e["amount"]) for e in history["entries"]] == [("deduct", -30), ("add", 100)]


VERIFY_VECTORS = """
import { readFileSync } from 'node:fs'
import { verifyWebhook } from '%s'

const vectors = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const outcomes = vectors.map(({ body, headers, secret, fetchHeaders }) => {
  try {
    const given = fetchHeaders ? new Headers(headers) : headers
    const event = verifyWebhook(Buffer.from(body, 'utf8'), given, secret)
    return { ok: true, id: event.id, type: event.type, data: event.data }
  } catch (error) {
    return { ok: false, name: error.name, message: error.message }
  }
})
console.log(JSON.stringify(outcomes))
"""


def test_verify_webhook_checks_what_standardwebhooks_signs(tmp_path: Path) -> None:
    """Fresh secrets and the current time, signed by the Python reference implementation."""
    new, old, other = ("whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(3))
    now = datetime.now(UTC)
    data = {"user_id": "usér_001", "available": 40, "note": "Crédits €"}
    event = {"type": "balance.low", "timestamp": now.isoformat(), "data": data}
    body = json.dumps(event, ensure_ascii=False)  # UTF-8 on the wire: bytes, not characters

    def vector(secret: str, *signers: str, at: datetime = now, text: str = body) -> dict[str, Any]:
        signatures = " ".join(Webhook(s).sign("msg_v", at, body) for s in signers)
        headers = {"webhook-id": "msg_v", "webhook-timestamp": str(int(at.timestamp())),
                   "webhook-signature": signatures}  # fmt: skip
        return {"body": text, "headers": headers, "secret": secret, "fetchHeaders": False}

    upper = vector(new, new)
    upper["headers"] = {name.upper(): value for name, value in upper["headers"].items()}
    fetch_headers = vector(new, new) | {"fetchHeaders": True}
    cases: list[tuple[dict[str, Any], str | None]] = [
        (vector(new, new), None),
        (vector(new, old, new), None),
        (vector(old, old, new), None),
        (vector(new.removeprefix("whsec_"), new), None),
        (upper, None),
        (fetch_headers, None),
        (vector(other, old, new), "no matching signature"),
        (vector(new, new, text=body.replace("40", "41")), "no matching signature"),
        (vector(new, new, at=now - timedelta(seconds=400)), "too old"),
        (vector(new, new, at=now + timedelta(seconds=400)), "too new"),
    ]
    vectors = tmp_path / "vectors.json"
    vectors.write_text(json.dumps([case for case, _ in cases]))
    script = tmp_path / "verify.mjs"
    script.write_text(VERIFY_VECTORS % (SDK / "src" / "server.js").as_uri())
    done = run([str(NODE), str(script), str(vectors)], tmp_path, timeout=60)
    assert done.returncode == 0, shown(done)
    outcomes = json.loads(done.stdout)
    assert len(outcomes) == len(cases)
    for (case, refusal), outcome in zip(cases, outcomes, strict=True):
        if refusal is None:
            expected = {"ok": True, "id": "msg_v", "type": "balance.low", "data": data}
            assert outcome == expected, (case, outcome)
        else:
            assert outcome["ok"] is False and outcome["name"] == "WebhookVerificationError", outcome
            assert refusal in outcome["message"], (case, outcome)

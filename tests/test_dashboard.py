"""The operators' dashboard in a real browser (headless Chromium, Playwright), against the
session's `tally serve`, Redis and PostgreSQL: signing in and out, every form, what each change
does through the API, CSRF and roles, escaping, the Users page at 100,000 users.

TALLY_SCREENSHOTS=1 saves a screenshot of each page to docs/dashboard/ (otherwise to a
temporary directory, so a run leaves the tree as it was)."""

import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import httpx
import psycopg
import pytest
from playwright.sync_api import (
    APIResponse,
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    Response,
    expect,
    sync_playwright,
)

from engine.settings import Settings
from tests.conftest import ApiServer, AppUnderTest, drain, tally_env

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1280, "height": 900}
EVIL = "<img src=x onerror=alert(1)>"
EVIL_USER = "<b>x</b>"


@dataclass(frozen=True)
class Operator:
    email: str
    password: str


def create_operator(settings: Settings, role: str) -> Operator:
    """`tally operators create EMAIL --password-stdin --role ROLE`, as an operator runs it."""
    operator = Operator(f"{role}-{uuid4().hex[:8]}@example.com", secrets.token_urlsafe(16))
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "operators", "create", operator.email,
         "--password-stdin", "--role", role],
        input=operator.password + "\n", env=tally_env(settings), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert operator.password not in done.stdout + done.stderr
    return operator


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def admin(settings: Settings) -> Operator:
    return create_operator(settings, "admin")


@pytest.fixture(scope="module")
def viewer(settings: Settings) -> Operator:
    return create_operator(settings, "viewer")


def new_context(browser: Browser, api_server: ApiServer) -> BrowserContext:
    return browser.new_context(base_url=api_server.url, viewport=VIEWPORT)  # type: ignore[arg-type]


@pytest.fixture
def context(browser: Browser, api_server: ApiServer) -> Iterator[BrowserContext]:
    context = new_context(browser, api_server)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext, admin: Operator) -> Page:
    """An admin's page, signed in, on the apps list."""
    return sign_in(context, admin)


def assert_guarded(response: Response | APIResponse) -> None:
    """Every dashboard answer forbids inline and foreign scripts."""
    policy = response.headers.get("content-security-policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives.get("script-src") == ["'self'"], policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy


def goto(page: Page, path: str, status: int = 200) -> Response:
    response = page.goto(path)
    assert response is not None
    assert response.status == status, f"GET {path}: {response.status}"
    assert_guarded(response)
    return response


def submit(page: Page, button: Locator) -> int:
    """Click a form's button and wait for the page it leads to; the status of the answer to
    the form itself (303 when it redirected)."""
    with page.expect_navigation() as navigation:
        button.click()
    final = navigation.value
    assert final is not None
    assert_guarded(final)
    request = final.request
    while request.redirected_from is not None:
        request = request.redirected_from
    answer = request.response()
    assert answer is not None
    return answer.status


def sign_in(context: BrowserContext, operator: Operator, status: int = 303) -> Page:
    page = context.new_page()
    goto(page, "/dashboard/login")
    page.get_by_label("Email").fill(operator.email)
    page.get_by_label("Password").fill(operator.password)
    assert submit(page, page.get_by_role("button", name="Log in")) == status
    if status == 303:
        assert page.url.endswith("/dashboard/")
        expect(page.locator("header")).to_contain_text(operator.email)
    return page


def form_fields(form: Locator) -> dict[str, str]:
    """A form's named inputs, hidden ones included, as the browser would send them."""
    pairs: list[list[str]] = form.locator("input[name]").evaluate_all(
        "els => els.filter(e => e.type !== 'checkbox' || e.checked).map(e => [e.name, e.value])"
    )
    return dict((name, value) for name, value in pairs)


def csrf_token(page: Page) -> str:
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token


def api(api_server: ApiServer, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=api_server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def history(client: httpx.Client, user_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = ok(
        client.get("/credits/history", params={"user_id": user_id, "limit": 100})
    )["entries"]
    return entries


def balance(client: httpx.Client, user_id: str) -> int:
    value: int = ok(client.get("/credits/balance", params={"user_id": user_id}))["balance"]
    return value


def user_path(app_id: str, user_id: str) -> str:
    return f"/dashboard/apps/{app_id}/user?" + urlencode({"user_id": user_id})


def audit_rows(page: Page, app_id: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """(action, what changed) of the audit page's rows, newest first, for one app if given."""
    goto(page, "/dashboard/audit")
    rows: list[tuple[str, str, dict[str, str]]] = page.locator("tbody tr").evaluate_all(
        """rows => rows.filter(r => r.cells.length === 5).map(r => [
            r.cells[2].innerText.trim(), r.cells[3].innerText.trim(),
            Object.fromEntries([...r.cells[4].querySelectorAll("span")].map(span => [
                span.querySelector("b").textContent,
                span.textContent.slice(span.querySelector("b").textContent.length + 2)]))])"""
    )
    return [(action, details) for app, action, details in rows if app_id in (None, app)]


def row(page: Page, text: str) -> Locator:
    """The one table row containing `text`."""
    found = page.locator("tbody tr").filter(has_text=text)
    expect(found).to_have_count(1)
    return found


# --- apps and keys -------------------------------------------------------------------------------


def test_an_app_created_in_the_dashboard_works_until_its_key_is_revoked(
    page: Page, api_server: ApiServer
) -> None:
    name = f"shop-{uuid4().hex[:8]}"
    page.get_by_label("App name").fill(name)
    assert submit(page, page.get_by_role("button", name="Create app")) == 201
    first_key = page.locator("code#new-key").inner_text().strip()
    assert re.fullmatch(r"tally_[A-Za-z0-9_-]{20,}", first_key), first_key
    expect(page.locator(".once").get_by_role("button", name="Copy")).to_be_visible()
    app_link = page.locator("tbody").get_by_role("link", name=name, exact=True)
    app_id = (app_link.get_attribute("href") or "").rsplit("/", 1)[-1]
    assert app_id.startswith("app_")

    # Shown once: the list again has no key.
    goto(page, "/dashboard/")
    expect(page.locator("code#new-key")).to_have_count(0)
    assert first_key not in page.content()

    with api(api_server, first_key) as client:
        ok(client.post("/credits/add", json={"user_id": "u", "amount": 1}))

    page.get_by_role("link", name=name, exact=True).click()
    expect(page.locator("h1")).to_have_text(name)
    page.get_by_role("link", name="API Keys").click()
    expect(page).to_have_url(re.compile(f"/dashboard/apps/{app_id}/keys$"))
    first_row = row(page, first_key[:10] + "…")
    expect(first_row).to_contain_text("active")
    expect(first_row.locator("td").nth(3)).not_to_have_text("never")  # last used

    assert submit(page, page.get_by_role("button", name="Create key")) == 201
    second_key = page.locator("code#new-key").inner_text().strip()
    assert second_key.startswith("tally_") and second_key != first_key
    expect(page.locator("tbody tr")).to_have_count(2)
    expect(row(page, second_key[:10] + "…").locator("td").nth(3)).to_have_text("never")

    assert submit(page, row(page, first_key[:10]).get_by_role("button", name="Revoke")) == 303
    expect(row(page, first_key[:10])).to_contain_text("revoked")
    expect(row(page, first_key[:10]).get_by_role("button", name="Revoke")).to_have_count(0)
    assert second_key not in page.content(), "a key is shown once, on the page that made it"

    start = time.monotonic()
    with api(api_server, first_key) as client:
        while True:
            answer = client.post("/credits/add", json={"user_id": "u", "amount": 1})
            if answer.status_code == 401:
                break
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - start < 3, "the revoked key still works after 3 s"
            time.sleep(0.05)
    assert time.monotonic() - start < 2
    with api(api_server, second_key) as client:
        ok(client.post("/credits/add", json={"user_id": "u", "amount": 1}))

    rows = audit_rows(page, app_id)
    assert [action for action, _ in rows] == ["key.revoked", "key.created", "app.created"]
    audit = page.content()
    assert first_key not in audit and second_key not in audit


def test_a_key_created_in_the_dashboard_may_have_a_rate_limit(
    page: Page, api_server: ApiServer, test_app: AppUnderTest
) -> None:
    keys = f"/dashboard/apps/{test_app.app_id}/keys"
    goto(page, keys)
    # The browser checks the number itself; the server checks what a script might send.
    for bad in ("0", "abc", "1.5"):
        refused = page.request.post(
            keys, form={"csrf_token": csrf_token(page), "rate_limit": bad}, max_redirects=0
        )
        assert refused.status == 400, bad
        assert "rate_limit must be a whole number of requests per second" in refused.text()
    page.get_by_label("Rate limit (requests/s)").fill("2")
    assert submit(page, page.get_by_role("button", name="Create key")) == 201
    new_key = page.locator("code#new-key").inner_text().strip()
    expect(row(page, new_key[:10] + "…")).to_contain_text("2/s, bursts of 4")
    key_id = row(page, new_key[:10] + "…").locator("td").nth(1).inner_text().strip()
    expect(row(page, test_app.api_key[:10] + "…")).to_contain_text("none")
    with api(api_server, new_key) as client:
        answer = client.get("/credits/balance", params={"user_id": "u"})
        assert answer.status_code == 200 and answer.headers["RateLimit-Limit"] == "4"
    assert audit_rows(page, test_app.app_id)[0] == (
        "key.created",
        {"key_id": key_id, "rate_limit": "2"},
    )


# --- settings ------------------------------------------------------------------------------------


def test_settings_saved_in_the_dashboard_are_the_apps_and_secrets_are_never_shown(
    page: Page, test_app: AppUnderTest, client: httpx.Client
) -> None:
    # 250 credits a dollar, as the API stores it (from a JSON number): the form shows "250.0".
    ok(client.patch("/credits/config", json={"credits_per_dollar": 250}))
    goto(page, f"/dashboard/apps/{test_app.app_id}")
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_label("Display name", exact=True)).to_be_visible()
    stripe_secret = "whsec_" + secrets.token_hex(16)
    page.get_by_label("Display name", exact=True).fill("Render minutes")
    page.get_by_label("Display symbol", exact=True).fill("RM")
    page.get_by_label("Display decimals", exact=True).fill("2")
    page.get_by_label("Overdraft enabled", exact=True).check()
    page.get_by_label("Overdraft limit (credits)", exact=True).fill("50")
    page.get_by_label("Stripe webhook secret", exact=True).fill(stripe_secret)
    assert submit(page, page.get_by_role("button", name="Save settings")) == 303
    expect(page.get_by_role("status")).to_have_text("Settings saved.")
    config = ok(client.get("/credits/config"))
    assert (config["display_name"], config["display_symbol"], config["display_decimals"]) == (
        "Render minutes",
        "RM",
        2,
    )
    assert (config["overdraft_enabled"], config["overdraft_limit"]) == (True, 50)
    stripe_field = page.locator(".field").filter(has=page.locator("#stripe_webhook_secret"))
    expect(stripe_field.locator(".state")).to_have_text("set")
    polar_field = page.locator(".field").filter(has=page.locator("#polar_webhook_secret"))
    expect(polar_field.locator(".state")).to_have_text("not set")
    assert stripe_secret not in page.content()
    expect(page.get_by_label("Display decimals", exact=True)).to_have_value("2")
    expect(page.get_by_label("Overdraft enabled", exact=True)).to_be_checked()

    # An invalid value: the API's own words next to the field, and nothing saved.
    refused = client.patch("/credits/config", json={"display_decimals": 9})
    assert refused.status_code == 400
    polar_secret = "polar_whs_" + secrets.token_hex(16)
    page.get_by_label("Display name", exact=True).fill("Not saved")
    page.get_by_label("Display decimals", exact=True).fill("9")
    page.get_by_label("Polar webhook secret", exact=True).fill(polar_secret)
    assert submit(page, page.get_by_role("button", name="Save settings")) == 400
    expect(page.locator("p#display_decimals-error")).to_have_text(refused.json()["error"])
    expect(page.locator("p#display_decimals-error")).to_have_text(
        "display_decimals must be an integer from 0 to 8"
    )
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved")
    assert polar_secret not in page.content() and stripe_secret not in page.content()
    assert ok(client.get("/credits/config")) == config
    goto(page, f"/dashboard/apps/{test_app.app_id}/settings")
    expect(polar_field.locator(".state")).to_have_text("not set")
    expect(page.get_by_label("Display name", exact=True)).to_have_value("Render minutes")

    # Saved again as it is: nothing changes, nothing is audited.
    assert submit(page, page.get_by_role("button", name="Save settings")) == 303
    expect(page.get_by_role("status")).to_have_text("Settings saved.")
    assert ok(client.get("/credits/config")) == config

    # A secret removed.
    stripe_field.get_by_label("remove").check()
    assert submit(page, page.get_by_role("button", name="Save settings")) == 303
    expect(stripe_field.locator(".state")).to_have_text("not set")
    assert ok(client.get("/credits/config")) == config

    rows = audit_rows(page, test_app.app_id)
    assert rows == [
        ("settings.changed", {"stripe_webhook_secret": "removed"}),
        ("settings.changed", {
            "stripe_webhook_secret": "set", "display_name": "Render minutes",
            "display_symbol": "RM", "display_decimals": "2", "overdraft_enabled": "True",
            "overdraft_limit": "50",
        }),
    ], rows  # fmt: skip
    assert stripe_secret not in page.content() and polar_secret not in page.content()


def test_a_secret_field_left_blank_with_spaces_keeps_the_secret(
    page: Page, test_app: AppUnderTest
) -> None:
    goto(page, f"/dashboard/apps/{test_app.app_id}/settings")
    field = page.locator(".field").filter(has=page.locator("#stripe_webhook_secret"))
    page.get_by_label("Stripe webhook secret", exact=True).fill("whsec_" + secrets.token_hex(8))
    assert submit(page, page.get_by_role("button", name="Save settings")) == 303
    expect(field.locator(".state")).to_have_text("set")
    # "Leave a field empty to keep the secret as it is": a field of spaces looks empty.
    page.get_by_label("Stripe webhook secret", exact=True).fill("   ")
    submit(page, page.get_by_role("button", name="Save settings"))
    expect(field.locator(".state")).to_have_text("set", timeout=1000)


# --- users and adjustments -----------------------------------------------------------------------


def test_the_user_page_shows_the_ledger_in_the_apps_display_format(
    page: Page, settings: Settings, test_app: AppUnderTest, client: httpx.Client
) -> None:
    ok(client.patch("/credits/config", json={
        "display_symbol": "CR", "display_symbol_position": "left", "display_decimals": 2,
    }))  # fmt: skip
    user = "alice"
    ok(client.post("/credits/add", json={"user_id": user, "amount": 100, "description": "Welcome"}))
    ok(client.post("/credits/deduct", json={
        "user_id": user, "amount": 30, "description": "Report export",
    }))  # fmt: skip

    # Not persisted yet: the ledger table shows the entries all the same.
    goto(page, user_path(test_app.app_id, user))
    expect(page.locator("#balance")).to_have_text("CR 70.00")
    ledger = page.locator("table.ledger")
    expect(ledger.locator("tbody tr")).to_have_count(2)
    deduct = ledger.locator("tbody tr").filter(has_text="Report export")
    expect(deduct.locator("td").nth(1)).to_have_text("deduct")
    expect(deduct.locator("td").nth(2)).to_have_text("-CR 30.00")
    expect(deduct.locator("td").nth(3)).to_have_text("CR 70.00")
    added = ledger.locator("tbody tr").filter(has_text="Welcome")
    expect(added.locator("td").nth(2)).to_have_text("+CR 100.00")
    expect(ledger.locator("tbody tr").first).to_contain_text("Report export")  # newest first

    # The Users tab lists the account once the worker has persisted it.
    drain(settings)
    goto(page, f"/dashboard/apps/{test_app.app_id}/users")
    listed = row(page, user)
    expect(listed.locator("td").nth(1)).to_have_text("CR 70.00")
    listed.get_by_role("link", name=user).click()
    expect(page.locator("h2.user-id")).to_have_text(user)


def test_an_adjustment_sent_twice_applies_once_and_a_refund_restores_the_balance(
    page: Page, test_app: AppUnderTest, client: httpx.Client
) -> None:
    user = "bob"
    ok(client.post("/credits/add", json={"user_id": user, "amount": 100, "description": "Pack"}))
    job = ok(client.post("/credits/deduct", json={
        "user_id": user, "amount": 30, "description": "Render job",
    }))  # fmt: skip
    goto(page, user_path(test_app.app_id, user))
    expect(page.locator("#balance")).to_have_text("70")

    # The form filled in, then sent twice as a double click or a resent form would.
    page.get_by_label("Amount").fill("25")
    page.get_by_label("Reason").fill("Goodwill gesture")
    fields = form_fields(page.locator("form.adjust")) | {"kind": "add"}
    assert fields["idempotency_key"] and fields["csrf_token"] and fields["user_id"] == user
    path = f"/dashboard/apps/{test_app.app_id}/adjust"
    for _ in range(2):
        sent = page.request.post(path, form=fields, max_redirects=0)
        assert sent.status == 303, sent.text()
        assert_guarded(sent)
    goodwill = [e for e in history(client, user) if e["description"] == "Goodwill gesture"]
    assert [(e["kind"], e["amount"]) for e in goodwill] == [("add", 25)]
    assert goodwill[0]["metadata"]["source"] == "dashboard"
    assert balance(client, user) == 95

    # The same form used by clicking, once more: a new form, a new entry.
    goto(page, user_path(test_app.app_id, user))
    page.get_by_label("Amount").fill("5")
    page.get_by_label("Reason").fill("Manual fix")
    assert submit(page, page.get_by_role("button", name="Deduct credits")) == 303
    expect(page.locator("#balance")).to_have_text("90")
    expect(page.locator("table.ledger tbody tr").first).to_contain_text("Manual fix")
    expect(page.locator("table.ledger tbody tr").first.locator("td").nth(2)).to_have_text("-5")

    # A refund from the ledger row, and the same refund form sent again.
    job_row = page.locator("table.ledger tbody tr").filter(has_text="Render job")
    refund_form = form_fields(job_row.locator("form"))
    assert refund_form["ledger_id"] == job["ledger_id"]
    assert submit(page, job_row.get_by_role("button", name="Refund")) == 303
    expect(job_row.locator("td").last).to_have_text("refunded")
    expect(job_row.get_by_role("button", name="Refund")).to_have_count(0)
    expect(page.locator("#balance")).to_have_text("120")
    again = page.request.post(
        f"/dashboard/apps/{test_app.app_id}/refund", form=refund_form, max_redirects=0
    )
    assert again.status == 303, again.text()
    refunds = [e for e in history(client, user) if e["kind"] == "refund"]
    assert [(e["refund_of"], e["amount"]) for e in refunds] == [(job["ledger_id"], 30)]
    assert balance(client, user) == 120
    refund_row = page.locator("table.ledger tbody tr").filter(has_text="Refunded by")
    expect(refund_row.locator("td").nth(1)).to_have_text("refund")
    expect(refund_row.get_by_role("button", name="Refund")).to_have_count(0)

    actions = [action for action, _ in audit_rows(page, test_app.app_id)]
    assert actions == ["credits.refunded", "credits.adjusted", "credits.adjusted"]


def test_an_entry_refunded_on_a_newer_page_is_marked_refunded(
    page: Page, test_app: AppUnderTest, client: httpx.Client
) -> None:
    user = "dora"
    first = ok(client.post("/credits/add", json={
        "user_id": user, "amount": 100, "description": "First purchase",
    }))  # fmt: skip
    for n in range(50):
        ok(client.post("/credits/add", json={"user_id": user, "amount": 1, "description": f"#{n}"}))
    ok(client.post("/credits/refund", json={"ledger_id": first["ledger_id"]}))
    goto(page, user_path(test_app.app_id, user))
    expect(page.locator("table.ledger tbody tr")).to_have_count(50)
    page.get_by_role("link", name="Older").click()
    first_row = page.locator("table.ledger tbody tr").filter(has_text="First purchase")
    expect(first_row).to_have_count(1)
    expect(first_row.get_by_role("button", name="Refund")).to_have_count(0, timeout=1000)
    expect(first_row.locator("td").last).to_have_text("refunded")


def test_the_user_page_shows_grants_holds_and_what_is_available(
    page: Page, test_app: AppUnderTest, client: httpx.Client
) -> None:
    user = "erin"
    expires = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    grant = ok(client.post("/credits/add", json={
        "user_id": user, "amount": 100, "description": "Trial credits",
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
    }))  # fmt: skip
    ok(client.post("/credits/add", json={"user_id": user, "amount": 50, "description": "Plan"}))
    hold = ok(client.post("/credits/holds", json={
        "user_id": user, "amount": 30, "ttl_seconds": 600, "description": "Render job",
        "reference_id": "job-7",
    }))  # fmt: skip
    captured = ok(client.post("/credits/holds", json={"user_id": user, "amount": 20}))
    ok(client.post(f"/credits/holds/{captured['hold_id']}/capture", json={"amount": 15}))
    released = ok(client.post("/credits/holds", json={"user_id": user, "amount": 10}))
    ok(client.post(f"/credits/holds/{released['hold_id']}/release"))
    # Grant credits go first: 30 reserved by the open hold and 15 spent leave 55 of the 100.
    figures = ok(client.get("/credits/balance", params={"user_id": user}))
    assert (figures["balance"], figures["held"], figures["available"]) == (135, 30, 105)
    assert [(g["grant_id"], g["remaining"]) for g in figures["grants"]] == [(grant["grant_id"], 55)]

    goto(page, user_path(test_app.app_id, user))
    expect(page.locator("#balance")).to_have_text("135")
    expect(page.locator("#held")).to_have_text("30")
    expect(page.locator("#available")).to_have_text("105")

    grants = page.locator("table.grants tbody tr")
    expect(grants).to_have_count(1)
    grant_short = grant["grant_id"][:8] + "…"
    expect(grants.locator("td").nth(0)).to_have_text(grant_short)
    expect(grants.locator("td code")).to_have_attribute("title", grant["grant_id"])
    expect(grants.locator("td").nth(1)).to_have_text("55")
    expect(grants.locator("td").nth(2)).to_have_text(expires.strftime("%Y-%m-%d %H:%M:%S UTC"))

    holds = page.locator("table.holds tbody tr")
    expect(holds).to_have_count(1)  # the captured and the released holds are not active
    hold_short = hold["hold_id"][:13] + "…"
    expect(holds.locator("td").nth(0)).to_have_text(hold_short)
    expect(holds.locator("td code")).to_have_attribute("title", hold["hold_id"])
    expect(holds.locator("td").nth(1)).to_have_text("30")
    expect(holds.locator("td").nth(3)).to_have_text("Render job")
    expect(holds.locator("td").nth(4)).to_have_text("job-7")

    # The ledger names each kind and says which hold and grant an entry concerns.
    ledger = page.locator("table.ledger tbody tr")
    expect(ledger).to_have_count(7)
    kinds = ledger.evaluate_all("rows => rows.map(r => r.cells[1].innerText.trim())")
    assert kinds == ["hold released", "hold", "capture", "hold", "hold", "add", "add"], kinds
    capture = ledger.nth(2)
    expect(capture.locator("td").nth(2)).to_have_text("-15")
    notes = capture.locator("td.notes .note")
    expect(notes).to_have_text([
        f"{captured['hold_id'][:13]}…: frees 20 held", f"15 from grant {grant_short}",
    ])  # fmt: skip
    expect(ledger.nth(4).locator("td.notes .note")).to_have_text([
        re.compile(rf"^{re.escape(hold_short)}: holds 30 until \d{{4}}-"),
        f"reserves 30 of grant {grant_short}",
    ])  # fmt: skip
    expect(ledger.nth(0).locator("td.notes")).to_have_text(
        f"{released['hold_id'][:13]}…: frees 10 held"
    )
    granted = ledger.filter(has_text="Trial credits")
    expect(granted.locator("td.notes")).to_have_text(
        "grant, expires " + expires.strftime("%Y-%m-%d %H:%M:%S UTC")
    )
    for n in (0, 1, 3, 4):  # a hold or its release moves no credits: nothing to refund
        expect(ledger.nth(n).get_by_role("button", name="Refund")).to_have_count(0)
    expect(capture.get_by_role("button", name="Refund")).to_have_count(1)


# --- who may change what -------------------------------------------------------------------------


def test_forms_without_the_csrf_token_or_from_a_viewer_change_nothing(
    page: Page,
    browser: Browser,
    api_server: ApiServer,
    viewer: Operator,
    test_app: AppUnderTest,
    client: httpx.Client,
) -> None:
    name = f"forged-{uuid4().hex[:8]}"
    for form in ({"name": name}, {"name": name, "csrf_token": "x" * 43}):
        forged = page.request.post("/dashboard/apps", form=form, max_redirects=0)
        assert forged.status == 403, forged.text()
        assert "expired" in forged.text()
        assert_guarded(forged)
    with new_context(browser, api_server) as stranger:
        anonymous = stranger.request.post("/dashboard/apps", form={"name": name})
        assert anonymous.status == 403
    goto(page, "/dashboard/")
    assert name not in page.content()
    # The sign-in form has a token of its own: without it, even the right password fails.
    with new_context(browser, api_server) as stranger:
        forged_login = stranger.request.post(
            "/dashboard/login", form={"email": viewer.email, "password": viewer.password},
            max_redirects=0,
        )  # fmt: skip
        assert forged_login.status == 403
        assert [c for c in stranger.cookies() if c["name"] == "tally_session"] == []

    ok(client.post("/credits/add", json={"user_id": "carol", "amount": 10}))
    context = new_context(browser, api_server)
    try:
        seen = sign_in(context, viewer)
        expect(seen.get_by_role("button", name="Create app")).to_be_disabled()
        app = f"/dashboard/apps/{test_app.app_id}"
        for path in (
            "/dashboard/", app, f"{app}/keys", f"{app}/settings", f"{app}/users",
            user_path(test_app.app_id, "carol"), f"{app}/webhooks", f"{app}/health",
            "/dashboard/audit", "/dashboard/operators",
        ):  # fmt: skip
            goto(seen, path)
            for button in seen.locator("main button[type=submit]").all():
                if button.inner_text() not in ("Search", "Filter"):
                    expect(button).to_be_disabled()
        goto(seen, user_path(test_app.app_id, "carol"))
        expect(seen.get_by_role("button", name="Refund")).to_be_disabled()
        token = csrf_token(seen)
        config = ok(client.get("/credits/config"))
        attempts = {
            "/dashboard/apps": {"name": name},
            f"{app}/keys/{test_app.key_id}/revoke": {},
            f"{app}/keys": {},
            f"{app}/settings": {"display_name": "Viewer was here", "display_decimals": "0"},
            f"{app}/adjust": {"user_id": "carol", "amount": "5", "reason": "x", "kind": "add"},
            "/dashboard/operators": {"email": f"v-{uuid4().hex[:8]}@example.com"},
        }
        for path, form in attempts.items():
            refused = seen.request.post(path, form=form | {"csrf_token": token}, max_redirects=0)
            assert refused.status == 403, (path, refused.status)
            assert "viewers cannot change anything" in refused.text()
        # Nothing changed: the key works, the settings and the balance are as they were.
        assert ok(client.get("/credits/config")) == config
        assert balance(client, "carol") == 10
        goto(seen, f"{app}/keys")
        expect(seen.locator("tbody tr")).to_have_count(1)
        expect(seen.locator("tbody tr")).to_contain_text("active")
        goto(seen, "/dashboard/")
        assert name not in seen.content()
        assert audit_rows(seen, test_app.app_id) == []
        # A viewer may still log out.
        assert submit(seen, seen.get_by_role("button", name="Log out")) == 303
        assert seen.url.endswith("/dashboard/login")
    finally:
        context.close()


def test_what_users_and_payers_wrote_is_shown_as_text(
    page: Page, settings: Settings, test_app: AppUnderTest, client: httpx.Client
) -> None:
    ok(client.post("/credits/add", json={"user_id": EVIL_USER, "amount": 5, "description": EVIL}))
    drain(settings)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    goto(page, f"/dashboard/apps/{test_app.app_id}/users")
    page.get_by_role("link", name=EVIL_USER).click()
    expect(page.locator("h2.user-id")).to_have_text(EVIL_USER)
    expect(page.locator("h2.user-id b")).to_have_count(0)
    expect(page.get_by_text(EVIL)).to_be_visible()
    ledger = page.locator("table.ledger")
    expect(ledger.locator("td.description")).to_have_text(EVIL)
    expect(ledger.locator("img")).to_have_count(0)
    expect(page.locator("main img")).to_have_count(0)
    page.wait_for_load_state("load")
    assert dialogs == []


def test_after_log_out_the_old_cookie_signs_nobody_in(
    page: Page, browser: Browser, api_server: ApiServer, context: BrowserContext
) -> None:
    (cookie,) = [c for c in context.cookies() if c["name"] == "tally_session"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Lax", "/dashboard")
    # The same cookie in another browser is the same session, until the log out.
    with new_context(browser, api_server) as other:
        other.add_cookies([cookie])
        elsewhere = other.new_page()
        goto(elsewhere, "/dashboard/")
        assert elsewhere.url.endswith("/dashboard/")

    assert submit(page, page.get_by_role("button", name="Log out")) == 303
    assert page.url.endswith("/dashboard/login")
    assert [c for c in context.cookies() if c["name"] == "tally_session"] == []
    goto(page, "/dashboard/")
    assert page.url.endswith("/dashboard/login")

    with new_context(browser, api_server) as other:
        other.add_cookies([cookie])
        replay = other.new_page()
        goto(replay, "/dashboard/")
        assert replay.url.endswith("/dashboard/login")
        expect(replay.get_by_role("button", name="Log in")).to_be_visible()
        token = "x" * 43
        refused = other.request.post("/dashboard/logout", form={"csrf_token": token})
        assert refused.status == 403


def test_five_wrong_passwords_lock_the_email(settings: Settings, context: BrowserContext) -> None:
    operator = create_operator(settings, "admin")
    wrong = Operator(operator.email, "not the password")
    for _ in range(5):
        page = sign_in(context, wrong, status=401)
        expect(page.get_by_role("alert")).to_have_text("wrong email or password")
        page.close()
    page = sign_in(context, operator, status=429)
    expect(page.get_by_role("alert")).to_contain_text("too many failed sign-ins")
    again = context.request.post("/dashboard/login", max_redirects=0, form={
        "email": operator.email, "password": operator.password, "csrf_token": csrf_token(page),
    })  # fmt: skip
    assert again.status == 429
    assert 0 < int(again.headers["retry-after"]) <= 15 * 60
    assert [c for c in context.cookies() if c["name"] == "tally_session"] == []
    # Another email is not locked: an unknown one gets the same answer as a wrong password.
    page = sign_in(context, Operator(f"nobody-{uuid4().hex[:8]}@example.com", "x" * 12), 401)
    expect(page.get_by_role("alert")).to_have_text("wrong email or password")


# --- the Users tab at scale ----------------------------------------------------------------------


def test_the_users_tab_pages_and_searches_100_000_users(
    page: Page, settings: Settings, test_app: AppUnderTest
) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.execute(
            "INSERT INTO ledger_entries"
            " (ledger_id, app_id, user_id, kind, amount, balance_after, seq, created_at)"
            " SELECT gen_random_uuid(), %s, 'user_' || lpad(n::text, 6, '0'), 'add', n, n, 1,"
            "  now() - n * interval '1 second'"
            " FROM generate_series(1, 100000) AS n",
            (test_app.app_id,),
        )
        (count,) = conn.execute(
            "SELECT count(*) FROM accounts WHERE app_id = %s", (test_app.app_id,)
        ).fetchone() or (0,)
    assert count == 100_000

    users = f"/dashboard/apps/{test_app.app_id}/users"
    start = time.monotonic()
    goto(page, users)
    assert time.monotonic() - start < 5
    names = page.locator("tbody tr td:first-child a")
    expect(names).to_have_count(50)
    assert names.all_inner_texts() == [f"user_{n:06d}" for n in range(1, 51)]
    # Balances read through the engine, which rebuilds them from the ledger (not in Redis).
    expect(page.locator("tbody tr").first.locator("td").nth(1)).to_have_text("1")
    expect(page.locator("tbody tr").nth(49).locator("td").nth(1)).to_have_text("50")
    expect(page.get_by_role("link", name="First page")).to_have_count(0)

    start = time.monotonic()
    page.get_by_role("link", name="Next page").click()
    expect(names.first).to_have_text("user_000051")
    assert time.monotonic() - start < 5
    assert names.all_inner_texts() == [f"user_{n:06d}" for n in range(51, 101)]
    expect(page.get_by_role("link", name="First page")).to_be_visible()

    page.get_by_label("User id starts with").fill("user_09999")
    start = time.monotonic()
    page.get_by_role("button", name="Search").click()
    expect(names.first).to_have_text("user_099990")
    assert time.monotonic() - start < 5
    assert names.all_inner_texts() == [f"user_{n:06d}" for n in range(99_990, 100_000)]
    expect(page.locator("tbody tr").last.locator("td").nth(1)).to_have_text("99,999")
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)

    # A LIKE wildcard in the search is only a character.
    goto(page, f"{users}?q=user%25")
    expect(page.locator("tbody")).to_contain_text("No user id starts with “user%”.")

    page.goto(user_path(test_app.app_id, "user_000007"))
    expect(page.locator("#balance")).to_have_text("7")
    expect(page.locator("table.ledger tbody tr")).to_have_count(1)


# --- operators -----------------------------------------------------------------------------------


def test_an_admin_creates_and_disables_an_operator(
    page: Page, browser: Browser, api_server: ApiServer
) -> None:
    email = f"new-{uuid4().hex[:8]}@example.com"
    goto(page, "/dashboard/operators")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Role").select_option("viewer")
    assert submit(page, page.get_by_role("button", name="Create operator")) == 201
    password = page.locator("code#new-password").inner_text().strip()
    assert len(password) >= 12
    expect(row(page, email)).to_contain_text("viewer")

    with new_context(browser, api_server) as theirs:
        theirs_page = sign_in(theirs, Operator(email, password))
        expect(theirs_page.locator("header .role")).to_have_text("viewer")

        goto(page, "/dashboard/operators")
        assert password not in page.content()
        assert submit(page, row(page, email).get_by_role("button", name="Disable")) == 303
        expect(row(page, email)).to_contain_text("disabled")
        # Disabling ends their sessions at once.
        goto(theirs_page, "/dashboard/")
        assert theirs_page.url.endswith("/dashboard/login")

    rows = [r for r in audit_rows(page) if r[1].get("email") == email]
    assert rows == [
        ("operator.disabled", {"email": email}),
        ("operator.created", {"email": email, "role": "viewer"}),
    ]
    assert password not in page.content()


# --- events out and plans ------------------------------------------------------------------------

# Loopback: http is allowed there, and nothing listens on the discard port.
HOOKS = "http://127.0.0.1:9/hooks"


def answer_next_dialog(page: Page, accept: bool) -> list[str]:
    """Answer the next confirm(); the messages asked, once asked."""
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", answer)
    return asked


def endpoints_of(client: httpx.Client) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = ok(client.get("/webhook-endpoints"))["endpoints"]
    return listed


def test_an_endpoint_added_in_the_dashboard_shows_its_secret_once_rotates_and_goes(
    page: Page, test_app: AppUnderTest, client: httpx.Client
) -> None:
    goto(page, f"/dashboard/apps/{test_app.app_id}")
    page.get_by_role("link", name="Events").click()
    expect(page).to_have_url(re.compile(f"/dashboard/apps/{test_app.app_id}/endpoints$"))
    expect(page.locator("tbody")).to_contain_text("No endpoints")

    # The engine's rule, in its words, and the form as it was typed.
    page.get_by_label("URL").fill("http://example.com/hooks")
    page.get_by_label("credits.added").check()
    assert submit(page, page.get_by_role("button", name="Add endpoint")) == 400
    expect(page.get_by_role("alert")).to_have_text(
        "url must use https (http is allowed for loopback only)"
    )
    expect(page.get_by_label("URL")).to_have_value("http://example.com/hooks")
    expect(page.get_by_label("credits.added")).to_be_checked()
    expect(page.get_by_label("balance.low")).not_to_be_checked()
    assert endpoints_of(client) == []

    page.get_by_label("URL").fill(HOOKS)
    assert submit(page, page.get_by_role("button", name="Add endpoint")) == 201
    expect(page.locator(".once")).to_contain_text(f"Signing secret of {HOOKS}")
    expect(page.locator(".once")).to_contain_text("shown once")
    secret = page.locator("code#new-secret").inner_text().strip()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]{20,}", secret), secret
    (made,) = endpoints_of(client)
    assert (made["url"], made["events"]) == (HOOKS, ["credits.added"])
    listed = row(page, HOOKS)
    expect(listed.locator("td").nth(1)).to_have_text("credits.added")
    expect(listed).to_contain_text(made["id"])
    expect(page.get_by_label("URL")).to_have_value("")  # the form is empty again

    # Shown once: the page again has no secret.
    goto(page, f"/dashboard/apps/{test_app.app_id}/endpoints")
    expect(page.locator("code#new-secret")).to_have_count(0)
    assert secret not in page.content()

    # Rotating asks first; dismissed, nothing happens.
    asked = answer_next_dialog(page, accept=False)
    row(page, HOOKS).get_by_role("button", name="Rotate secret").click()
    deadline = time.monotonic() + 5
    while not asked and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert asked and "new signing secret" in asked[0], asked
    goto(page, f"/dashboard/apps/{test_app.app_id}/endpoints")
    assert endpoints_of(client)[0]["previous_secret_expires_at"] is None

    answer_next_dialog(page, accept=True)
    assert submit(page, row(page, HOOKS).get_by_role("button", name="Rotate secret")) == 200
    rotated = page.locator("code#new-secret").inner_text().strip()
    assert rotated.startswith("whsec_") and rotated != secret
    expect(page.locator("main")).to_contain_text("The previous secret keeps signing beside it")
    expect(row(page, HOOKS)).to_contain_text("the previous one also signs until")
    assert endpoints_of(client)[0]["previous_secret_expires_at"] is not None

    answer_next_dialog(page, accept=True)
    assert submit(page, row(page, HOOKS).get_by_role("button", name="Remove")) == 303
    expect(page.locator("tbody")).to_contain_text("No endpoints")
    assert rotated not in page.content()
    assert endpoints_of(client) == []

    rows = audit_rows(page, test_app.app_id)
    assert rows == [
        ("endpoint.removed", {"endpoint_id": made["id"], "url": HOOKS}),
        ("endpoint.secret_rotated", {"endpoint_id": made["id"]}),
        ("endpoint.created", {
            "endpoint_id": made["id"], "url": HOOKS, "events": "credits.added",
        }),
    ], rows  # fmt: skip
    assert secret not in page.content() and rotated not in page.content()


def test_an_endpoints_delivery_log_lists_its_events_and_redelivers_one(
    page: Page, settings: Settings, test_app: AppUnderTest, client: httpx.Client
) -> None:
    made = client.post("/webhook-endpoints", json={"url": HOOKS, "events": ["credits.added"]})
    assert made.status_code == 201, made.text
    endpoint_id = made.json()["id"]
    everything = client.post("/webhook-endpoints", json={"url": HOOKS + "/all"})
    assert everything.status_code == 201, everything.text
    ok(client.post("/credits/add", json={"user_id": "fay", "amount": 40}))
    ok(client.post("/credits/deduct", json={"user_id": "fay", "amount": 5}))  # not wanted
    # The worker takes the entries from the outbox and makes their events and deliveries; the
    # burst sends none, so the delivery waits.
    drain(settings)
    (delivery,) = ok(client.get(f"/webhook-endpoints/{endpoint_id}/deliveries"))["deliveries"]

    goto(page, f"/dashboard/apps/{test_app.app_id}/endpoints")
    expect(row(page, HOOKS + "/all").locator("td").nth(1)).to_have_text("all")
    row(page, endpoint_id).get_by_role("link", name="Deliveries").click()
    expect(page).to_have_url(re.compile(f"/endpoints/{endpoint_id}$"))
    expect(page.get_by_role("link", name="Events")).to_have_attribute("aria-current", "page")
    expect(page.locator("h2.url")).to_have_text(HOOKS)
    logged = page.locator("table.deliveries tbody tr")
    expect(logged).to_have_count(1)
    cells = logged.first.locator("td")
    expect(cells.nth(0)).to_contain_text(delivery["event_id"])
    expect(cells.nth(1)).to_have_text("credits.added")
    expect(cells.nth(2)).to_have_text("fay")
    expect(cells.nth(3)).to_have_text("pending")
    expect(cells.nth(4)).to_have_text(str(delivery["attempts"]))
    expect(cells.nth(6)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    cells.nth(2).get_by_role("link", name="fay").click()
    expect(page.locator("h2.user-id")).to_have_text("fay")
    page.go_back()

    assert submit(page, logged.first.get_by_role("button", name="Redeliver")) == 303
    expect(page.get_by_role("status")).to_contain_text(delivery["event_id"])
    expect(page.locator("table.deliveries tbody tr")).to_have_count(1)
    assert audit_rows(page, test_app.app_id)[0] == (
        "event.redelivered", {"event_id": delivery["event_id"], "deliveries": "2"},
    )  # fmt: skip

    # Another app's endpoint, or an event of another app, is as missing as none.
    goto(page, f"/dashboard/apps/{test_app.app_id}/endpoints/we_0000000000000000", 404)
    goto(page, f"/dashboard/apps/{test_app.app_id}/endpoints")
    refused = page.request.post(
        f"/dashboard/apps/{test_app.app_id}/endpoints/{endpoint_id}/redeliver",
        form={"csrf_token": csrf_token(page), "event_id": "evt_nobody"},
        max_redirects=0,
    )
    assert refused.status == 404, refused.text()


def test_a_viewer_sees_endpoints_and_deliveries_and_changes_nothing(
    browser: Browser,
    api_server: ApiServer,
    viewer: Operator,
    settings: Settings,
    test_app: AppUnderTest,
    client: httpx.Client,
) -> None:
    made = client.post("/webhook-endpoints", json={"url": HOOKS})
    assert made.status_code == 201, made.text
    endpoint_id, secret = made.json()["id"], made.json()["secret"]
    ok(client.post("/credits/add", json={"user_id": "gus", "amount": 3}))
    drain(settings)
    (delivery,) = ok(client.get(f"/webhook-endpoints/{endpoint_id}/deliveries"))["deliveries"]
    app = f"/dashboard/apps/{test_app.app_id}"
    with new_context(browser, api_server) as context:
        seen = sign_in(context, viewer)
        for path in (f"{app}/endpoints", f"{app}/endpoints/{endpoint_id}"):
            goto(seen, path)
            buttons = seen.locator("main button[type=submit]")
            expect(buttons).not_to_have_count(0)
            for button in buttons.all():
                expect(button).to_be_disabled()
            assert secret not in seen.content()
        expect(seen.locator("table.deliveries tbody tr")).to_have_count(1)
        token = csrf_token(seen)
        attempts = {
            f"{app}/endpoints": {"url": HOOKS + "/viewer"},
            f"{app}/endpoints/{endpoint_id}/rotate": {},
            f"{app}/endpoints/{endpoint_id}/remove": {},
            f"{app}/endpoints/{endpoint_id}/redeliver": {"event_id": delivery["event_id"]},
        }
        for path, form in attempts.items():
            refused = seen.request.post(path, form=form | {"csrf_token": token}, max_redirects=0)
            assert refused.status == 403, (path, refused.status)
            assert "viewers cannot change anything" in refused.text()
    (still,) = endpoints_of(client)
    assert (still["id"], still["previous_secret_expires_at"]) == (endpoint_id, None)
    assert ok(client.get(f"/webhook-endpoints/{endpoint_id}/deliveries"))["deliveries"] == [
        delivery
    ]


def test_plan_limits_and_thresholds_are_saved_from_the_settings_page(
    page: Page, settings: Settings, test_app: AppUnderTest, client: httpx.Client
) -> None:
    ok(client.post("/credits/add", json={"user_id": "hal", "amount": 10}))
    drain(settings)  # users are counted from the ledger
    goto(page, f"/dashboard/apps/{test_app.app_id}/settings")
    expect(page.locator("#usage-operations")).to_have_text("1 of unlimited")
    expect(page.locator("#usage-users")).to_have_text("1 of unlimited")
    page.get_by_label("Low balance thresholds").fill("100, 500,0")
    page.get_by_label("Max users (plan)").fill("10")
    page.get_by_label("Monthly operations (plan)").fill("1000")
    assert submit(page, page.get_by_role("button", name="Save settings")) == 303
    expect(page.get_by_role("status")).to_have_text("Settings saved.")
    expect(page.get_by_label("Low balance thresholds")).to_have_value("500, 100, 0")
    expect(page.get_by_label("Max users (plan)")).to_have_value("10")
    expect(page.get_by_label("Monthly operations (plan)")).to_have_value("1000")
    expect(page.locator("#usage-operations")).to_have_text("1 of 1,000")
    expect(page.locator("#usage-users")).to_have_text("1 of 10")
    assert ok(client.get("/credits/config"))["low_balance_thresholds"] == [500, 100, 0]
    usage = ok(client.get("/usage"))
    assert (usage["operations"]["allowed"], usage["users"]["allowed"]) == (1000, 10)

    # Invalid values: the engine's words next to each field, and nothing saved.
    page.get_by_label("Max users (plan)").fill("-1")
    page.get_by_label("Monthly operations (plan)").fill("lots")
    page.get_by_label("Low balance thresholds").fill("1, 2, 3, 4, 5, 6")
    assert submit(page, page.get_by_role("button", name="Save settings")) == 400
    expect(page.locator("p#plan_max_users-error")).to_have_text(
        "plan_max_users must be a whole number of 0 or more, or empty"
    )
    expect(page.locator("p#plan_monthly_operations-error")).to_have_text(
        "plan_monthly_operations must be a whole number of 0 or more, or empty"
    )
    expect(page.locator("p#low_balance_thresholds-error")).to_contain_text(
        "low_balance_thresholds must be a list of at most 5 whole numbers"
    )
    expect(page.get_by_role("alert")).to_contain_text("Nothing was saved")
    expect(page.get_by_label("Max users (plan)")).to_have_value("-1")
    assert ok(client.get("/usage"))["users"]["allowed"] == 10

    # Empty: unlimited again, and no thresholds.
    goto(page, f"/dashboard/apps/{test_app.app_id}/settings")
    page.get_by_label("Max users (plan)").fill("")
    page.get_by_label("Low balance thresholds").fill("")
    assert submit(page, page.get_by_role("button", name="Save settings")) == 303
    expect(page.locator("#usage-users")).to_have_text("1 of unlimited")
    expect(page.locator("#usage-operations")).to_have_text("1 of 1,000")
    assert ok(client.get("/credits/config"))["low_balance_thresholds"] == []
    assert ok(client.get("/usage"))["users"]["allowed"] is None

    rows = audit_rows(page, test_app.app_id)
    assert rows == [
        ("settings.changed", {"low_balance_thresholds": "[]", "plan_max_users": "None"}),
        ("settings.changed", {
            "low_balance_thresholds": "[500, 100, 0]", "plan_max_users": "10",
            "plan_monthly_operations": "1000",
        }),
    ], rows  # fmt: skip


# --- screenshots ---------------------------------------------------------------------------------


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    if os.environ.get("TALLY_SCREENSHOTS") == "1":
        folder = ROOT / "docs" / "dashboard"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path


def stripe_event(api_server: ApiServer, app_id: str, secret: str, user_id: str) -> None:
    event = {
        "id": f"evt_{uuid4().hex[:12]}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": {
            "id": f"pi_{uuid4().hex[:12]}", "object": "payment_intent", "amount": 1000,
            "amount_received": 1000, "currency": "usd",
            "metadata": {"tally_user_id": user_id, "tally_credits": "500"},
        }},
    }  # fmt: skip
    body = json.dumps(event).encode()
    at = int(time.time())
    signature = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    sent = httpx.post(
        f"{api_server.url}/webhooks/stripe/{app_id}",
        content=body,
        headers={"Stripe-Signature": f"t={at},v1={signature}"},
    )
    assert sent.status_code == 200, sent.text


def test_every_page_in_a_screenshot(
    page: Page, browser: Browser, settings: Settings, api_server: ApiServer, screenshots: Path
) -> None:
    def shot(name: str) -> None:
        page.screenshot(path=screenshots / f"{name}.png", full_page=True)

    with new_context(browser, api_server) as anonymous:
        login = anonymous.new_page()
        goto(login, "/dashboard/login")
        login.screenshot(path=screenshots / "login.png", full_page=True)

    page.get_by_label("App name").fill(f"Acme Notes {uuid4().hex[:4]}")
    assert submit(page, page.get_by_role("button", name="Create app")) == 201
    api_key = page.locator("code#new-key").inner_text().strip()
    shot("apps")
    page.get_by_role("link", name=re.compile("^Open app_")).click()
    app_id = page.url.rsplit("/", 1)[-1]
    app = f"/dashboard/apps/{app_id}"

    # An endpoint for every event: the burst below makes its deliveries and sends none.
    goto(page, f"{app}/endpoints")
    page.get_by_label("URL").fill("https://api.acme-notes.example/tally-events")
    assert submit(page, page.get_by_role("button", name="Add endpoint")) == 201
    shot("events")

    secret = "whsec_" + secrets.token_hex(16)
    with api(api_server, api_key) as client:
        ok(client.patch("/credits/config", json={
            "display_symbol": "CR", "display_decimals": 0, "credits_per_dollar": 100,
        }))  # fmt: skip
        for n, user in enumerate(("ada", "grace", "linus", "margaret", "ken", "barbara")):
            ok(client.post("/credits/add", json={
                "user_id": user, "amount": 1000 + 250 * n, "description": "Monthly plan",
            }))  # fmt: skip
            for job in range(n + 1):
                ok(client.post("/credits/deduct", json={
                    "user_id": user, "amount": 40 + 15 * job, "description": f"Render #{job + 1}",
                }))  # fmt: skip
        refused = client.post("/credits/deduct", json={"user_id": "ada", "amount": 10**6})
        assert refused.status_code == 402
    goto(page, f"{app}/settings")
    page.get_by_label("Stripe webhook secret", exact=True).fill(secret)
    page.get_by_label("Low balance thresholds").fill("500, 100")
    page.get_by_label("Max users (plan)").fill("5000")
    page.get_by_label("Monthly operations (plan)").fill("1000000")
    assert submit(page, page.get_by_role("button", name="Save settings")) == 303
    stripe_event(api_server, app_id, secret, "grace")
    drain(settings)

    # Refused deducts reach PostgreSQL within the API's 5 s saving interval.
    refusals = page.locator(".cards > div").filter(has_text="Refused deducts").locator(".big")
    deadline = time.monotonic() + 8
    goto(page, app)
    while refusals.inner_text() != "1" and time.monotonic() < deadline:
        time.sleep(0.5)
        goto(page, app)
    expect(refusals).to_have_text("1")
    expect(page.locator("svg.chart")).to_have_count(4)
    shot("overview")
    goto(page, f"{app}/keys")
    shot("keys")
    goto(page, f"{app}/settings")
    shot("settings")
    goto(page, f"{app}/users")
    expect(page.locator("tbody tr")).to_have_count(6)
    shot("users")
    goto(page, user_path(app_id, "grace"))
    shot("user")

    goto(page, f"{app}/webhooks")
    event_row = page.locator("tbody tr").first
    expect(event_row).to_contain_text("payment_intent.succeeded")
    status = event_row.locator("td").nth(6).locator("span").inner_text()
    shot("webhooks")
    page.get_by_label("Status").select_option(status)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody")).to_contain_text("payment_intent.succeeded")
    other = "duplicate" if status != "duplicate" else "failed"
    page.get_by_label("Status").select_option(other)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody")).to_have_text(f"No {other} events.")

    goto(page, f"{app}/endpoints")
    page.get_by_role("link", name="Deliveries").click()
    expect(page.locator("table.deliveries tbody")).to_contain_text("payment.credited")
    shot("deliveries")

    goto(page, f"{app}/health")
    for name in ("Status", "Redis", "PostgreSQL"):
        card = page.locator(".cards > div").filter(has=page.get_by_text(name, exact=True))
        expect(card.locator(".big")).to_have_text("ok")
    expect(page.locator("main")).to_contain_text("Every shard is drained")
    shot("health")
    goto(page, "/dashboard/audit")
    assert secret not in page.content()
    shot("audit")
    goto(page, "/dashboard/operators")
    shot("operators")
    names = {path.stem for path in screenshots.glob("*.png")}
    assert names >= {
        "login", "apps", "overview", "keys", "settings", "users", "user", "webhooks", "events",
        "deliveries", "health", "audit", "operators",
    }  # fmt: skip

"""Rate limits: the token bucket on its own (a clock of the test's), then per API key and per end
user against a real `tally serve`, Redis and PostgreSQL."""

import asyncio
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engine.accounts.apps import Apps
from engine.accounts.rate_limits import RateLimiter
from engine.accounts.repository import AppRepository
from engine.errors import RateLimitedError
from engine.settings import Settings
from tests.conftest import ApiServer, AppUnderTest, TallyProcess, tally, tally_env
from tests.servers import free_port, wait_for_port


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def takes(limiter: RateLimiter, name: str, rate: float, count: int) -> int:
    """How many of `count` requests at this instant the limiter allows."""
    allowed = 0
    for _ in range(count):
        try:
            limiter.take(name, rate)
            allowed += 1
        except RateLimitedError:
            pass
    return allowed


# --- the bucket ----------------------------------------------------------------------------------


def test_a_full_bucket_allows_twice_the_rate_at_once_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    first = limiter.take("k", 20)
    assert (first.limit, first.remaining, first.reset) == (40, 39, 1)
    assert takes(limiter, "k", 20, 100) == 39
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("k", 20)
    assert refused.value.message == "Rate limit exceeded: 20 requests per second (burst 40)"
    assert (refused.value.retry_after, refused.value.limit, refused.value.reset) == (1, 40, 2)
    clock.now += 0.5  # half a second refills 10
    assert takes(limiter, "k", 20, 100) == 10
    clock.now += 10  # a full bucket holds no more than the burst
    assert takes(limiter, "k", 20, 100) == 40


def test_refused_requests_use_nothing_and_names_are_independent() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    assert takes(limiter, "a", 5, 10) == 10
    for _ in range(1_000):
        clock.now += 0.0001  # refused all along: 0.1 s refills half a token
        with pytest.raises(RateLimitedError):
            limiter.take("a", 5)
    clock.now += 0.1  # 0.2 s since the bucket emptied: exactly one token
    assert takes(limiter, "a", 5, 10) == 1
    assert takes(limiter, "b", 5, 20) == 10


def test_remaining_and_reset_count_down_and_retry_after_is_whole_seconds() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    quotas = [limiter.take("k", 2) for _ in range(4)]
    assert [(q.limit, q.remaining, q.reset) for q in quotas] == [
        (4, 3, 1),
        (4, 2, 1),
        (4, 1, 2),
        (4, 0, 2),
    ]
    with pytest.raises(RateLimitedError) as refused:
        limiter.take("k", 2)
    assert refused.value.retry_after == 1  # half a second, rounded up
    clock.now += 0.5
    assert limiter.take("k", 2).remaining == 0


def test_each_process_allows_its_share_and_at_least_one_request() -> None:
    clock = Clock()
    shared = RateLimiter(4, clock=clock)
    quota = shared.take("k", 20)
    # This process's share is a burst of 10: 9 left, told as the whole limit's 36 of 40.
    assert (quota.limit, quota.remaining) == (40, 36)
    assert takes(shared, "k", 20, 100) == 9
    clock.now += 1  # 20 a second over 4 processes: 5 a second here
    assert takes(shared, "k", 20, 100) == 5

    many = RateLimiter(8, clock=clock)
    assert takes(many, "k", 1, 10) == 1  # 2/8 of a request would be none: one is the floor
    with pytest.raises(RateLimitedError) as refused:
        many.take("k", 1)
    assert refused.value.retry_after == 8  # 1/8 of a request a second here
    clock.now += 8
    assert takes(many, "k", 1, 10) == 1


def test_the_table_is_bounded_and_drops_full_buckets_first() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, max_buckets=100)
    assert takes(limiter, "busy", 1, 2) == 2  # empty for the next 2 s
    for user in range(99):
        limiter.take(f"idle-{user}", 10)
    clock.now += 1  # the idle buckets are full again, "busy" is not
    for user in range(50):
        limiter.take(f"new-{user}", 10)
        assert len(limiter) <= 100
    assert len(limiter) == 51
    assert takes(limiter, "busy", 1, 2) == 1  # still remembered: 1 s refilled one token
    for user in range(10_000):  # every bucket in use: the table empties instead of growing
        limiter.take(f"crowd-{user}", 1)
        assert len(limiter) <= 100


# --- API keys ------------------------------------------------------------------------------------


def burst(url: str, credential: str, requests: list[tuple[str, str, Any]]) -> list[httpx.Response]:
    """Every request at once, each on a connection of its own."""

    async def run() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {credential}"}
        limits = httpx.Limits(max_connections=len(requests))
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=30, limits=limits
        ) as client:
            return await asyncio.gather(
                *(client.request(method, path, json=body) for method, path, body in requests)
            )

    return asyncio.run(run())


def timed_burst(
    url: str, credential: str, requests: list[tuple[str, str, Any]]
) -> tuple[list[httpx.Response], float]:
    started = time.monotonic()
    answers = burst(url, credential, requests)
    return answers, time.monotonic() - started


def assert_refused_by_rate_limit(answer: httpx.Response, limit: int, message: str) -> None:
    assert answer.status_code == 429, answer.text
    assert answer.json() == {"success": False, "error": message}
    assert int(answer.headers["Retry-After"]) >= 1
    assert answer.headers["RateLimit-Limit"] == str(limit)
    assert answer.headers["RateLimit-Remaining"] == "0"
    assert int(answer.headers["RateLimit-Reset"]) >= 1


@pytest.fixture
def limited_key(repository: AppRepository, test_app: AppUnderTest) -> str:
    """A second key of the test's app, limited to 20 requests a second."""
    return Apps(repository).create_key(test_app.app_id, rate_limit=20).api_key


def test_a_burst_of_three_times_the_limit_gets_429s_for_the_excess_only(
    api_server: ApiServer, client: httpx.Client, limited_key: str
) -> None:
    rate = 20
    assert client.post("/credits/add", json={"user_id": "u", "amount": 1_000}).status_code == 200
    deducts = [("POST", "/credits/deduct", {"user_id": "u", "amount": 1})] * (3 * rate)
    answers, elapsed = timed_burst(api_server.url, limited_key, deducts)

    allowed = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    # The bucket's burst, and what it refilled while the requests came in.
    assert 2 * rate <= len(allowed) <= 2 * rate + math.ceil(elapsed * rate), elapsed
    assert refused, f"the burst took {elapsed:.2f} s: too slow to exceed the limit"
    for answer in refused:
        message = "Rate limit exceeded: 20 requests per second (burst 40)"
        assert_refused_by_rate_limit(answer, 2 * rate, message)
    for answer in allowed:
        assert answer.headers["RateLimit-Limit"] == "40"
        assert 0 <= int(answer.headers["RateLimit-Remaining"]) < 40
    # Allowed deducts were applied, refused ones were not.
    balance = client.get("/credits/balance", params={"user_id": "u"}).json()["balance"]
    assert balance == 1_000 - len(allowed)
    assert len({a.json()["ledger_id"] for a in allowed}) == len(allowed)

    # The key works again once its bucket has refilled.
    time.sleep(max(int(a.headers["Retry-After"]) for a in refused))
    with httpx.Client(
        base_url=api_server.url, headers={"Authorization": f"Bearer {limited_key}"}
    ) as again:
        answer = again.post("/credits/deduct", json={"user_id": "u", "amount": 1})
        assert answer.status_code == 200, answer.text
        # Every route counts, reads too: the limit is the key's, not the route's.
        assert again.get("/credits/balance", params={"user_id": "u"}).status_code == 200
        assert "RateLimit-Remaining" in again.get("/credits/config").headers


def test_a_key_without_a_limit_is_never_limited(
    api_server: ApiServer, client: httpx.Client, test_app: AppUnderTest
) -> None:
    client.post("/credits/add", json={"user_id": "u", "amount": 1_000})
    deducts = [("POST", "/credits/deduct", {"user_id": "u", "amount": 1})] * 200
    answers = burst(api_server.url, test_app.api_key, deducts)
    assert [a.status_code for a in answers] == [200] * 200
    assert not any("RateLimit-Limit" in a.headers for a in answers)
    assert client.get("/credits/balance", params={"user_id": "u"}).json()["balance"] == 800


def test_changing_a_keys_limit_applies_within_a_second(
    api_server: ApiServer, settings: Settings, test_app: AppUnderTest
) -> None:
    made = json.loads(
        tally(settings, "keys", "create", test_app.app_id, "--rate-limit", "1", "--json").stdout
    )
    assert made["rate_limit"] == 1
    balance = [("GET", "/credits/balance?user_id=u", None)] * 5
    answers, elapsed = timed_burst(api_server.url, made["api_key"], balance)
    allowed = sum(a.status_code == 200 for a in answers)
    assert 2 <= allowed <= 2 + math.ceil(elapsed), (allowed, elapsed)
    assert {a.status_code for a in answers} == {200, 429}
    assert all(a.headers["RateLimit-Limit"] == "2" for a in answers)

    lifted = tally(settings, "keys", "update", made["key_id"], "--rate-limit", "", "--json")
    assert json.loads(lifted.stdout)["rate_limit"] is None
    started = time.monotonic()
    while True:
        answers = burst(api_server.url, made["api_key"], balance)
        if all(a.status_code == 200 for a in answers):
            break
        assert time.monotonic() - started < 2, "the old limit still holds after 2 s"
        time.sleep(0.1)


# --- client tokens -------------------------------------------------------------------------------


@pytest.fixture
def strict_server(settings: Settings) -> Iterator[ApiServer]:
    """An API whose end users may each make 5 requests a second."""
    server = ApiServer(tally_env(settings) | {"TALLY_CLIENT_RATE_LIMIT": "5"})
    yield server
    server.stop()


def test_one_users_excess_is_refused_and_other_users_are_not_affected(
    strict_server: ApiServer, test_app: AppUnderTest
) -> None:
    headers = {"Authorization": f"Bearer {test_app.api_key}"}
    with httpx.Client(base_url=strict_server.url, headers=headers) as server_side:
        tokens = {
            user: server_side.post("/client-tokens", json={"user_id": user}).json()["token"]
            for user in ("alice", "bob")
        }
    reads = [("GET", "/client/balance", None)] * 15
    answers, elapsed = timed_burst(strict_server.url, tokens["alice"], reads)
    allowed = [a for a in answers if a.status_code == 200]
    assert 10 <= len(allowed) <= 10 + math.ceil(elapsed * 5), elapsed
    message = "Rate limit exceeded: 5 requests per second per user (burst 10)"
    for answer in answers:
        if answer.status_code != 200:
            assert_refused_by_rate_limit(answer, 10, message)
    # Bob's bucket is his own: all of his burst right after Alice ran out.
    bob = burst(strict_server.url, tokens["bob"], [("GET", "/client/balance", None)] * 10)
    assert [a.status_code for a in bob] == [200] * 10
    assert bob[0].headers["RateLimit-Limit"] == "10"


def test_client_tokens_are_limited_by_default_and_browsers_may_read_the_headers(
    api_server: ApiServer, client: httpx.Client, repository: AppRepository, test_app: AppUnderTest
) -> None:
    origin = "https://app.example.com"
    Apps(repository).update(test_app.app_id, {"cors_origins": [origin]})
    token = client.post("/client-tokens", json={"user_id": "carol"}).json()["token"]
    answer = httpx.get(
        f"{api_server.url}/client/balance",
        headers={"Authorization": f"Bearer {token}", "Origin": origin},
    )
    assert answer.status_code == 200, answer.text
    # TALLY_CLIENT_RATE_LIMIT's default: 20 a second, bursts of 40.
    assert answer.headers["RateLimit-Limit"] == "40"
    assert answer.headers["RateLimit-Remaining"] == "39"
    exposed = {name.strip() for name in answer.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= exposed


# --- processes -----------------------------------------------------------------------------------


@pytest.fixture
def two_process_server(settings: Settings) -> Iterator[str]:
    port = free_port()
    server = TallyProcess(["serve", "--port", str(port), "--workers", "2"], tally_env(settings))
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_tally_serve_splits_each_limit_across_its_processes(
    two_process_server: str, limited_key: str
) -> None:
    headers = {"Authorization": f"Bearer {limited_key}"}
    with httpx.Client(base_url=two_process_server, headers=headers, timeout=30) as one:
        # Each process holds half of the burst of 40: its first request leaves 19 of 20, told
        # as 38 of 40.
        first = one.get("/credits/balance", params={"user_id": "u"})
        assert first.status_code == 200, first.text
        assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == (
            "40",
            "38",
        )
    reads = [("GET", "/credits/balance?user_id=u", None)] * 60
    answers, elapsed = timed_burst(two_process_server, limited_key, reads)
    allowed = sum(a.status_code == 200 for a in answers)
    # Both processes' halves at most (39 left after the first request), and whatever refilled.
    assert 19 <= allowed <= 39 + math.ceil(elapsed * 20), (allowed, elapsed)


def test_an_operator_sets_how_many_processes_share_a_limit(
    settings: Settings, limited_key: str
) -> None:
    """Two hosts of two processes each: every process allows a quarter of each limit."""
    server = ApiServer(tally_env(settings) | {"TALLY_RATE_LIMIT_PROCESSES": "4"})
    try:
        headers = {"Authorization": f"Bearer {limited_key}"}
        first = httpx.get(f"{server.url}/credits/config", headers=headers)
        assert first.headers["RateLimit-Remaining"] == "36"  # 9 of this process's 10
        reads = [("GET", "/credits/config", None)] * 20
        answers, elapsed = timed_burst(server.url, limited_key, reads)
        allowed = sum(a.status_code == 200 for a in answers)
        assert 9 <= allowed <= 9 + math.ceil(elapsed * 5), (allowed, elapsed)  # 5 a second here
    finally:
        server.stop()


# --- the command ---------------------------------------------------------------------------------


def test_keys_take_a_rate_limit_on_the_command_line(
    settings: Settings, test_app: AppUnderTest
) -> None:
    made = json.loads(
        tally(settings, "keys", "create", test_app.app_id, "--rate-limit", "5", "--json").stdout
    )
    assert made["rate_limit"] == 5 and made["api_key"].startswith("tally_")
    listed = json.loads(tally(settings, "keys", "list", test_app.app_id, "--json").stdout)
    assert {key["key_id"]: key["rate_limit"] for key in listed} == {
        test_app.key_id: None,
        made["key_id"]: 5,
    }
    table = tally(settings, "keys", "list", test_app.app_id).stdout.splitlines()
    assert "RATE LIMIT" in table[0]
    said = tally(settings, "keys", "create", test_app.app_id, "--rate-limit", "3").stdout
    assert "rate limit 3 requests/s, bursts of 6" in said

    changed = tally(settings, "keys", "update", made["key_id"], "--rate-limit", "7", "--json")
    assert json.loads(changed.stdout)["rate_limit"] == 7
    for bad in ("0", "-1", "abc", "2.5", "1000001"):
        refused = tally(
            settings, "keys", "create", test_app.app_id, "--rate-limit", bad, check=False
        )
        assert refused.returncode == 2, (bad, refused.stderr)
        assert (
            "argument --rate-limit: rate_limit must be a whole number of requests per second"
            " from 1 to 1000000"
        ) in refused.stderr, (bad, refused.stderr)
    unknown = tally(settings, "keys", "update", "key_nope", "--rate-limit", "5", check=False)
    assert unknown.returncode == 1 and "no key key_nope" in unknown.stderr
    listed = json.loads(tally(settings, "keys", "list", test_app.app_id, "--json").stdout)
    assert len(listed) == 3  # nothing made by the refused commands

"""CPU per request, in-process: the ASGI app called directly with 32 requests in flight, no
HTTP server, no load generator. Far steadier than wrk on a shared machine, and it isolates what
the app itself costs: the floor and Tally's deduct, side by side. Redis's own CPU per request
(its script included, read from INFO around the same requests) is printed beside it."""

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import uvloop
from redis import Redis
from starlette.applications import Starlette

from bench.stack import Stack

_BODY = b'{"user_id":"hot","amount":1}'
IN_FLIGHT = 32  # as the HTTP runs' connections


def run(stack: Stack, requests: int, in_flight: int = IN_FLIGHT) -> dict[str, float]:
    return uvloop.run(_run(stack, requests, in_flight))


async def _run(stack: Stack, requests: int, in_flight: int) -> dict[str, float]:
    import os

    from api.app import create_app as tally
    from bench.apps.floor import create_app as floor

    os.environ["TALLY_REDIS_URL"] = stack.settings.redis_url
    results = {}
    redis = Redis.from_url(stack.settings.redis_url)
    for name, app, path, key in [
        ("floor", floor(), "/deduct", None),
        ("tally deduct", tally(stack.settings), "/credits/deduct", stack.api_key),
        # Thresholds, a webhook endpoint and a rate-limited key: what configuring them costs.
        ("tally configured", tally(stack.settings), "/credits/deduct", stack.configured_key),
    ]:
        async with app.router.lifespan_context(app):
            results[name], results[f"redis: {name}"] = await _cpu_per_request(
                app, path, key, requests, redis, in_flight
            )
    redis.close()
    results["tally / floor"] = results["tally deduct"] / results["floor"]
    results["configured / tally"] = results["tally configured"] / results["tally deduct"]
    return results


async def _cpu_per_request(
    app: Starlette, path: str, key: str | None, n: int, redis: Redis, in_flight: int
) -> tuple[float, float]:
    """The app's CPU per request and Redis's, in µs."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BODY))]
    if key:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip
    statuses = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": _BODY, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async def client(requests: int) -> None:
        for _ in range(requests):
            await app(dict(scope, state={}), receive, send)

    async def load(requests: int) -> None:
        # Requests in flight at once, as a server has them under load: what one of them
        # costs includes its share of whatever the app does per event-loop turn.
        await asyncio.gather(*(client(requests // in_flight) for _ in range(in_flight)))

    await load(in_flight * 10)  # warm up: connections, caches
    redis_started = _redis_cpu(redis)
    started = time.process_time()
    await load(n)
    cpu = (time.process_time() - started) / (n // in_flight * in_flight) * 1e6
    redis_cpu = (_redis_cpu(redis) - redis_started) / n * 1e6
    if statuses != {200}:
        raise RuntimeError(f"{path} answered {statuses}")
    return cpu, redis_cpu


def _redis_cpu(redis: Redis) -> float:
    info = redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    """`python -m bench.cpu`: CPU per deduct, Tally against the floor, medians of repeated runs."""
    import argparse
    from statistics import median

    from bench.stack import stack

    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; medians are printed")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="requests at once")
    args = parser.parse_args()
    with stack() as s:
        runs = [run(s, args.requests, args.in_flight) for _ in range(args.repeat)]
    for name in runs[0]:
        unit = "" if "/" in name else " µs CPU per request"
        print(f"{name:<16} {median(r[name] for r in runs):8.2f}{unit}")


if __name__ == "__main__":
    main()

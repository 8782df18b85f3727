"""Tally against the floor (bench/apps/floor.py), head to head: one server process each, wrk at
32 connections over 10,000 users, runs alternated so that both see the same machine.

Two conditions: the worker idle with AOF `everysec`, and everything running: AOF `always` and a
worker persisting every entry to PostgreSQL, on the same cores. For each, requests per second,
p99, and the CPU per request of every process (bench/procs.py): with everything on two cores,
the sum of those is what decides the throughput.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from statistics import median
from typing import Any

from bench import load, procs
from bench.stack import USERS, Stack, burst, server, worker
from engine.store.redis import sync_client

CONNECTIONS = 32
DEDUCT = '{"user_id":"{user}","amount":1}'
_PATHS = {"floor": "/deduct", "tally": "/credits/deduct"}


@contextmanager
def _condition(s: Stack, everything: bool) -> Iterator[None]:
    redis = sync_client(s.settings.redis_url)
    redis.config_set("appendfsync", "always" if everything else "everysec")
    try:
        with ExitStack() as running:
            if everything:
                running.enter_context(worker(s))
            yield
    finally:
        redis.config_set("appendfsync", "everysec")
        redis.close()
    burst(s)  # what the runs left in the outboxes, persisted before the next condition


def run(s: Stack, seconds: float, repeat: int) -> dict[str, Any]:
    """Both conditions; per condition and app, medians of `repeat` runs."""
    results: dict[str, Any] = {}
    for condition, everything in (("worker idle", False), ("everything running", True)):
        runs: dict[str, list[tuple[load.LoadResult, dict[str, float]]]] = {"floor": [], "tally": []}
        with ExitStack() as servers, _condition(s, everything):
            urls = {kind: servers.enter_context(server(kind, s, 1)) for kind in runs}
            for kind, url in urls.items():  # warm up: connections, caches, the JIT of nothing
                _load(url, kind, s, 1)
            for _ in range(repeat):
                for kind, url in urls.items():
                    runs[kind].append(procs.per_request(partial(_load, url, kind, s, seconds)))
        results[condition] = {kind: _medians(kind_runs) for kind, kind_runs in runs.items()}
        floor, tally = results[condition]["floor"], results[condition]["tally"]
        results[condition]["ratio"] = tally["rps"] / floor["rps"]
        print(f"  {condition}: tally {tally['rps']:,.0f} req/s (p99 {tally['p99_ms']:.1f} ms),"
              f" floor {floor['rps']:,.0f} (p99 {floor['p99_ms']:.1f}):"
              f" {results[condition]['ratio']:.2f}x")  # fmt: skip
        for kind in ("floor", "tally"):
            split = ", ".join(
                f"{role} {us:.0f}" for role, us in results[condition][kind]["cpu_us"].items()
            )
            print(f"    {kind} CPU µs per request: {split}")
    return results


def _load(url: str, kind: str, s: Stack, seconds: float) -> load.LoadResult:
    return load.run(url, _PATHS[kind], connections=CONNECTIONS, seconds=seconds, users=USERS,
                    body=DEDUCT, key=s.api_key)  # fmt: skip


def _medians(runs: list[tuple[load.LoadResult, dict[str, float]]]) -> dict[str, Any]:
    roles = runs[0][1]
    return {
        "rps": median(r.rps for r, _ in runs),
        "p99_ms": median(r.p99_ms for r, _ in runs),
        "errors": sum(r.non2xx + r.socket_errors for r, _ in runs),
        # The children that exited during a run: wrk, the load generator.
        "cpu_us": {
            ("wrk" if role == "children" else role): median(cpu[role] for _, cpu in runs)
            for role in roles
        },
    }

"""POST /credits/batch alone, quickly: `python -m bench.batch [--seconds N] [--runs N]`.

One Tally worker process, 4 connections, batches of 1,000 deducts over 1,000 users (as
`python -m bench`'s batch scenario); prints deducts/s and Redis's CPU per deduct.
"""

import argparse
from typing import Any

from bench import load
from bench.__main__ import _batch
from bench.stack import server, stack
from engine.store.redis import sync_client


def _redis_cpu_us(info: dict[str, Any]) -> float:
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1e6


def _scripts_us(redis: Any) -> float:
    """Time Redis spent running scripts (FCALL, EVALSHA), out of its CPU: the rest is reading,
    replying, the AOF."""
    stats = redis.info("commandstats")
    return sum(float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in ("fcall", "evalsha"))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with stack() as s, server("tally", s, 1) as url:
        redis = sync_client(s.settings.redis_url)

        def measure(name: str, url: str, path: str, users: int, conns: int, **kw: Any) -> None:
            for _ in range(args.runs):
                before = _redis_cpu_us(redis.info("cpu")), _scripts_us(redis)
                result = load.run(url, path, connections=conns, seconds=args.seconds, **kw)
                cpu_us = _redis_cpu_us(redis.info("cpu")) - before[0]
                script_us = _scripts_us(redis) - before[1]
                deducts = result.requests * 1000
                errors = result.non2xx + result.socket_errors
                print(f"{name}: {result.rps * 1000:>8.0f} deducts/s  p99 {result.p99_ms:.0f} ms"
                      f"  Redis CPU {cpu_us / max(deducts, 1):.2f} µs/deduct"
                      f" (scripts {script_us / max(deducts, 1):.2f})"
                      f"  errors {errors}", flush=True)  # fmt: skip

        _batch(url, s.api_key, measure)


if __name__ == "__main__":
    main()

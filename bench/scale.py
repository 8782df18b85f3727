"""Redis Cluster and replicated acknowledgements, measured: `python -m bench.scale`.

In one session, over HTTP with wrk against one `tally serve` process, a deduct per request:
one Redis (AOF on) against a Redis Cluster of 3 masters with a replica each on the same
machine, with each master's share of the script calls and of Redis's CPU; and what
TALLY_REDIS_WAIT_REPLICAS=1 costs, on one Redis with a replica and on the cluster.
"""

import argparse
import os
from collections.abc import Iterator
from statistics import median
from typing import Any

import redis

from bench import load
from bench.stack import USERS, Stack, server, stack
from tests.servers import RedisCluster, RedisServer

DEDUCT = '{"user_id":"{user}","amount":1}'


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure, medians reported")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="tally serve --workers")
    args = parser.parse_args()
    print(f"python -m bench.scale: {os.cpu_count()} cores, {args.connections} connections,"
          f" {USERS:,} users, tally serve --workers {args.workers}")  # fmt: skip
    figures: dict[str, dict[str, float]] = {}

    def measure(name: str, s: Stack, wait: int) -> None:
        env = {"TALLY_REDIS_WAIT_REPLICAS": str(wait)}
        with server("tally", s, args.workers, env) as url:
            runs = [
                load.run(url, "/credits/deduct", connections=args.connections,
                         seconds=args.seconds, users=USERS, body=DEDUCT, key=s.api_key)
                for _ in range(args.repeat)
            ]  # fmt: skip
        errors = sum(run.non2xx + run.socket_errors for run in runs)
        figures[name] = {
            "rps": median(run.rps for run in runs),
            "p50_ms": median(run.p50_ms for run in runs),
            "p99_ms": median(run.p99_ms for run in runs),
        }
        row = figures[name]
        print(f"  {name:<28} {row['rps']:>8.0f} req/s  p50 {row['p50_ms']:.2f} ms"
              f"  p99 {row['p99_ms']:.2f} ms  errors {errors}")  # fmt: skip

    with stack(wait_replicas=1) as s:  # one Redis and its replica
        measure("one Redis, WAIT 0", s, 0)
        measure("one Redis, WAIT 1", s, 1)
    with stack(cluster=True) as s:
        assert isinstance(s.redis, RedisCluster)
        before = _node_stats(s.redis)
        measure("cluster, WAIT 0", s, 0)
        shares = _shares(before, _node_stats(s.redis))
        measure("cluster, WAIT 1", s, 1)

    print("\nEach master's share of the cluster's WAIT 0 run (script calls, Redis CPU):")
    for port, (calls, cpu) in sorted(shares.items()):
        print(f"  master :{port}  {calls:.1%} of script calls, {cpu:.1%} of Redis CPU")
    print("\nRatios, same session:")
    for name, over, under in (
        ("cluster / one Redis, WAIT 0", "cluster, WAIT 0", "one Redis, WAIT 0"),
        ("WAIT 1 / WAIT 0, one Redis", "one Redis, WAIT 1", "one Redis, WAIT 0"),
        ("WAIT 1 / WAIT 0, cluster", "cluster, WAIT 1", "cluster, WAIT 0"),
    ):
        rps = figures[over]["rps"] / figures[under]["rps"]
        p50 = figures[over]["p50_ms"] / figures[under]["p50_ms"]
        print(f"  {name:<28} throughput {rps:.2f}, p50 latency {p50:.2f}")


def _masters(cluster: RedisCluster) -> Iterator[RedisServer]:
    yield from cluster.masters()


def _node_stats(cluster: RedisCluster) -> dict[int, tuple[int, float]]:
    """Per master: script calls (FCALL, EVALSHA) so far and CPU seconds used so far."""
    stats = {}
    for node in _masters(cluster):
        client = redis.Redis(port=node.port)
        info: dict[str, Any] = client.info("all")
        calls = sum(int(info.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("fcall", "evalsha"))
        stats[node.port] = (calls, float(info["used_cpu_user"]) + float(info["used_cpu_sys"]))
        client.close()
    return stats


def _shares(
    before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]]
) -> dict[int, tuple[float, float]]:
    calls = {port: after[port][0] - before[port][0] for port in after}
    cpu = {port: after[port][1] - before[port][1] for port in after}
    total_calls, total_cpu = sum(calls.values()) or 1, sum(cpu.values()) or 1.0
    return {port: (calls[port] / total_calls, cpu[port] / total_cpu) for port in after}


if __name__ == "__main__":
    main()

"""Run every benchmark scenario: `python -m bench` (about 8 minutes) or `--quick` (under 2).

Starts its own Redis and PostgreSQL, serves Tally, the floor and the PostgreSQL-only peer with
the same uvicorn settings, drives them with wrk, and writes docs/benchmarks.md, plus
docs/benchmarks/results.json and chart.png.
"""

import argparse
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

from bench import cpu, engine_bench, holds, load, procs, report, versus
from bench.stack import USERS, Stack, burst, lag_since, server, stack, worker
from engine.ledger.outbox import outbox_depths
from engine.store.redis import sync_client

DEDUCT = '{"user_id":"{user}","amount":1}'
ADD = '{"user_id":"{user}","amount":1,"description":"top-up"}'


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 2 min)")
    # One API process: what the targets compare (docs/performance.md).
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--repeat", type=int, default=None, help="runs per HTTP scenario, medians reported"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    seconds = 2 if args.quick else 5
    args.repeat = args.repeat or (1 if args.quick else 3)
    levels = [16, 64] if args.quick else [1, 16, 64]
    command = "python -m bench" + (" --quick" if args.quick else "")
    started = time.monotonic()
    machine = _machine(args.workers)
    print(f"{command}: {machine['cpu']}, {machine['cores']} cores; {machine['load_generator']}")

    rows: list[dict[str, Any]] = []

    def measure(name: str, url: str, path: str, users: int, conns: int, **kw: Any) -> None:
        runs = [
            load.run(url, path, connections=conns, seconds=seconds, users=users, **kw)
            for _ in range(args.repeat)
        ]
        row = {
            "scenario": name,
            "users": users,
            "connections": conns,
            "rps": median(r.rps for r in runs),
            "p50_ms": median(r.p50_ms for r in runs),
            "p90_ms": median(r.p90_ms for r in runs),
            "p99_ms": median(r.p99_ms for r in runs),
            "errors": sum(r.non2xx + r.socket_errors for r in runs),
            "runs": len(runs),
        }
        rows.append(row)
        print(f"  {name:<34} users={users:<6} conns={conns:<3} {row['rps']:>9.0f} req/s"
              f"  p99 {row['p99_ms']:.1f} ms")  # fmt: skip

    with stack() as s:
        key = s.api_key
        with server("floor", s, args.workers) as url:
            for users in (USERS, 1):
                for conns in levels:
                    measure("floor (bare EVALSHA)", url, "/deduct", users, conns, body=DEDUCT)
        with server("tally", s, args.workers) as url:
            for users in (USERS, 1):
                for conns in levels:
                    measure(
                        "tally deduct", url, "/credits/deduct", users, conns, body=DEDUCT, key=key
                    )
            for conns in levels:
                # Thresholds, an endpoint and a rate-limited key, against the plain deduct.
                measure("tally deduct, configured", url, "/credits/deduct", USERS, conns,
                        body=DEDUCT, key=s.configured_key)  # fmt: skip
                measure("tally deduct + Idempotency-Key", url, "/credits/deduct", USERS, conns,
                        body=DEDUCT, key=key, idempotent=True)  # fmt: skip
                measure("tally add", url, "/credits/add", USERS, conns, body=ADD, key=key)
                measure("tally balance", url, "/credits/balance?user_id={user}", USERS, conns,
                        key=key, method="GET")  # fmt: skip
            burst(s)  # the runs above left a backlog no worker took: start from empty outboxes
            _batch(url, key, measure)
            # The same server: a hold + capture pair against a deduct, sequential medians.
            hold_figures = holds.run(url, key, 500 if args.quick else 2000)
            print("\n".join(hold_figures.lines()))
            peak = max(r["rps"] for r in rows if r["scenario"] == "tally deduct")
            write_through = _write_through(s, url, key, peak, seconds)
            aof = _aof(s, url, key, seconds)
        with server("pg_peer", s, args.workers) as url:
            for users in (USERS, 1):
                for conns in levels:
                    measure("pg peer deduct", url, "/credits/deduct", users, conns, body=DEDUCT,
                            key=key)  # fmt: skip
        head_to_head = versus.run(s, seconds, args.repeat)
        engine = engine_bench.run(s, seconds)
        for name, rate in engine.items():
            print(f"  engine {name:<27} {rate:>9.0f} deducts/s")
        cpu_runs = [cpu.run(s, 2_000 if args.quick else 10_000) for _ in range(args.repeat)]
        cpu_us = {name: median(run[name] for run in cpu_runs) for name in cpu_runs[0]}
        print("  CPU per request, in-process: " + ", ".join(
            f"{name} {value:.2f}" for name, value in cpu_us.items()))  # fmt: skip

    results: dict[str, Any] = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "http": rows,
        "engine": engine,
        "cpu_us_per_request": cpu_us,
        "versus": head_to_head,
        "write_through": write_through | aof,
        "holds": hold_figures.as_dict(),
    }
    results["summary"] = _summary(rows, write_through, aof, peak) | _targets(head_to_head)
    results["summary"]["CPU per deduct, in-process: tally / floor"] = (
        f"{cpu_us['tally / floor']:.2f} ({cpu_us['tally deduct']:.0f} vs {cpu_us['floor']:.0f} µs)"
    )
    results["summary"]["configured / plain deduct, CPU in-process and HTTP at 64 connections"] = (
        f"{cpu_us['configured / tally']:.3f} and {_ratio(rows, 'tally deduct, configured')}"
    )
    results["summary"]["hold + capture / deduct, sequential median latency"] = (
        f"{hold_figures.ratio:.2f} ({hold_figures.hold_capture_ms:.2f} vs"
        f" {hold_figures.deduct_ms:.2f} ms)"
    )
    print()
    print(report.table(rows))
    print()
    for name, value in results["summary"].items():
        print(f"{name}: {value}")
    report.write(args.out, results, command)
    print(f"\nwrote {args.out}/results.json, {args.out}/chart.png and "
          f"{args.out.parent}/benchmarks.md in {time.monotonic() - started:.0f}s")  # fmt: skip


def _ratio(rows: list[dict[str, Any]], scenario: str) -> str:
    """`scenario`'s req/s over the plain deduct's, both at 64 connections and every user."""

    def rps(name: str) -> float:
        return float(next(
            r["rps"] for r in rows
            if r["scenario"] == name and r["connections"] == 64 and r["users"] == USERS
        ))  # fmt: skip

    return f"{rps(scenario) / rps('tally deduct'):.3f}"


def _batch(url: str, key: str, measure: Any) -> None:
    operations = ",".join(
        f'{{"type":"deduct","user_id":"u{i * 7 % USERS + 1}","amount":1}}' for i in range(1000)
    )
    measure("tally batch (1000 deducts)", url, "/credits/batch", USERS, 4,
            body=f'{{"operations":[{operations}]}}', key=key)  # fmt: skip


def _write_through(s: Stack, url: str, key: str, peak: float, seconds: float) -> dict[str, str]:
    r = sync_client(s.settings.redis_url)
    burst(s)  # start from empty outboxes
    # One worker's rate: fill the outbox with no worker running, then drain it.
    load.run(url, "/credits/deduct", connections=64, seconds=seconds * 2, users=USERS,
             body=DEDUCT, key=key)  # fmt: skip
    pending = sum(outbox_depths(r))
    began = time.monotonic()
    with procs.measured() as drained:
        burst(s)
    drain = time.monotonic() - began
    began = time.monotonic()
    with procs.measured() as started:
        burst(s)  # nothing left: what starting the process costs
    startup = time.monotonic() - began
    persisted = pending / max(drain - startup, 1e-3)
    # The worker's CPU (the burst process, exited) and PostgreSQL's, per entry persisted.
    worker_us, postgres_us = (
        (drained[role] - started[role]) / max(pending, 1) * 1e6 for role in ("children", "postgres")
    )
    # Lag while the API runs at 80% of its peak, with one worker running.
    with worker(s):
        time.sleep(1)
        # wrk paces each connection by a pause between its requests; a short run tells how
        # much the response time adds to the pause, the real run subtracts it.
        conns, target = 64, 0.8 * peak
        period_ms = conns / target * 1000
        probe = load.run(url, "/credits/deduct", connections=conns, seconds=2, users=USERS,
                         body=DEDUCT, key=key, delay_ms=period_ms)  # fmt: skip
        response_ms = max(conns / probe.rps * 1000 - period_ms, 0)
        since = datetime.now(UTC)
        paced = load.run(url, "/credits/deduct", connections=conns, seconds=seconds * 2,
                         users=USERS, body=DEDUCT, key=key,
                         delay_ms=max(period_ms - response_ms, 0))  # fmt: skip
        deadline = time.monotonic() + 60
        while sum(outbox_depths(r)) and time.monotonic() < deadline:
            time.sleep(0.1)
    row = lag_since(s, since)
    return {
        "entries persisted per second, one worker": f"{persisted:,.0f} ({pending:,} entries"
        f" in {drain - startup:.2f}s after {startup:.2f}s of process start)",
        "CPU per entry persisted, µs: worker, PostgreSQL": f"{worker_us:.1f}, {postgres_us:.1f}",
        "_worker_postgres_us": f"{worker_us + postgres_us:.1f}",
        "API deduct peak (req/s)": f"{peak:,.0f}",
        "paced load (req/s, target 80% of peak)": f"{paced.rps:,.0f}",
        "lag enqueue to COMMIT, p50 / p99 (ms)": f"{row[0] or 0:.0f} / {row[1] or 0:.0f}"
        f" over {row[2]:,} entries",
        "_persisted_per_second": f"{persisted:.0f}",
        "_lag_p99_ms": f"{row[1] or 0:.0f}",
    }


def _aof(s: Stack, url: str, key: str, seconds: float) -> dict[str, str]:
    r = sync_client(s.settings.redis_url)
    rates = {}
    for policy in ("everysec", "always"):
        r.config_set("appendfsync", policy)
        result = load.run(url, "/credits/deduct", connections=64, seconds=seconds, users=USERS,
                          body=DEDUCT, key=key)  # fmt: skip
        rates[policy] = result
    r.config_set("appendfsync", "everysec")
    every, always = rates["everysec"], rates["always"]
    return {
        "deduct, AOF everysec (req/s, p99 ms)": f"{every.rps:,.0f}, {every.p99_ms:.1f}",
        "deduct, AOF always (req/s, p99 ms)": f"{always.rps:,.0f}, {always.p99_ms:.1f}",
        "AOF always / everysec throughput": f"{always.rps / every.rps:.2f}",
    }


def _summary(
    rows: list[dict[str, Any]], wt: dict[str, str], aof: dict[str, str], peak: float
) -> dict[str, str]:
    def get(scenario: str, users: int, conns: int) -> dict[str, Any]:
        return next(
            r for r in rows
            if r["scenario"] == scenario and r["users"] == users and r["connections"] == conns
        )  # fmt: skip

    out = {}
    for conns in (16, 64):
        tally, floor = get("tally deduct", USERS, conns), get("floor (bare EVALSHA)", USERS, conns)
        out[f"deduct / floor throughput, {conns} conns (target >= 0.8)"] = (
            f"{tally['rps'] / floor['rps']:.2f}"
        )
    tally, floor = get("tally deduct", USERS, 16), get("floor (bare EVALSHA)", USERS, 16)
    out["deduct / floor p99, 16 conns (target <= 1.5)"] = f"{tally['p99_ms'] / floor['p99_ms']:.2f}"
    for users, target in ((1, 5), (USERS, 1.5)):
        best_tally = max(
            r["rps"] for r in rows if r["scenario"] == "tally deduct" and r["users"] == users
        )
        best_peer = max(
            r["rps"] for r in rows if r["scenario"] == "pg peer deduct" and r["users"] == users
        )
        label = "one hot user" if users == 1 else f"{USERS:,} users"
        out[f"deduct / pg peer, {label} (target >= {target})"] = f"{best_tally / best_peer:.1f}"
    batch = next(r for r in rows if r["scenario"] == "tally batch (1000 deducts)")
    out["batch deducts per second (target >= 60,000)"] = f"{batch['rps'] * 1000:,.0f}"
    persisted = float(wt["_persisted_per_second"])
    out["one worker persists / API deduct peak (target >= 3)"] = f"{persisted / peak:.1f}"
    out["write-through lag p99 at 80% of peak, ms (target < 100)"] = wt["_lag_p99_ms"]
    out["worker + PostgreSQL CPU per entry persisted, µs (target <= 40)"] = wt[
        "_worker_postgres_us"
    ]
    out["AOF always / everysec throughput"] = aof["AOF always / everysec throughput"]
    return out


def _targets(head_to_head: dict[str, Any]) -> dict[str, str]:
    """The head-to-head figures against the floor (bench/versus.py), as the targets read."""
    idle, everything = head_to_head["worker idle"], head_to_head["everything running"]

    def cpu(kind: dict[str, Any]) -> str:
        return ", ".join(f"{role} {us:.0f}" for role, us in kind["cpu_us"].items())

    return {
        "API server CPU per deduct over HTTP, worker idle: tally / floor (target <= 0.5)": (
            f"{idle['tally']['cpu_us']['api'] / idle['floor']['cpu_us']['api']:.2f}"
            f" ({idle['tally']['cpu_us']['api']:.0f} vs {idle['floor']['cpu_us']['api']:.0f} µs)"
        ),
        "deduct / floor, worker idle, AOF everysec, 32 conns (target >= 1.5)": (
            f"{idle['ratio']:.2f} ({idle['tally']['rps']:,.0f} vs {idle['floor']['rps']:,.0f}"
            f" req/s; p99 {idle['tally']['p99_ms']:.1f} vs {idle['floor']['p99_ms']:.1f} ms)"
        ),
        "deduct / floor, everything running, AOF always (target >= 1.0)": (
            f"{everything['ratio']:.2f} ({everything['tally']['rps']:,.0f} vs"
            f" {everything['floor']['rps']:,.0f} req/s)"
        ),
        "CPU µs per deduct by process, everything running: tally": cpu(everything["tally"]),
        "CPU µs per deduct by process, everything running: floor": cpu(everything["floor"]),
    }


def _machine(workers: int) -> dict[str, Any]:
    def first_line(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": f"{memory_kb / 1024 / 1024:.0f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis": first_line(["redis-server", "--version"]),
        "postgres": first_line(["psql", "--version"]),
        "load_generator": load.wrk_version(),
        "workers": workers,
    }


if __name__ == "__main__":
    main()

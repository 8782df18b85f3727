"""How fast and how cheaply one `tally worker` moves a backlog from the outbox to PostgreSQL.

    python -m bench.worker [--entries 200000] [--repeat 3] [--lag-rate 6700]

Fills the outbox with deducts over every user through the engine's batch path (no worker
running), then times `tally worker --burst` draining it. The worker's CPU comes from its
rusage at exit, PostgreSQL's from /proc: the postmaster's own and its children's, both the
live ones and those that exited (cutime, cstime), so a backend closed with the worker still
counts. A drain of empty outboxes is subtracted from both: starting the process is not
write-through. Prints the medians of `--repeat` drains.

With `--lag-rate`, then runs `tally worker` while deducts arrive at that rate (small batches
every few milliseconds, as many API calls would) and prints the lag from an entry's write to
its COMMIT (persisted_at - created_at), p50 and p99.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from bench.stack import USERS, Stack, lag_since, stack, worker
from engine.container import Engine
from engine.ledger.outbox import outbox_depths
from engine.models import Operation
from engine.store.redis import sync_client

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Drain:
    seconds: float
    worker_cpu: float
    postgres_cpu: float


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lag-rate", type=int, default=0, help="deducts/s; 0: no lag run")
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with stack() as s:
        postmaster = int((s.postgres.data / "postmaster.pid").read_text().split()[0])
        _drain(s, postmaster)  # the funding entries
        idle = sorted((_drain(s, postmaster) for _ in range(3)), key=lambda d: d.seconds)[1]
        runs = []
        for run in range(args.repeat):
            filled = _fill(s, args.entries)
            drain = _drain(s, postmaster)
            runs.append(drain)
            print(f"  run {run + 1}: {args.entries:,} entries in {drain.seconds:.2f}s"
                  f" (filled in {filled:.1f}s)", flush=True)  # fmt: skip
        lag = _lag(s, args.lag_rate, args.lag_seconds) if args.lag_rate else None
    seconds = median(d.seconds - idle.seconds for d in runs)
    worker_us = median(d.worker_cpu - idle.worker_cpu for d in runs) / args.entries * 1e6
    postgres_us = median(d.postgres_cpu - idle.postgres_cpu for d in runs) / args.entries * 1e6
    print(f"entries persisted per second, one worker: {args.entries / seconds:,.0f}")
    print(f"CPU per entry (µs): worker {worker_us:.1f}, PostgreSQL {postgres_us:.1f},"
          f" together {worker_us + postgres_us:.1f}")  # fmt: skip
    print(f"(medians of {args.repeat} drains of {args.entries:,} entries; an empty drain,"
          f" {idle.seconds:.2f}s and {idle.worker_cpu:.2f}s CPU, subtracted)")  # fmt: skip
    if lag:
        print(f"lag write to COMMIT at {args.lag_rate:,} deducts/s, p50 / p99 (ms):"
              f" {lag[0]:.0f} / {lag[1]:.0f} over {lag[2]:,} entries")  # fmt: skip


def _fill(s: Stack, entries: int) -> float:
    """`entries` deducts of 1 over every user, in batches as the API's batch endpoint runs."""
    began = time.monotonic()
    engine = Engine.build(s.settings)
    try:
        for start in range(0, entries, 1000):
            ops = [
                Operation("deduct", f"u{(start + i) * 7 % USERS + 1}", 1)
                for i in range(min(1000, entries - start))
            ]
            engine.bridge.run(engine.credits.batch(s.app, ops))
    finally:
        engine.close()
    depth = sum(outbox_depths(sync_client(s.settings.redis_url)))
    assert depth >= entries, f"outbox holds {depth} entries, {entries} expected"
    return time.monotonic() - began


def _lag(s: Stack, rate: int, seconds: float) -> tuple[float, float, int]:
    """p50 and p99 of persisted_at - created_at, and the entries, of deducts arriving at
    `rate` a second while one `tally worker` runs."""
    engine = Engine.build(s.settings)
    try:
        with worker(s):
            time.sleep(5)  # started: its first checks (completeness, partitions) done
            since = datetime.now(UTC)
            began, sent = time.monotonic(), 0
            while (elapsed := time.monotonic() - began) < seconds:
                due = min(int(elapsed * rate) - sent, 1000)
                if due <= 0:
                    time.sleep(0.002)
                    continue
                ops = [Operation("deduct", f"u{(sent + i) * 7 % USERS + 1}", 1) for i in range(due)]
                engine.bridge.run(engine.credits.batch(s.app, ops))
                sent += due
            redis = sync_client(s.settings.redis_url)
            deadline = time.monotonic() + 30
            while sum(outbox_depths(redis)) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        engine.close()
    return lag_since(s, since)


def _drain(s: Stack, postmaster: int) -> Drain:
    before = _postgres_cpu(postmaster)
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "api.cli", "worker", "--burst"], env=s.env())
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, process.args)
    return Drain(seconds, usage.ru_utime + usage.ru_stime, _postgres_cpu(postmaster) - before)


def _postgres_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster, its live children, and the children that exited."""
    total = _stat_ticks(postmaster, children=True)
    for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        total += _stat_ticks(int(child), children=False)
    return total / _TICK


def _stat_ticks(pid: int, *, children: bool) -> int:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0  # exited since it was listed: its postmaster counts it
    fields = text.rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14..17 of stat; [0] here is field 3.
    own = int(fields[11]) + int(fields[12])
    return own + (int(fields[13]) + int(fields[14]) if children else 0)


if __name__ == "__main__":
    main()

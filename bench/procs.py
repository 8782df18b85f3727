"""CPU time by process role, read from /proc around a run: what each part of the system costs
per request (the API, Redis, the worker, PostgreSQL, and wrk, the load generator)."""

import os
import resource
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bench.load import LoadResult

_TICK = os.sysconf("SC_CLK_TCK")
# "children": the processes this one started and saw exit, such as wrk after its run, or a
# `tally worker --burst` after its drain.
ROLES = ("api", "redis", "worker", "postgres", "children")


def _role(cmdline: str, comm: str) -> str | None:
    if "redis-server" in comm or "redis-server" in cmdline:
        return "redis"
    if comm.startswith("postgres") or "postgres" in cmdline.split(" ")[0]:
        return "postgres"
    # Tally's server, the floor and the peer (uvicorn), and the processes uvicorn spawns.
    if "api.cli serve" in cmdline or "uvicorn" in cmdline or "multiprocessing" in cmdline:
        return "api"
    if "-m workers" in cmdline or "api.cli worker" in cmdline:
        return "worker"
    return None


def snapshot() -> dict[str, float]:
    """Seconds of CPU (user + system) each role's live processes have used, and this
    process's finished children's."""
    seconds: dict[str, float] = defaultdict(float)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline") as f:
                cmdline = f.read().replace("\0", " ")
        except OSError:
            continue  # gone meanwhile
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        role = _role(cmdline, comm)
        if role:
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds[role] += (int(fields[11]) + int(fields[12])) / _TICK
            if role == "postgres":  # backends that closed: the postmaster reaped them
                seconds[role] += (int(fields[13]) + int(fields[14])) / _TICK
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds["children"] = children.ru_utime + children.ru_stime
    return seconds


@contextmanager
def measured() -> Iterator[dict[str, float]]:
    """Yields a dict filled, when the block ends, with each role's CPU seconds during it."""
    used: dict[str, float] = {}
    before = snapshot()
    yield used
    after = snapshot()
    used.update({role: max(after.get(role, 0.0) - before.get(role, 0.0), 0.0) for role in ROLES})


def per_request(run: Callable[[], LoadResult]) -> tuple[LoadResult, dict[str, float]]:
    """`run`'s load, and each role's CPU per request during it, in µs (and their total)."""
    with measured() as used:
        result = run()
    count = max(result.requests, 1)
    micros = {role: used[role] / count * 1e6 for role in ROLES}
    micros["total"] = sum(micros.values())
    return result, micros

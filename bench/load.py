"""wrk, the load generator: one run, one JSON line of results."""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk") / "post.lua"


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def wrk_version() -> str:
    if not shutil.which("wrk"):
        raise SystemExit("bench needs wrk: apt-get install wrk (bash .ci/setup installs it)")
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0]


def run(
    url: str,
    path: str,
    *,
    connections: int,
    seconds: float,
    body: str = "",
    users: int = 1,
    key: str | None = None,
    method: str = "POST",
    idempotent: bool = False,
    delay_ms: float = 0,
) -> LoadResult:
    env = os.environ | {
        "PATH_": path,
        "BODY": body,
        "USERS": str(users),
        "METHOD": method,
        "IDEMPOTENT": "1" if idempotent else "0",
        "DELAY_MS": str(delay_ms),
    }
    if key:
        env["TALLY_KEY"] = key
    # One wrk thread: the load generator shares the machine's cores with the servers.
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "10s",
        "-s", str(SCRIPT), url,
    ]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non2xx=data["non2xx"],
        socket_errors=data["socket_errors"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )

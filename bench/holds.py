"""A hold and its capture against a plain deduct, over HTTP against one `tally serve`.

One keep-alive connection sends requests one at a time, so each time is one request's round
trip (client, HTTP server, app, Redis script) with nothing queued ahead of it. Deducts and
hold + capture pairs alternate, their order swapped every time, so the machine's drift falls
on both alike; the figures are medians per operation and the ratio of a pair to one deduct.

Deducts and holds go to users of their own, funded here with plain adds: the deducts' accounts
never held anything, and the other scenarios' users are left as they were.
"""

import http.client
import json
import time
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any
from urllib.parse import urlsplit

USERS = 100  # per side: deducts and holds each cycle through their own
FUNDS = 10**12
WARM_UP = 50  # pairs, untimed: connections, caches, scripts loaded


@dataclass(frozen=True)
class HoldFigures:
    """Medians in milliseconds over `pairs` deducts and `pairs` hold + capture pairs."""

    pairs: int
    deduct_ms: float
    hold_ms: float
    capture_ms: float
    hold_capture_ms: float  # a hold and its capture, back to back, client included

    @property
    def ratio(self) -> float:
        """hold + capture / deduct: what reserving first costs over charging at once."""
        return self.hold_capture_ms / self.deduct_ms

    def as_dict(self) -> dict[str, float]:
        return asdict(self) | {"hold_capture_over_deduct": self.ratio}

    def lines(self) -> list[str]:
        return [
            f"  {'tally deduct':<34} {self.deduct_ms:>8.3f} ms median, {self.pairs} sequential",
            f"  {'tally hold':<34} {self.hold_ms:>8.3f} ms median",
            f"  {'tally capture':<34} {self.capture_ms:>8.3f} ms median",
            f"  {'tally hold + capture':<34} {self.hold_capture_ms:>8.3f} ms median",
            f"  {'hold + capture / deduct':<34} {self.ratio:>8.2f}",
        ]


class _Client:
    """POSTs on one keep-alive connection, with as little client work as the stdlib allows."""

    def __init__(self, url: str, key: str) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        self._headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._connection.request("POST", path, json.dumps(body).encode(), self._headers)
        response = self._connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path}: {response.status} {data[:300]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def close(self) -> None:
        self._connection.close()


def run(url: str, key: str, pairs: int) -> HoldFigures:
    client = _Client(url, key)
    try:
        for side in ("deduct", "hold"):
            for i in range(USERS):
                client.post("/credits/add", {"user_id": f"{side}-{i}", "amount": FUNDS})
        deducts: list[float] = []
        holds: list[float] = []
        captures: list[float] = []
        for i in range(WARM_UP + pairs):
            user = i % USERS
            if i % 2:
                deduct = _deduct(client, user)
                hold, capture = _hold_and_capture(client, user)
            else:
                hold, capture = _hold_and_capture(client, user)
                deduct = _deduct(client, user)
            if i >= WARM_UP:
                deducts.append(deduct)
                holds.append(hold)
                captures.append(capture)
    finally:
        client.close()
    pair = [hold + capture for hold, capture in zip(holds, captures, strict=True)]
    return HoldFigures(
        pairs=pairs,
        deduct_ms=median(deducts) * 1000,
        hold_ms=median(holds) * 1000,
        capture_ms=median(captures) * 1000,
        hold_capture_ms=median(pair) * 1000,
    )


def _deduct(client: _Client, user: int) -> float:
    started = time.perf_counter()
    client.post("/credits/deduct", {"user_id": f"deduct-{user}", "amount": 1})
    return time.perf_counter() - started


def _hold_and_capture(client: _Client, user: int) -> tuple[float, float]:
    """Seconds the hold took, then its capture (of the whole hold, as a deduct of 1 would)."""
    started = time.perf_counter()
    hold = client.post(
        "/credits/holds", {"user_id": f"hold-{user}", "amount": 1, "ttl_seconds": 60}
    )
    held = time.perf_counter()
    client.post(f"/credits/holds/{hold['hold_id']}/capture", {})
    return held - started, time.perf_counter() - held


def main() -> None:
    """`python -m bench.holds`: this scenario alone, on a stack of its own."""
    import argparse
    import os

    from bench.stack import server, stack

    parser = argparse.ArgumentParser(prog="python -m bench.holds", description=__doc__)
    parser.add_argument("--pairs", type=int, default=2000, help="deducts, and hold + captures")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with stack() as s, server("tally", s, args.workers) as url:
        figures = run(url, s.api_key, args.pairs)
    print(f"python -m bench.holds --pairs {args.pairs} --workers {args.workers}")
    print("\n".join(figures.lines()))


if __name__ == "__main__":
    main()

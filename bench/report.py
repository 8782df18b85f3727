"""Bench output: a table on stdout, results.json, a PNG chart and docs/benchmarks.md."""

import json
from pathlib import Path
from typing import Any


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'scenario':<34} {'users':>6} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8}"
        f" {'p99 ms':>8} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['scenario']:<34} {row['users']:>6} {row['connections']:>5}"
            f" {row['rps']:>9.0f} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f}"
            f" {row['p99_ms']:>8.2f} {row['errors']:>6}"
        )
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = [
        r for r in rows if r["users"] == 10_000 and r["scenario"] != "tally batch (1000 deducts)"
    ]
    scenarios = list(dict.fromkeys(r["scenario"] for r in http))
    levels = sorted({r["connections"] for r in http})
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6))
    width = 0.8 / len(levels)
    for i, level in enumerate(levels):
        values = [
            next((r["rps"] for r in http if r["scenario"] == s and r["connections"] == level), 0)
            for s in scenarios
        ]
        left.barh(
            [y + i * width for y in range(len(scenarios))], values, width, label=f"{level} conns"
        )
    left.set_yticks([y + width * (len(levels) - 1) / 2 for y in range(len(scenarios))], scenarios)
    left.invert_yaxis()
    left.set_xlabel("requests per second (10,000 users)")
    left.legend()
    left.set_title("Throughput")
    at16 = [r for r in http if r["connections"] == max(levels) // 4 or r["connections"] == 16]
    names = [r["scenario"] for r in at16]
    for j, (key, label) in enumerate([("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")]):
        right.barh(
            [y + j * 0.27 for y in range(len(at16))], [r[key] for r in at16], 0.27, label=label
        )
    right.set_yticks([y + 0.27 for y in range(len(at16))], names)
    right.invert_yaxis()
    right.set_xlabel("latency, ms (16 connections)")
    right.legend()
    right.set_title("Latency percentiles")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(results: dict[str, Any], command: str) -> str:
    machine = results["machine"]
    summary = "\n".join(f"| {k} | {v} |" for k, v in results["summary"].items())
    engine = "\n".join(f"| {k} | {v:,.0f} |" for k, v in results["engine"].items())
    extra = "\n".join(
        f"| {k} | {v} |" for k, v in results["write_through"].items() if not k.startswith("_")
    )
    holds = results["holds"]
    return f"""# Benchmarks

Produced by `{command}` on {results["finished_at"]}; every figure comes from that one session
and ratios compare runs of it. HTTP figures are medians of {results["http"][0]["runs"]} runs of
each scenario. Treat them as ±30%: the machine is shared and the load generator runs on the
same cores as the servers.

**Machine:** {machine["cpu"]}, {machine["cores"]} cores, {machine["memory"]}; {machine["os"]};
Python {machine["python"]}; {machine["redis"]}; {machine["postgres"]}; load generator
{machine["load_generator"]} (one thread). Servers: uvicorn, {machine["workers"]} worker
processes each (uvloop, httptools), Redis with AOF `everysec`, PostgreSQL with
`synchronous_commit` on.

## Headline ratios

| | |
|---|---|
{summary}

![throughput and latency](benchmarks/chart.png)

## HTTP

```
{table(results["http"])}
```

- *floor*: Starlette + uvicorn, parse JSON, one EVALSHA of a minimal check-and-deduct script.
- *tally*: the real API, authentication, validation, the full script (idempotency, outbox,
  recent list, unpersisted index).
- *pg peer*: the same API done with PostgreSQL alone: one transaction per request
  (idempotency row, `UPDATE … WHERE balance >= amount RETURNING`, ledger `INSERT`).

## Engine in-process (no HTTP), deducts per second

| mode | deducts/s |
|---|---|
{engine}

## CPU per request, in-process (µs)

The ASGI app called directly, {results["cpu_us_per_request"]["floor"]:.0f} µs for the floor and
{results["cpu_us_per_request"]["tally deduct"]:.0f} µs for Tally's deduct: steadier than wrk,
and free of the HTTP server and the load generator.

## Holds: hold + capture against a deduct

Sequential requests on one keep-alive connection to the same server, deducts and hold +
capture pairs alternating ({holds["pairs"]:,} of each); medians, client time included.

| operation | median ms |
|---|---|
| deduct | {holds["deduct_ms"]:.3f} |
| hold | {holds["hold_ms"]:.3f} |
| capture | {holds["capture_ms"]:.3f} |
| hold + capture | {holds["hold_capture_ms"]:.3f} |
| hold + capture / deduct | {holds["hold_capture_over_deduct"]:.2f} |

## Write-through and durability

| | |
|---|---|
{extra}
"""


def write(out: Path, results: dict[str, Any], command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results["http"], out / "chart.png")
    (out.parent / "benchmarks.md").write_text(markdown(results, command))

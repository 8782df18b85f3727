"""The benchmark suite runs end to end (its figures are not judged here: machines are noisy)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


# About a minute and a half: CI runs it; locally `bash tests/run -m "not bench"` leaves it out.
@pytest.mark.bench
def test_bench_quick_runs_and_reports_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    scenarios = {row["scenario"] for row in results["http"]}
    assert {
        "floor (bare EVALSHA)",
        "tally deduct",
        "tally deduct + Idempotency-Key",
        "tally add",
        "tally balance",
        "tally batch (1000 deducts)",
        "pg peer deduct",
    } <= scenarios
    assert all(row["rps"] > 0 and row["errors"] == 0 for row in results["http"])
    assert set(results["engine"]) == {
        "sequential",
        "sequential, auto top-up offered",
        "batched (1000 per call)",
        "asyncio, 64 concurrent",
    }
    assert any("floor" in name for name in results["summary"])
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Headline ratios" in (tmp_path / "benchmarks.md").read_text()

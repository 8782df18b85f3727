"""Tally's benchmarks: `python -m bench` (or `--quick`). Not part of the test suite's verdict."""

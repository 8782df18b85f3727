"""`python -m workers [--burst]`: the worker process, as `tally worker` starts it."""

import argparse
import sys
from collections.abc import Sequence

from engine import logs
from engine.settings import Settings
from workers.runner import run


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tally worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="drain what is pending, then exit")
    args = parser.parse_args(argv)
    settings = Settings()
    logs.configure(settings.log_level)
    sys.exit(run(settings, burst=args.burst))


if __name__ == "__main__":
    main()

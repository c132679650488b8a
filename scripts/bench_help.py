#!/usr/bin/env python3
"""How long `python -m p2ptrain.peer --help` (and a rejected option) takes, this checkout against another
revision, measured side by side: the two alternate (A, B, A, B, ...) so a busy machine slows both alike.

    python scripts/bench_help.py --before 91e7cc8 --trials 9

The other revision is checked out into a temporary git worktree, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"--help": ["--help"], "rejected option": ["--topology", "topologies/ring8.toml", "--rounds", "0"]}


def seconds(tree: Path, arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "p2ptrain.peer", *arguments], cwd=tree, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=os.environ | {"PYTHONPATH": str(tree)}, check=False)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--trials", type=int, default=9, help="runs of each side per command (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2ptrain-before-") as scratch:
        before = Path(scratch) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(before), args.before], cwd=ROOT, check=True)
        try:
            for name, arguments in COMMANDS.items():
                times = {"before": [], "after": []}
                for _ in range(args.trials):
                    times["before"].append(seconds(before, arguments))
                    times["after"].append(seconds(ROOT, arguments))
                b, a = statistics.median(times["before"]), statistics.median(times["after"])
                print(f"{name:16} before {b:.3f}s (range {min(times['before']):.3f}-{max(times['before']):.3f}), "
                      f"after {a:.3f}s (range {min(times['after']):.3f}-{max(times['after']):.3f}): "
                      f"{b / a:.1f}x faster, medians of {args.trials} interleaved runs")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A sweep you can Ctrl-C (or lose to a dropped SSH session) and run again: nothing is computed twice.

    cw-local -n 4 -- python examples/resume_sweep.py --out resume.csv

The first run queues every grid point in the session ``resume-example``.
Stop it at any time: the jobs keep running on the workers, and their
results stay in Redis (7 days after the session was last used). Run the
same command again: points already computed come back at once, running
ones are re-attached, and only what was never queued is queued now.

``cw-admin sessions`` shows the session's progress; ``cw-admin cancel
--session resume-example`` stops it, ``cw-admin drop-session
resume-example`` forgets it (the next run computes everything again).
"""

from __future__ import annotations

import argparse
import csv
import math
import time

import cwredis

SESSION = "resume-example"


def simulate(alpha: float, beta: float) -> float:
    """A stand-in for an expensive model run (a few tenths of a second each)."""
    time.sleep(0.2)
    return sum(math.exp(-alpha * t / 100) * math.cos(beta * t / 100) for t in range(2000)) / 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="resume.csv")
    parser.add_argument("--points", type=int, default=12, help="grid points per axis")
    args = parser.parse_args()
    grid = [(0.1 + 0.1 * i, 0.5 * j) for i in range(args.points) for j in range(args.points)]
    started = time.monotonic()
    with cwredis.Executor(session=SESSION) as ex:
        values = list(ex.map(simulate, [a for a, _ in grid], [b for _, b in grid], progress=True))
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["alpha", "beta", "response"])
        for (alpha, beta), value in zip(grid, values):
            writer.writerow([f"{alpha:.2f}", f"{beta:.2f}", f"{value:.6f}"])
    print(f"wrote {len(grid)} rows to {args.out} in {time.monotonic() - started:.1f}s "
          f"(run it again: it takes no time, everything comes from the session)")


if __name__ == "__main__":
    main()

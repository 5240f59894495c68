"""A parameter sweep: evaluate a model on a grid with Executor.map, write a CSV.

    cw-local -n 4 -- python examples/sweep.py --out sweep.csv

Each grid point is one job; results come back in grid order, with a live
progress bar on a terminal.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math

import cwredis


def simulate(alpha: float, beta: float) -> float:
    """A stand-in for an expensive model run: the damped response at (alpha, beta)."""
    total = 0.0
    for step in range(2000):
        t = step / 100.0
        total += math.exp(-alpha * t) * math.cos(beta * t)
    return total / 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="sweep.csv")
    parser.add_argument("--points", type=int, default=20, help="grid points per axis")
    args = parser.parse_args()
    alphas = [0.1 + 0.1 * i for i in range(args.points)]
    betas = [0.5 * i for i in range(args.points)]
    grid = list(itertools.product(alphas, betas))
    with cwredis.Executor() as ex:
        values = ex.map(simulate, [a for a, _ in grid], [b for _, b in grid], progress=True)
        with open(args.out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["alpha", "beta", "response"])
            for (alpha, beta), value in zip(grid, values):
                writer.writerow([f"{alpha:.2f}", f"{beta:.2f}", f"{value:.6f}"])
    print(f"wrote {len(grid)} rows to {args.out}")


if __name__ == "__main__":
    main()

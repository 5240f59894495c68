"""Estimate pi by throwing darts, in parallel: each job throws a batch.

    cw-local -n 4 -- python examples/montecarlo_pi.py --jobs 100 --darts 100000
"""

from __future__ import annotations

import argparse
import random

import cwredis


def throw(darts: int, seed: int) -> int:
    """How many of ``darts`` random points in the unit square fall inside the quarter circle."""
    rng = random.Random(seed)
    return sum(1 for _ in range(darts) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--darts", type=int, default=100_000)
    args = parser.parse_args()
    hits = 0

    def on_result(jobid: str, inside: int) -> None:
        nonlocal hits
        hits += inside

    with cwredis.ClientThread(on_result) as client:
        for seed in range(args.jobs):
            client.submit(throw, args.darts, seed)
    estimate = 4.0 * hits / (args.jobs * args.darts)
    print(f"pi ~ {estimate:.5f} from {args.jobs * args.darts} darts in {args.jobs} jobs")


if __name__ == "__main__":
    main()

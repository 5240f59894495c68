"""Benchmark rows: a metric's runs summarized, numbers formatted, progress logged.

Shared by every measurement (``suite.py``, ``suite_server.py``) and by
``run.py`` and ``profiling.py``, which print the rows; kept apart so the
measurements can be split across modules without importing each other.
"""

from __future__ import annotations

import statistics
import sys


def summarize(runs: list[dict]) -> dict:
    """Per metric over the runs: median/min/max/runs for numbers, runs alone for anything else."""
    out: dict = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if key in r]
        if all(isinstance(v, (int, float)) for v in vals):
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                        "runs": vals}
        else:
            out[key] = {"runs": vals}
    return out


def derived(value: float) -> dict:
    """A number computed from medians, shaped like a summarized metric."""
    return {"median": value, "min": value, "max": value, "runs": [value]}


def fmt_num(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def fmt_run(res: dict) -> str:
    return ", ".join(f"{k}={fmt_num(v)}" for k, v in res.items())


def log(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"  {msg}", file=sys.stderr, flush=True)

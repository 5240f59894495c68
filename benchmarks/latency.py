"""Client roles for one job at a time: cwredis's latency, and the bare redis-py floor beside it."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from measuring import bare_client, percentile

#: The program that answers the bare loop (a second process, like a worker).
BARE_ECHO_PROGRAM = str(Path(__file__).resolve().parent / "bare_echo.py")
#: Redis lists of the bare loop; the names are the bare loop's own, not cwredis keys.
BARE_JOBS, BARE_RESULTS = "bare:jobs", "bare:results"


def role_latency(url, n, warmup, timeout, **_):
    """Submit-to-callback ms of ``n`` jobs, each submitted once the previous one's callback ran."""
    import cwredis
    import jobs

    ev = threading.Event()
    errors: list[str] = []

    def on_result(jobid, result):
        ev.set()

    def on_error(jobid, error):
        errors.append(str(error)[:300])
        ev.set()

    lat: list[float] = []
    sub: list[float] = []
    t = cwredis.ClientThread(on_result, url=url, error_callback=on_error)
    t.start()
    try:
        for i in range(warmup + n):
            ev.clear()
            t0 = time.perf_counter()
            t.submit(jobs.noop, i)
            t1 = time.perf_counter()
            if not ev.wait(30):
                raise TimeoutError(f"job {i}: no callback within 30 s")
            t2 = time.perf_counter()
            if errors:
                raise RuntimeError(f"job failed: {errors[0]}")
            if i >= warmup:
                sub.append(t1 - t0)
                lat.append(t2 - t0)
    finally:
        t.stop()
    ms = [x * 1000 for x in lat]
    return {"p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99), "mean_ms": statistics.fmean(ms),
            "max_ms": max(ms), "submit_p50_ms": percentile([x * 1000 for x in sub], 0.5)}


def role_bare_latency(url, n, warmup, timeout, **_):
    """The floor: a bare redis-py loop, one job per round trip, no leases.

    The client LPUSHes a job and BRPOPs its result; a second process
    (``bare_echo.py``) BRPOPs the job and LPUSHes it back. Run beside every
    latency run, it tells what this machine's cores allow at that moment.
    """
    r = bare_client(url)
    r.delete(BARE_JOBS, BARE_RESULTS)
    # Same process group as this client (which the parent stops as a group); URL in the environment.
    echo = subprocess.Popen([sys.executable, BARE_ECHO_PROGRAM])
    lat: list[float] = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            r.lpush(BARE_JOBS, b"job-%d" % i)
            if r.brpop([BARE_RESULTS], 30) is None:
                raise TimeoutError("the bare echo process did not answer within 30 s")
            if i >= warmup:
                lat.append(time.perf_counter() - t0)
    finally:
        echo.kill()
        echo.wait()
    ms = [x * 1000 for x in lat]
    return {"p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99)}

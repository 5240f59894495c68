"""``latency_hops``: where a lone job's submit-to-callback time goes, hop by hop.

The stack's processes run with ``hoptrace/`` first on ``PYTHONPATH``; its
``sitecustomize`` wraps a few cwredis functions in each process and writes
timestamps (``time.perf_counter_ns``, one monotonic clock for the machine)
to one file per process. :func:`role_latency_hops` is the ``latency`` role's
loop with the client's own two marks (before ``submit``, after the wait);
:func:`hop_table` joins the files by job id and gives each hop's median and
90th percentile in microseconds. The wrappers cost a few microseconds per
hop, so the total is a little above the ``latency`` benchmark's.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path

#: The directory ``PYTHONPATH`` gets for the traced stack (its ``sitecustomize`` does the tracing).
HOPTRACE_PATH = str(Path(__file__).resolve().parent / "hoptrace")

#: The hops both paths share: the client's before the hand-off, and everything from the job's run on.
_CLIENT_SEALS = [("c_start", "c_submit", "client: pickle and seal the call")]
_RUN_AND_BACK = [
    ("k_run", "k_ran", "the job (a no-op) and pickling its result"),
    ("k_ran", "c_published", "job process seals the outcome, complete.lua (+ park) publishes it"),
    ("c_published", "c_callback", "client's results thread: parse the message"),
    ("c_callback", "c_woke", "verify, unpickle, callback; the waiting thread wakes"),
]
#: The critical path of a lone job, mark by mark: (from, to, what happens in between).
PATH = _CLIENT_SEALS + [
    ("c_submit", "w_handed", "submit.lua hands it to the parked worker; its BLMPOP returns"),
    ("w_handed", "w_piping", "worker: verify the job, dispatch it to an idle job process"),
    ("w_piping", "w_piped", "worker: pickle the Run, write the pipe"),
    ("w_piped", "k_woke", "job process wakes and reads the pipe"),
    ("k_woke", "k_run", "job process: fresh-code check, environment"),
] + _RUN_AND_BACK
#: The path of a lone job handed to a job process parked on its own inbox (cwredis.worker.parking).
PARKED_PATH = _CLIENT_SEALS + [
    ("c_submit", "k_handed", "submit.lua hands it to a parked job process; its BLMPOP returns, it wakes"),
    ("k_handed", "k_took", "job process: verify the job (signature, records), tell the worker (Took)"),
    ("k_took", "k_run", "job process: fresh-code check, environment"),
] + _RUN_AND_BACK
#: Spans beside the path.
ASIDE = [
    ("c_submit", "c_submitted", "client: the submit round trip (submit() returns)"),
    ("k_ran", "k_recorded", "job process: the recording round trip (complete + park)"),
    ("c_start", "c_woke", "total, submit to the waiting thread"),
]


def trace_env(trace_dir: Path) -> dict[str, str]:
    """What the traced stack's processes get in their environment."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": HOPTRACE_PATH + (os.pathsep + path if path else ""),
            "CWREDIS_HOPTRACE_DIR": str(trace_dir)}


def role_latency_hops(url, n, warmup, timeout, **_):
    """The ``latency`` role's loop, marking the client's start and the wake of its waiting thread."""
    import cwredis
    import jobs
    import sitecustomize  # hoptrace's: the stack put it first on PYTHONPATH

    if not hasattr(sitecustomize, "mark") or not os.environ.get("CWREDIS_HOPTRACE_DIR"):
        raise RuntimeError("latency_hops needs hoptrace/ first on PYTHONPATH and CWREDIS_HOPTRACE_DIR")
    done = threading.Event()
    errors: list[str] = []

    def on_result(job_id, result):
        done.set()

    def on_error(job_id, error):
        errors.append(str(error)[:300])
        done.set()

    with cwredis.ClientThread(on_result, url=url, error_callback=on_error) as client:
        for i in range(warmup + n):
            done.clear()
            start_ns = time.perf_counter_ns()
            job_id = client.submit(jobs.noop, i)
            if not done.wait(30):
                raise TimeoutError(f"job {i}: no callback within 30 s")
            woke_ns = time.perf_counter_ns()
            if errors:
                raise RuntimeError(f"job failed: {errors[0]}")
            if i >= warmup:
                sitecustomize.mark("c_start", job_id, start_ns)
                sitecustomize.mark("c_woke", job_id, woke_ns)
    return {"jobs": n}


def hop_table(trace_dir: Path, since_ns: int = 0) -> dict:
    """Each hop's median and 90th percentile (µs) over the jobs every mark of the path saw, of those the
    client started at ``since_ns`` or later (earlier runs wrote to the same files)."""
    marks: dict[str, dict[str, int]] = defaultdict(dict)
    missing: set[str] = set()
    for path in Path(trace_dir).glob("*.hops"):
        for line in path.read_text().splitlines():
            hop, job_id, ns = line.split()
            if hop == "missing":
                missing.add(job_id)
            else:
                marks[job_id].setdefault(hop, int(ns))
    out: dict = {"jobs_traced": 0}
    if missing:
        out["missing_hooks"] = ",".join(sorted(missing))
    # A job is on one path or the other: through the worker, or straight to a parked job process
    # (the parked path's spans are named "parked:..."; a checkout without child parking has none).
    for prefix, path in (("", PATH), ("parked:", PARKED_PATH)):
        needed = {m for a, b, _ in path + ASIDE for m in (a, b)}
        jobs = [m for m in marks.values() if needed <= m.keys() and m["c_start"] >= since_ns]
        out["jobs_traced"] += len(jobs)
        if jobs:
            out[f"{prefix}jobs"] = len(jobs)
        for a, b, _ in path + ASIDE if jobs else []:
            spans = sorted((m[b] - m[a]) / 1000 for m in jobs)
            out[f"{prefix}{a}>{b}_p50_us"] = statistics.median(spans)
            out[f"{prefix}{a}>{b}_p90_us"] = spans[int(len(spans) * 0.9)]
    return out


def describe() -> str:
    """The hops, one per line, for the table's legend."""
    return "\n".join(f"  {prefix}{a} > {b}: {what}"
                     for prefix, path in (("", PATH + ASIDE), ("parked:", PARKED_PATH)) for a, b, what in path)

"""Client roles for sessions: resuming a finished sweep (results per second, the client's memory)."""

from __future__ import annotations

import time

from measuring import peak_rss_kb


def role_session_fill(url, n, session, timeout, **_):
    """Run ``map(noop, range(n))`` in ``session`` to the end: the sweep a later run resumes."""
    import cwredis
    import jobs

    t0 = time.perf_counter()
    with cwredis.Executor(url=url, session=session) as ex:
        out = list(ex.map(jobs.noop, range(n), chunksize=1))
    if out != list(range(n)):
        raise RuntimeError("session_fill: wrong results")
    return {"seconds": time.perf_counter() - t0}


def role_resume(url, n, session, timeout, **_):
    """A fresh process reruns the same map in ``session``: every result comes back from Redis."""
    import cwredis
    import jobs

    start_peak = peak_rss_kb()
    t0 = time.perf_counter()
    with cwredis.Executor(url=url, session=session) as ex:
        out = list(ex.map(jobs.noop, range(n), chunksize=1))
    dt = time.perf_counter() - t0
    if out != list(range(n)):
        raise RuntimeError("resume: wrong results")
    return {"results_per_s": n / dt, "seconds": dt, "peak_rss_mb": peak_rss_kb() / 1024,
            "start_peak_mb": start_peak / 1024}

"""Client roles that count jobs per second: executor_map, client_submit, fanout, scale.

Each runs in ``client.py``; the job functions come from ``jobs`` (pickled by reference).
"""

from __future__ import annotations

import time

import protocol
from measuring import Counter


def role_executor_map(url, n, warmup, timeout, session=None, **_):
    """``list(Executor.map(noop, range(n), chunksize=1))`` after ``warmup`` jobs the same way
    (other arguments: in a session they are other jobs); with ``session``, in that session."""
    import cwredis
    import jobs

    with cwredis.Executor(url=url, **({"session": session} if session else {})) as ex:
        list(ex.map(jobs.noop, range(-warmup, 0), chunksize=1))
        t0 = time.perf_counter()
        out = list(ex.map(jobs.noop, range(n), chunksize=1))
        dt = time.perf_counter() - t0
    if out != list(range(n)):
        raise RuntimeError("executor_map: wrong results")
    return {"jobs_per_s": n / dt, "seconds": dt}


def role_client_submit(url, n, warmup, timeout, **_):
    """``n`` ``ClientThread.submit`` calls until the last callback; the submit loop alone too."""
    import cwredis
    import jobs

    c = Counter(warmup)
    t = cwredis.ClientThread(c.ok, url=url, error_callback=c.bad)
    t.start()
    try:
        for i in range(warmup):
            t.submit(jobs.noop, i)
        c.wait(60)
        c.reset(n)
        t0 = time.perf_counter()
        for i in range(n):
            t.submit(jobs.noop, i)
        t_sub = time.perf_counter()
        c.wait(timeout)
        t1 = time.perf_counter()
    finally:
        t.stop()
    return {"jobs_per_s": n / (t1 - t0), "submit_calls_per_s": n / (t_sub - t0),
            "seconds": t1 - t0}


def role_fanout(url, n, seconds, slots, timeout, **_):
    """``n`` sleeps of ``seconds`` on ``slots`` job slots: efficiency = ideal time / actual."""
    import cwredis
    import jobs

    with cwredis.Executor(url=url) as ex:
        list(ex.map(jobs.sleep, [0.0] * (2 * slots), chunksize=1))
        t0 = time.perf_counter()
        out = list(ex.map(jobs.sleep, [seconds] * n, chunksize=1))
        dt = time.perf_counter() - t0
    assert len(out) == n
    ideal = n * seconds / slots
    return {"efficiency": ideal / dt, "seconds": dt, "ideal_s": ideal}


def role_scale(url, n, timeout, **_):
    """Submit ``n`` jobs with no worker, tell the parent (which starts the workers), time the drain."""
    import cwredis
    import jobs

    c = Counter(n)
    t = cwredis.ClientThread(c.ok, url=url, error_callback=c.bad)
    t.start()
    t0 = time.perf_counter()
    for i in range(n):
        t.submit(jobs.noop, i)
    t_sub = time.perf_counter()
    protocol.emit(protocol.EVENT, {"submitted": n})
    try:
        c.wait(timeout)
    finally:
        t.stop()
    drain = c.last - c.first
    return {"drain_jobs_per_s": (n - 1) / drain if drain > 0 else float("nan"),
            "drain_incl_start_jobs_per_s": n / (c.last - t_sub),
            "submit_calls_per_s": n / (t_sub - t0)}


def role_wait_cost(url, batches, size, timeout, **_):
    """What ``WAIT 1`` adds to a pipelined batch of ``size`` writes on the primary (through ``url``, a
    Sentinel URL): the median of ``batches`` timed batches without and with it, alternating."""
    import statistics

    from cwredis.connection import Pinned, connect
    from cwredis.sentinel import WAIT_COMMAND

    pinned = Pinned(connect(url, "bench"))
    writes = [("SET", f"bench:wait:{i}", "x" * 100) for i in range(size)]
    plain, waited = [], []
    for _ in range(batches):
        for commands, times in ((writes, plain), (writes + [WAIT_COMMAND], waited)):
            t0 = time.perf_counter()
            replies = pinned.pipeline(commands)
            times.append(time.perf_counter() - t0)
            if commands is not writes and int(replies[-1]) < 1:  # type: ignore[arg-type]
                raise RuntimeError("wait_cost: no replica acknowledged a batch")
    pinned.execute("DEL", *[f"bench:wait:{i}" for i in range(size)])
    pinned.close()
    p_ms, w_ms = statistics.median(plain) * 1000, statistics.median(waited) * 1000
    return {f"batch_ms@{size}": p_ms, f"batch_wait_ms@{size}": w_ms, f"wait_ms@{size}": w_ms - p_ms}

"""Client roles that measure memory: Redis bytes per queued job, and the client's own RSS."""

from __future__ import annotations

import os
import time

import protocol
from measuring import Counter, peak_rss_kb, rss_now_kb


def role_memory(url, n, timeout, session=None, **_):
    """``INFO memory used_memory`` before/after ``n`` submitted jobs that no worker runs (in ``session``)."""
    import redis

    import cwredis
    import jobs

    r = redis.Redis.from_url(url)
    base = int(r.info("memory")["used_memory"])
    c = Counter(0)
    t = cwredis.ClientThread(c.ok, url=url, error_callback=c.bad, **({"session": session} if session else {}))
    t.start()
    t.submit(jobs.noop, -1)  # first submit stores the shared spec/function blob once
    time.sleep(0.2)
    before = int(r.info("memory")["used_memory"])
    keys1 = r.dbsize()
    t0 = time.perf_counter()
    last = None
    for i in range(n):
        last = t.submit(jobs.noop, i)
    dt = time.perf_counter() - t0
    time.sleep(0.2)
    after = int(r.info("memory")["used_memory"])
    keys2 = r.dbsize()
    res = {"bytes_per_job": (after - before) / n,
           "bytes_per_job_incl_first": (after - base) / (n + 1),
           "keys_per_job": (keys2 - keys1) / n,
           "submit_calls_per_s": n / dt}
    try:  # informational: MEMORY USAGE of one job hash (key layout from cwredis/keys.py)
        from cwredis.keys import DEFAULT_KEYS

        res["job_hash_memory_usage"] = int(r.memory_usage(DEFAULT_KEYS.job(last), samples=0) or 0)
    except Exception:
        pass
    protocol.emit(protocol.RESULT, res)
    os._exit(0)  # do not wait for jobs that no worker will run


def role_bounded(url, n, timeout, **_):
    """``Executor.map`` over a generator of ``n`` items, results dropped: peak RSS and RSS at 10% steps."""
    import cwredis
    import jobs

    def gen(m):
        for i in range(m):
            yield i

    samples: list[tuple[int, int]] = []
    step = max(1, n // 10)
    rss0 = rss_now_kb()
    peak0 = peak_rss_kb()
    t0 = time.perf_counter()
    count = 0
    with cwredis.Executor(url=url) as ex:
        for _r in ex.map(jobs.noop, gen(n), chunksize=1):
            count += 1
            if count % step == 0:
                samples.append((count, rss_now_kb()))
    dt = time.perf_counter() - t0
    if count != n:
        raise RuntimeError(f"map yielded {count} of {n}")
    return {"peak_rss_mb": peak_rss_kb() / 1024, "start_rss_mb": rss0 / 1024,
            "start_peak_mb": peak0 / 1024, "jobs_per_s": n / dt,
            "rss_mb_at_10pct_steps": [round(k / 1024, 1) for _c, k in samples]}

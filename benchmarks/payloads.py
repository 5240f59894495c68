"""Client roles that move large payloads: 1 MiB arguments, 1 MiB results, and the bare floor beside them.

``large_args``: ``Executor.map(size_of, payloads)`` over ``n`` distinct
``size``-byte ``bytes`` (made before the clock starts); ``large_results``:
``Executor.map(make_bytes, range(n))``, each returning ``size`` bytes. Both
report MiB/s of payload moved end to end. ``bare_payload`` is the floor: a
bare redis-py ``LPUSH`` of each payload then an ``RPOP`` of it, one round trip
each, from this one process, on the same server at the same moment.
"""

from __future__ import annotations

import time

MIB = 1 << 20


def _payloads(n: int, size: int) -> list[bytes]:
    """``n`` distinct payloads (so nothing is stored once for all of them)."""
    return [i.to_bytes(8, "little") * (size // 8) for i in range(n)]


def role_large_args(url, n, size, warmup, timeout, **_):
    import cwredis
    import jobs

    payloads = _payloads(n, size)
    with cwredis.Executor(url=url) as ex:
        list(ex.map(jobs.size_of, _payloads(warmup, size)))
        t0 = time.perf_counter()
        out = list(ex.map(jobs.size_of, payloads))
        dt = time.perf_counter() - t0
    if out != [size] * n:
        raise RuntimeError("large_args: wrong results")
    return {"mib_per_s": n * size / MIB / dt, "ms_per_job": 1000 * dt / n, "seconds": dt}


def role_large_results(url, n, size, warmup, timeout, **_):
    import cwredis
    import jobs

    with cwredis.Executor(url=url) as ex:
        list(ex.map(jobs.make_bytes, range(warmup), [size] * warmup))
        t0 = time.perf_counter()
        out = list(ex.map(jobs.make_bytes, range(n), [size] * n))
        dt = time.perf_counter() - t0
    if any(len(r) != size or r[:8] != i.to_bytes(8, "little") for i, r in enumerate(out)):
        raise RuntimeError("large_results: wrong results")
    return {"mib_per_s": n * size / MIB / dt, "ms_per_job": 1000 * dt / n, "seconds": dt}


def role_bare_payload(url, n, size, timeout, **_):
    """The floor: each payload LPUSHed, then RPOPed, by a bare redis-py client (one round trip each)."""
    from measuring import bare_client

    payloads = _payloads(n, size)
    r = bare_client(url)
    key = "bare:payload"  # the floor's own list, not a cwredis key
    r.delete(key)
    t0 = time.perf_counter()
    for payload in payloads:
        r.lpush(key, payload)
        if r.rpop(key) != payload:
            raise RuntimeError("bare_payload: wrong payload back")
    dt = time.perf_counter() - t0
    return {"mib_per_s": n * size / MIB / dt}

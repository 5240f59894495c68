"""What the client programs measure with: a callback counter, percentiles, this process's RSS."""

from __future__ import annotations

import os
import resource
import threading
import time


def bare_client(url: str):
    """A bare redis-py client for a floor: cluster-aware when ``url`` names a node of a Valkey/Redis Cluster
    (``--cluster``: the floor's key may live on another node), else a plain one."""
    import redis

    r = redis.Redis.from_url(url)
    if not r.info("cluster").get("cluster_enabled"):
        return r
    r.close()
    return redis.cluster.RedisCluster.from_url(url)


class Counter:
    """Counts ClientThread callbacks; sets ``done`` when ``target`` outcomes arrived.

    ``first``/``last`` are the ``time.perf_counter()`` of the first and last callback.
    """

    def __init__(self, target: int = 0) -> None:
        self.reset(target)

    def reset(self, target: int) -> None:
        self.ok_n = 0
        self.err_n = 0
        self.first_error: str | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.target = target
        self.done = threading.Event()
        if target <= 0:
            self.done.set()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        if self.ok_n + self.err_n >= self.target:
            self.done.set()

    def ok(self, jobid, result) -> None:
        self.ok_n += 1
        self._tick()

    def bad(self, jobid, error) -> None:
        self.err_n += 1
        if self.first_error is None:
            self.first_error = str(error)[:500]
        self._tick()

    def wait(self, timeout_s: float) -> None:
        """Until ``target`` outcomes; TimeoutError after ``timeout_s``, RuntimeError if any job failed."""
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"only {self.ok_n}+{self.err_n} of {self.target} callbacks "
                               f"within {timeout_s:.0f}s")
        if self.err_n:
            raise RuntimeError(f"{self.err_n} jobs failed; first: {self.first_error}")


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def rss_now_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

"""The overview, read once a second in the background, and the throughput history it accumulates.

However many browser tabs poll the overview, Redis sees one refresh a
second: :class:`Sampler` reads the counts (:meth:`Views.counts`) and the
session tallies, turns the counters' increase into rates, and keeps the last
``HISTORY_S`` seconds of them for the chart. Pages read :meth:`snapshot`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import redis

from ..connection import describe
from .sessions import SessionTallies
from .views import Counts, Views

log = logging.getLogger("cwredis.dashboard")

#: Seconds between two reads of the overview.
INTERVAL_S = 1.0
#: Seconds of throughput the chart shows.
HISTORY_S = 600


class Sampler:
    """Reads the overview every ``INTERVAL_S`` until ``stop`` is set; see the module docstring."""

    def __init__(self, views: Views, sessions: SessionTallies, stop: threading.Event) -> None:
        self.views = views
        self.sessions = sessions
        self.stop = stop
        self._lock = threading.Lock()
        self._previous: tuple[float, Counts] | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=int(HISTORY_S / INTERVAL_S))
        self._snapshot: dict[str, Any] = {"error": "starting", "history": []}
        self.last_refresh_s = 0.0  # how long the last refresh took (the benchmark reads it)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            self.refresh()
            self.stop.wait(max(0.0, INTERVAL_S - (time.monotonic() - started)))

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="cwredis-dashboard-sampler", daemon=True)
        thread.start()
        return thread

    def refresh(self) -> None:
        """One read of everything the overview shows; an unreachable Redis is shown, not raised."""
        started = time.monotonic()
        try:
            counts = self.views.counts()
            sessions = self.sessions.refresh()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            with self._lock:
                self._snapshot = {**self._snapshot, "error": f"cannot reach Redis: {describe(exc)}"}
            return
        self.last_refresh_s = time.monotonic() - started
        with self._lock:
            self._snapshot = self._overview(started, counts, sessions)

    def _overview(self, now: float, counts: Counts, sessions: list[dict[str, Any]]) -> dict[str, Any]:
        done, failed = counts.completed("done"), counts.completed("failed")
        rates: dict[str, float] = {}
        if self._previous is not None:
            then, before = self._previous
            seconds = max(now - then, 1e-3)
            before_done = before.completed("done")
            rates = {q: max(0, n - before_done.get(q, 0)) / seconds for q, n in done.items()}
            self._history.append({
                "t_ms": counts.now_ms,
                "done_per_s": max(0, counts.stats.get("done", 0) - before.stats.get("done", 0)) / seconds,
                "failed_per_s": max(0, counts.stats.get("failed", 0) - before.stats.get("failed", 0)) / seconds})
        self._previous = (now, counts)
        queues = [{"name": name, "pending": pending, "running": counts.running.get(name, 0),
                   "done_per_s": round(rates.get(name, 0.0), 2), "done": done.get(name, 0),
                   "failed": failed.get(name, 0)} for name, pending in counts.pending.items()]
        return {"error": None, "now_ms": counts.now_ms, "queues": queues, "running": counts.running_total,
                "delayed": counts.delayed, "failed": counts.failed, "workers": len(counts.workers),
                "done": counts.stats.get("done", 0), "sessions": sessions, "history": list(self._history)}

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot

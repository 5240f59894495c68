"""Session progress for the overview, at a bounded cost per refresh.

``cw-admin sessions`` reads the state of every job of every session: right
for a command, too much once a second under a sweep of a million points.
Here each session keeps a tally in the dashboard process: the ids read so far
from its job list, how many of them are done (final: a done job stays done
until the session is dropped), and the last seen state of each unfinished
one. A refresh reads at most ``budget`` job states in all: half for ids not
read yet, half (or all, once the list is read) for the unfinished ones, the
oldest first -- queues are FIFO, so those are the ones about to finish. So a
refresh never costs more, and the counts follow a sweep that finishes up to
about ``budget`` jobs a second; a larger or faster one is shown behind (the
bar lags; nothing is wrong). Counters per session kept by the Lua scripts
would make this exact at any size; they are not there yet.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from .. import job
from ..admin_sessions import COUNTED_AS
from ..keys import Keys

#: Sessions shown: the most recently active.
SHOWN = 20
#: Seconds of history an ETA is computed from.
RATE_WINDOW_S = 60.0


@dataclass
class Tally:
    """What the dashboard knows of one session's jobs."""

    read: int = 0  # ids read from the session's list so far
    done: int = 0  # of those, done (not kept individually)
    unfinished: OrderedDict[str, str] = field(default_factory=OrderedDict)  # id -> last seen counted-as
    finished_at: deque[tuple[float, int]] = field(default_factory=deque)  # (time, done + failed) samples

    def counts(self) -> dict[str, int]:
        counts = {"pending": 0, "running": 0, "done": self.done, "failed": 0}
        for counted in self.unfinished.values():
            counts[counted] += 1
        return counts

    def eta_s(self, total: int, now: float) -> float | None:
        """Seconds left at the rate of the last minute; None while nothing finished in it."""
        counts = self.counts()
        finished = counts["done"] + counts["failed"]
        self.finished_at.append((now, finished))
        while self.finished_at and self.finished_at[0][0] < now - RATE_WINDOW_S:
            self.finished_at.popleft()
        first_t, first_n = self.finished_at[0]
        if now - first_t < 1 or finished <= first_n:
            return None
        return max(0, total - finished) / ((finished - first_n) / (now - first_t))


class SessionTallies:
    """Tallies of the most recently active sessions; :meth:`refresh` reads at most ``budget`` job states."""

    def __init__(self, client: Any, keys: Keys, *, budget: int = 300) -> None:
        self.redis = client
        self.keys = keys
        self.budget = budget
        self._tallies: dict[str, Tally] = {}

    def refresh(self) -> list[dict[str, Any]]:
        """The overview's session rows: name, jobs, pending, running, done, failed, eta_s. Three round trips."""
        shown = [(job.text(n) or "", score) for n, score in
                 self.redis.zrange(self.keys.sessions, -SHOWN, -1, withscores=True)][::-1]
        self._tallies = {name: self._tallies.get(name) or Tally() for name, _ in shown}
        pipe = self.redis.pipeline(transaction=False)
        share = max(2, self.budget // max(1, len(shown)))
        for name, _ in shown:
            pipe.llen(self.keys.session_jobs(name))
            pipe.lrange(self.keys.session_jobs(name), self._tallies[name].read,
                        self._tallies[name].read + share // 2 - 1)
        replies = pipe.execute()
        checks: list[tuple[Tally, str]] = []
        totals = []
        for i, (name, _) in enumerate(shown):
            tally, total, new = self._tallies[name], int(replies[2 * i]), replies[2 * i + 1]
            totals.append(total)
            tally.read += len(new)
            checks += [(tally, job.text(j) or "") for j in new]
            checks += [(tally, j) for j in itertools.islice(tally.unfinished, max(0, share - len(new)))]
        for tally, job_id in checks:
            pipe.hmget(self.keys.job(job_id), job.STATE, job.PREFETCHED, job.SPEC)
        for (tally, job_id), (state, prefetched, spec) in zip(checks, pipe.execute()):
            counted = COUNTED_AS.get(job.state_of(state, spec) or "")
            if counted == "done" or counted is None:  # done, or gone (expired): never read again
                tally.unfinished.pop(job_id, None)
                tally.done += counted == "done"
            else:  # claimed ahead but not started counts as pending, as cw-admin sessions counts it
                tally.unfinished[job_id] = "pending" if counted == "running" and prefetched else counted
        now = time.monotonic()
        rows = []
        for (name, last_ms), total in zip(shown, totals):
            tally = self._tallies[name]
            rows.append({"name": name, "jobs": total, **tally.counts(), "eta_s": tally.eta_s(total, now),
                         "last_activity_ms": int(last_ms)})
        return rows

"""How many jobs a worker claims, writes ahead, gives back, and when it records: pure functions.

Every rule here is a function of measured numbers -- the running average of
job durations, how many jobs are held where -- and of the tunables in
:mod:`cwredis.config`, with no clock or I/O of its own, so a table-driven test
pins each one (``tests/unit/test_worker_pacing.py``). The supervisor measures;
these decide.

The two regimes, split at ``config.SLOW_JOB_S``:

* **short jobs** (the throughput case): claim several per child (enough for
  ``PREFETCH_WINDOW_S`` of work) and write a few ahead into each child's pipe,
  so no child waits for a Redis round trip between jobs; outcomes gather for
  up to ``RECORD_DELAY_S`` so one round trip carries many;
* **slow jobs** (the fan-out case): one job per child, plus one claimed just
  in time (``JIT_LEAD_S`` before a child's job should end), so idle workers
  elsewhere get the rest of the queue.
"""

from __future__ import annotations

from typing import Iterable

from .. import config

def average(previous_s: float, newest_s: float) -> float:
    """The running average of job durations after a job that took ``newest_s``."""
    return previous_s + config.JOB_TIME_AVERAGE_WEIGHT * (newest_s - previous_s)


def is_slow(avg_job_s: float) -> bool:
    return avg_job_s >= config.SLOW_JOB_S


def _per_window(avg_job_s: float) -> int:
    """Short jobs that fit in one prefetch window (a Redis round trip, with slack)."""
    return int(config.PREFETCH_WINDOW_S / max(avg_job_s, 1e-5))


def capacity(concurrency: int, avg_job_s: float, ending_soon: int) -> int:
    """Jobs to hold at once (running, written ahead, or ready): one per child, plus a prefetch.

    Short jobs: several per child. Slow jobs: one more for each child whose
    job should end within JIT_LEAD_S, claimed just in time -- a freed child
    starts at once, and no job waits long here while a worker elsewhere could
    run it.
    """
    if is_slow(avg_job_s):
        return concurrency + ending_soon
    return concurrency * max(2, min(config.MAX_PREFETCH, _per_window(avg_job_s)))


def ending_soon(started: Iterable[float], now: float, avg_job_s: float) -> int:
    """How many running jobs (by their start times) should end within JIT_LEAD_S, by the average."""
    due = now - max(0.0, avg_job_s - config.JIT_LEAD_S)
    return sum(1 for t in started if t <= due)


def hunger(capacity_jobs: int, held: int, stopping: bool) -> int:
    """How many more jobs to claim now."""
    return 0 if stopping else max(0, capacity_jobs - held)


def starting_now(idle_children: int, ready: int) -> int:
    """Of the jobs claimed now, how many go straight to an idle child (charged by the claim itself)."""
    return max(0, idle_children - ready)


def ahead(avg_job_s: float) -> int:
    """Jobs to write ahead to a busy child: enough short ones to cover a round trip, none for slow jobs."""
    if is_slow(avg_job_s):
        return 0
    return max(1, min(config.MAX_AHEAD, _per_window(avg_job_s)))


def stuck_after_s(avg_job_s: float) -> float:
    """How long a running job may hold up the jobs written ahead of it before they are asked back."""
    return max(config.STUCK_FACTOR * avg_job_s, config.STUCK_MIN_S)


def excess(ready: int, capacity_jobs: int, in_children: int, concurrency: int, avg_job_s: float) -> int:
    """Ready jobs to give back because jobs turned out slower than the prefetch assumed (0: keep all).

    A small surplus is kept (one job for slow jobs, one per child for short
    ones) so a noisy average does not churn jobs back and forth.
    """
    surplus = ready - max(0, capacity_jobs - in_children)
    slack = 1 if is_slow(avg_job_s) else concurrency
    return surplus if surplus >= slack else 0


def record_due_in(*, now: float, must_send: bool, hunger_jobs: int, capacity_jobs: int, starving: bool,
                  ready: int, concurrency: int, outcomes: int, starts: int, first_unsent: float) -> float:
    """Seconds until the next recording round trip is worth making; 0 means now.

    Now when a child is (or is about to be) left without work -- the latency
    case -- or something must go at once (``must_send``: a requeue, a
    reconciliation). Otherwise outcomes and claims gather, so one round trip
    carries many: until half the capacity can be claimed, MAX_RECORD_BATCH
    outcomes wait, or the oldest has waited RECORD_DELAY_S. A start marker
    alone is never urgent: it only counts an attempt, and the job's outcome
    soon carries it (complete.lua charges it).
    """
    if must_send:
        return 0.0
    if hunger_jobs and (starving or ready < concurrency or hunger_jobs >= capacity_jobs // 2):
        return 0.0
    if outcomes or starts:
        if (starving and outcomes) or outcomes >= config.MAX_RECORD_BATCH:
            return 0.0
        return first_unsent + config.RECORD_DELAY_S - now
    return config.WORKER_IDLE_TICK_S


def jit_wakeups(started: Iterable[float], now: float, avg_job_s: float) -> list[float]:
    """Slow jobs: the moments to wake and claim a child's next job just in time (future ones only)."""
    if not is_slow(avg_job_s):
        return []
    lead = max(0.0, avg_job_s - config.JIT_LEAD_S)
    return [t + lead for t in started if t + lead > now]


def sleep_s(deadlines: Iterable[float], now: float) -> float:
    """How long the main loop may sleep: until the first deadline, at most config.WORKER_IDLE_TICK_S."""
    first = min(deadlines, default=now + config.WORKER_IDLE_TICK_S)
    return max(0.0, min(config.WORKER_IDLE_TICK_S, first - now))

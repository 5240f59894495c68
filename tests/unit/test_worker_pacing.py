"""The worker's pacing rules, pinned by tables: pure functions of measured numbers, no clock, no I/O."""

from __future__ import annotations

import pytest

from cwredis import config
from cwredis.worker import pacing

SLOW = config.SLOW_JOB_S  # the border between the two regimes
SHORT = 0.001  # a 1 ms job: 5 fit in the 5 ms prefetch window


@pytest.mark.parametrize("concurrency, avg_job_s, ending_soon, expected", [
    (1, SLOW, 0, 1),            # slow jobs: one per child...
    (4, 1.0, 2, 6),             # ...plus one per child whose job ends within JIT_LEAD_S
    (1, SHORT, 0, 5),           # short: a prefetch window's worth per child
    (2, SHORT, 0, 10),
    (1, 0.004, 0, 2),           # at least two per child while short
    (1, 1e-9, 0, config.MAX_PREFETCH),  # and at most MAX_PREFETCH
    (3, 1e-9, 5, 3 * config.MAX_PREFETCH),  # ending_soon only counts for slow jobs
])
def test_capacity(concurrency, avg_job_s, ending_soon, expected):
    assert pacing.capacity(concurrency, avg_job_s, ending_soon) == expected


@pytest.mark.parametrize("started, now, avg_job_s, expected", [
    ([], 10.0, 1.0, 0),
    ([9.0], 10.0, 1.0, 1),      # started 1 s ago, 1 s average: ends within the lead
    ([9.5], 10.0, 1.0, 0),      # half-way: not yet
    ([9.0, 9.5, 8.0], 10.0, 1.0, 2),
    ([10.0], 10.0, 0.005, 1),   # shorter than the lead: due at once
])
def test_ending_soon(started, now, avg_job_s, expected):
    assert pacing.ending_soon(started, now, avg_job_s) == expected


@pytest.mark.parametrize("capacity, held, stopping, expected", [
    (5, 0, False, 5), (5, 3, False, 2), (5, 7, False, 0), (5, 0, True, 0),
])
def test_hunger(capacity, held, stopping, expected):
    assert pacing.hunger(capacity, held, stopping) == expected


@pytest.mark.parametrize("idle, ready, expected", [(2, 0, 2), (2, 1, 1), (2, 5, 0), (0, 0, 0)])
def test_starting_now(idle, ready, expected):
    assert pacing.starting_now(idle, ready) == expected


@pytest.mark.parametrize("avg_job_s, expected", [
    (SLOW, 0), (1.0, 0), (SHORT, 5), (0.004, 1), (1e-9, config.MAX_AHEAD),
])
def test_ahead(avg_job_s, expected):
    assert pacing.ahead(avg_job_s) == expected


@pytest.mark.parametrize("avg_job_s, expected", [
    (SHORT, max(config.STUCK_FACTOR * SHORT, config.STUCK_MIN_S)),
    (1e-6, config.STUCK_MIN_S),
    (1.0, config.STUCK_FACTOR * 1.0),
])
def test_stuck_after_s(avg_job_s, expected):
    assert pacing.stuck_after_s(avg_job_s) == pytest.approx(expected)


@pytest.mark.parametrize("ready, capacity, in_children, concurrency, avg_job_s, expected", [
    (10, 10, 0, 2, SHORT, 0),   # within capacity
    (10, 4, 2, 2, SHORT, 8),    # short jobs: a surplus of at least one per child goes back
    (3, 4, 2, 2, SHORT, 0),     # a surplus of 1 < 2 children: kept (no churn)
    (2, 2, 2, 2, 1.0, 2),       # slow jobs: any surplus goes back
    (1, 2, 2, 2, 1.0, 1),
    (0, 2, 5, 2, 1.0, 0),
])
def test_excess(ready, capacity, in_children, concurrency, avg_job_s, expected):
    assert pacing.excess(ready, capacity, in_children, concurrency, avg_job_s) == expected


def _due(**overrides):
    load = dict(now=100.0, must_send=False, hunger_jobs=0, capacity_jobs=10, starving=False, ready=4,
                concurrency=2, outcomes=0, starts=0, first_unsent=100.0)
    load.update(overrides)
    return pacing.record_due_in(**load)


@pytest.mark.parametrize("overrides, expected", [
    ({}, config.WORKER_IDLE_TICK_S),                                        # nothing to do
    ({"must_send": True}, 0.0),                                       # a requeue or reconciliation
    ({"hunger_jobs": 1, "starving": True}, 0.0),                      # a child waits for work
    ({"hunger_jobs": 1, "ready": 1}, 0.0),                            # fewer ready than children
    ({"hunger_jobs": 5}, 0.0),                                        # half the capacity to claim
    ({"hunger_jobs": 1, "outcomes": 1}, config.RECORD_DELAY_S),       # else outcomes gather...
    ({"outcomes": 1, "first_unsent": 99.999}, config.RECORD_DELAY_S - 0.001),
    ({"outcomes": config.MAX_RECORD_BATCH}, 0.0),                     # ...up to a full batch
    ({"outcomes": 1, "starving": True}, 0.0),                         # a dry child: record now (latency)
    ({"starts": 1, "starving": True}, config.RECORD_DELAY_S),        # a start marker alone is never urgent
])
def test_record_due_in(overrides, expected):
    assert _due(**overrides) == pytest.approx(expected)


@pytest.mark.parametrize("started, now, avg_job_s, expected", [
    ([1.0], 1.5, SHORT, []),                        # short jobs: no just-in-time claims
    ([1.0], 1.5, 1.0, [1.0 + 1.0 - config.JIT_LEAD_S]),
    ([0.0], 1.5, 1.0, []),                          # already past: claimed by the ending_soon capacity
])
def test_jit_wakeups(started, now, avg_job_s, expected):
    assert pacing.jit_wakeups(started, now, avg_job_s) == pytest.approx(expected)


@pytest.mark.parametrize("deadlines, now, expected", [
    ([], 5.0, config.WORKER_IDLE_TICK_S), ([5.1, 7.0], 5.0, 0.1), ([4.0], 5.0, 0.0),
    ([9.0], 5.0, config.WORKER_IDLE_TICK_S),
])
def test_sleep_s(deadlines, now, expected):
    assert pacing.sleep_s(deadlines, now) == pytest.approx(expected)


def test_average_moves_a_fifth_of_the_way():
    assert pacing.average(1.0, 2.0) == pytest.approx(1.2)
    assert pacing.average(SLOW, SHORT) < SLOW

"""The worker's main loop driven one step at a time: a real server, but no threads and no child processes.

``Worker.start()`` then ``Worker.step(wait=False)`` runs the loop's phases
once, without sleeping; the slots here start no process, and the test plays
the children: it reads what was sent to a slot and hands the supervisor the
events a real pool would (:class:`Ended`, :class:`Died`). So claims, prefetch,
charging, retries and reconciliation are checked against Redis with no
``time.sleep`` and no dependence on how busy the machine is.
"""

from __future__ import annotations

import cloudpickle
import pytest

from cwredis import ClientThread, job
from cwredis.keys import Keys
from cwredis.scripts import Scripts
from cwredis.worker import Worker
from cwredis.worker.pool import Ended
from cwredis.worker.slot import Running
from cwredis.worker import parking
from cwredis.worker.protocol import Ok, Recorded
from helpers import TEST_SECRET, Outcomes, square, wait_for
from stub_slot import StubSlot

KEYS = Keys()
SHORT_S = 0.001  # a measured average that makes the pacing prefetch (see test_worker_pacing)


@pytest.fixture
def worker(server):
    w = Worker(server.url, concurrency=1, slot=StubSlot, secret=TEST_SECRET.encode())
    assert w.start()
    yield w
    w.finish()


@pytest.fixture
def client(server):
    outcomes = Outcomes()
    t = ClientThread(outcomes.on_result, url=server.url, error_callback=outcomes.on_error, max_attempts=2)
    t.start()
    yield t, outcomes
    t.stop()  # not wait(): a failed test may leave jobs that no step will finish


def _fields(r, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(KEYS.job(job_id)).items() if k != b"a"}


def _finish(worker: Worker, running: Running, value: object) -> None:
    """Play the child: the job at the head of its slot returned ``value``.

    The supervisor measures how long the job took by the clock; the measured
    average is set back afterwards, so the pacing does not depend on how fast
    this machine ran the test.
    """
    slot = worker.pool.slots[0]
    average = worker.avg_job_s
    assert slot.take(running.id) is running
    worker.collector.handle(Ended(slot, running, Ok(running.id, cloudpickle.dumps(value), "")))
    worker.avg_job_s = average


def test_short_jobs_are_claimed_ahead_uncharged_and_charged_when_they_start(server, worker, client):
    t, outcomes = client
    r = server.client()
    ids = [t.submit(square, i) for i in range(7)]
    worker.avg_job_s = SHORT_S  # as if measured: the pacing holds 5 per child
    worker.step(wait=False)  # one round trip claims 5; the first starts now, 4 are written ahead
    slot = worker.pool.slots[0]
    assert [run.job_id for run in slot.runs] == ids[:5]
    assert [job.text(i) for i in r.lrange(KEYS.queue("default"), 0, -1)] == ids[:4:-1]  # 2 left, oldest right
    assert _fields(r, ids[0])["n"] == "1" and "pf" not in _fields(r, ids[0])
    for ahead in ids[1:5]:
        fields = _fields(r, ahead)
        assert fields["s"] == "running" and fields.get("pf") == "1" and "n" not in fields, fields
    _finish(worker, slot.sent[0], 0)
    worker.step()  # the outcome, the start of the next job and a claim: one round trip
    assert _fields(r, ids[0])["s"] == "done"
    assert _fields(r, ids[1])["n"] == "1" and "pf" not in _fields(r, ids[1])  # it heads the child now
    # Refilled to the capacity of 5: one more claimed, the last still queued.
    assert [job.text(i) for i in r.lrange(KEYS.queue("default"), 0, -1)] == [ids[6]]
    assert [running.id for running in slot.sent] == ids[1:6]
    while worker.pool.slots[0].sent:
        _finish(worker, slot.sent[0], ids.index(slot.sent[0].id) ** 2)
        worker.step()  # sleeps at most until the outcomes are due (RECORD_DELAY_S)
    wait_for(lambda: outcomes.count() == 7, timeout=10, message="every callback")
    outcomes.assert_exactly_once({j: i * i for i, j in enumerate(ids)})
    assert all(_fields(r, j)["n"] == "1" for j in ids if r.exists(KEYS.job(j)))  # each charged once


def test_a_job_whose_process_dies_is_retried_then_fails_lost(server, worker, client):
    t, outcomes = client
    r = server.client()
    job_id = t.submit(square, 3)  # max_attempts=2
    for attempt in (1, 2):
        worker.step(wait=False)
        slot = worker.pool.slots[0]
        assert slot.job is not None and slot.job.id == job_id, f"attempt {attempt} did not start"
        assert _fields(r, job_id)["n"] == str(attempt)
        worker.collector.handle(worker.pool.died(slot))
        worker.step(wait=False)  # records the requeue (or the failure)
    wait_for(lambda: outcomes.count() == 1, timeout=10, message="the failure")
    assert [e.reason for e in outcomes.errors[job_id]] == ["lost"]
    assert _fields(r, job_id)["s"] == "failed"


def test_a_claim_that_reached_the_server_behind_the_workers_back_is_given_back(server, worker, client):
    t, outcomes = client
    r = server.client()
    ids = [t.submit(square, i) for i in range(3)]
    # A claim sent earlier, given up on after a timeout, arriving now: its jobs are running for us.
    Scripts(r, KEYS).claim(r, worker_id=worker.worker_id, queues=["default"], lease_ms=30_000, max_count=3,
                           start_count=3)
    assert all(_fields(r, j)["s"] == "running" for j in ids)
    worker.check_strays()  # what the lease thread does every third of a lease: one look may see a
    assert not worker.intake.needs_reconcile  # hand-off on its way, so a stray is one seen twice
    worker.check_strays()
    worker.step(wait=False)  # reconciles (refunding them), then claims afresh
    slot = worker.pool.slots[0]
    assert slot.job is not None and slot.job.id == ids[0]
    assert _fields(r, ids[0])["n"] == "1"  # refunded once, charged once: not twice
    assert all(job.state_of(_fields(r, j).get("s"), _fields(r, j).get("p")) == "pending" for j in ids[1:])
    while slot.sent or r.llen(KEYS.queue("default")):
        if slot.sent:
            _finish(worker, slot.sent[0], ids.index(slot.sent[0].id) ** 2)
        worker.step()
    wait_for(lambda: outcomes.count() == 3, timeout=10, message="every callback")
    outcomes.assert_exactly_once({j: i * i for i, j in enumerate(ids)})


def test_a_graceful_stop_gives_back_what_was_claimed_ahead_refunded(server, worker, client):
    t, outcomes = client
    r = server.client()
    ids = [t.submit(square, i) for i in range(4)]
    worker.avg_job_s = SHORT_S
    worker.step(wait=False)
    slot = worker.pool.slots[0]
    assert len(slot.sent) == 4
    worker._stop.on_signal()  # SIGTERM
    _finish(worker, slot.sent[0], 0)
    while worker.step():
        if slot.sent:
            _finish(worker, slot.sent[0], ids.index(slot.sent[0].id) ** 2)
    wait_for(lambda: outcomes.count() == 4, timeout=10, message="every callback")
    outcomes.assert_exactly_once({j: i * i for i, j in enumerate(ids)})
    assert r.llen(KEYS.inflight(worker.worker_id)) == 0


def test_nothing_is_written_ahead_of_a_job_that_parks_its_child(server, worker, client):
    """A job dispatched when the queues were empty (``repark``) has its child record it and then park on
    its own inbox, with a blocking read out on the child's one connection: a job written behind it would
    reach a child that may not use that connection. So the jobs claimed meanwhile wait in ``ready``, and
    go to the slot -- a few of them ahead -- once that job has ended."""
    t, outcomes = client
    first = t.submit(square, 1)
    worker.step(wait=False)
    slot = worker.pool.slots[0]
    (head,) = slot.sent
    assert head.id == first
    head.repark = True  # as dispatch sets it when the queues were empty (or a hand-off took our last room)
    ids = [t.submit(square, i) for i in range(2, 5)]
    worker.avg_job_s = SHORT_S  # the pacing would write up to 4 ahead
    worker.step(wait=False)  # claims them
    assert [run.job_id for run in slot.runs] == [first]
    assert [running.id for running in worker.pool.ready] == ids
    _finish(worker, head, 1)
    worker.step(wait=False)
    assert [run.job_id for run in slot.runs] == [first, *ids]  # the next heads the slot, the rest ahead


def test_a_parked_job_process_that_never_answers_its_call_back_is_replaced(server, worker, client, monkeypatch):
    """A parked job process answers being called back at once (its blocking read returns when its "u" is
    pushed). One that does not within ANSWER_WITHIN_S is stuck -- perhaps with a hand-off it read and
    lost -- so it is replaced, and the reconciliation that follows gives back what our in-flight list holds
    and nobody runs: such a job runs (once), instead of waiting in the list of a live worker for ever."""
    t, outcomes = client
    r = server.client()
    first = t.submit(square, 1)
    worker.step(wait=False)
    slot = worker.pool.slots[0]
    (head,) = slot.sent
    assert slot.take(first) is head
    # Its process recorded it and parked on its own inbox (park.lua, child_parking).
    worker.collector.handle(Ended(slot, head, Recorded(first, True, 1, parked=True)))
    assert worker._parking.holds(slot)
    # A job handed to it, which it read and lost: in our in-flight list, held by nobody.
    lost = t.submit(square, 2)
    Scripts(r, KEYS).claim(r, worker_id=worker.worker_id, queues=["default"], lease_ms=30_000, max_count=1,
                           start_count=1)
    assert _fields(r, lost)["s"] == "running"
    killed: list[int] = []
    monkeypatch.setattr(slot, "kill", lambda: killed.append(slot.index) or -9)
    monkeypatch.setattr(parking, "ANSWER_WITHIN_S", 0.0)  # (30 s) -- it has not answered by the next look
    with worker._lock:
        worker._parking.want_all()  # called back, as for a reconciliation or a stop
    worker.step(wait=False)  # sends the "u", to which it never answers; then finds it silent
    assert killed == [0] and not worker._parking.holds(slot)
    # (The Recorded above was ours: nothing reached Redis, so the reconciliation gives ``first`` back too.)
    values = {first: 1, lost: 4}
    for _ in range(100):  # each step sleeps at most until the outcomes are due
        if outcomes.count() == 2:
            break
        if slot.sent:
            _finish(worker, slot.sent[0], values[slot.sent[0].id])
        worker.step()
    outcomes.assert_exactly_once(values)

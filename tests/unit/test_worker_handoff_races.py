"""Hand-offs racing reconciliation: a job handed to a parked worker must run at once, and once.

submit.lua hands a job to a parked worker by putting it in the worker's
in-flight list and its inbox in one step; the fetcher thread takes it a moment
later (``BLMPOP``, outside the claim lock). Meanwhile the lease thread's stray
check and the loop's reconciliation compare that in-flight list with what the
worker holds. Each test here forces one interleaving, with a real server, the
real Intake and Link, and the fetcher thread gated at its inbox read; the
"children" are the test (slots that start no process). The worker's loop and
lease thread do not run: the test plays their part, so nothing else rescues a
job the interleaving strands -- today's code would leave it waiting.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

import pytest

from cwredis import ClientThread, config
from cwredis.keys import Keys
from cwredis.scripts import Scripts
from cwredis.worker import Worker
from cwredis.worker.link import Handed
from cwredis.worker.protocol import Run
from cwredis.worker.stop import Step
from helpers import TEST_SECRET, Outcomes, square, wait_for
from stub_slot import StubSlot

KEYS = Keys()
GATE_S = 10  # how long a gated step waits for the test (a bound, never reached when all goes well)


class Gate:
    """Holds the fetcher at its inbox read: ``before`` the blocking read is sent, or ``after`` it
    brought a hand-off (and before the fetcher takes it); the test then opens it."""

    def __init__(self, worker: Worker, *, after: bool) -> None:
        self.reached = threading.Event()
        self.open = threading.Event()
        real = worker._link.read_inbox

        def read_inbox(block_s: float, count: int) -> Handed | None:
            if not after and not self.reached.is_set():
                self._hold()
            handed = real(block_s, count)
            if after and handed is not None and handed.claimed and not self.reached.is_set():
                self._hold()
            return handed

        worker._link.read_inbox = read_inbox  # type: ignore[method-assign]

    def _hold(self) -> None:
        self.reached.set()
        assert self.open.wait(GATE_S), "the test never opened the gate"


@pytest.fixture
def worker(server) -> Iterator[Worker]:
    w = Worker(server.url, concurrency=1, slot=StubSlot, secret=TEST_SECRET.encode())
    assert w.start()
    yield w
    w._stop.advance(Step.GRACEFUL)
    server.client().rpush(KEYS.inbox(w.worker_id), "wake")  # a fetcher blocked on its inbox returns now
    with w._lock:
        w._lock.notify_all()
    w.finish()  # closes the inbox connection: a fetcher still blocked on it returns


@pytest.fixture
def client(server) -> Iterator[tuple[ClientThread, Outcomes]]:
    outcomes = Outcomes()
    t = ClientThread(outcomes.on_result, url=server.url, error_callback=outcomes.on_error)
    t.start()
    yield t, outcomes
    t.stop()


def _start_fetcher(worker: Worker) -> None:
    """The loop's first round trip claims, finds nothing and parks us; then the fetcher waits on the inbox."""
    assert worker.recorder.record()
    assert worker.intake.queues_empty and worker.intake.room == 1
    threading.Thread(target=worker.intake.run, name="cw-fetcher", daemon=True).start()


def _runs(worker: Worker) -> list[Run]:
    slot = worker.pool.slots[0]
    assert isinstance(slot, StubSlot)
    return slot.runs


def _fields(r: Any, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(KEYS.job(job_id)).items() if k != b"a"}


def _parked(r: Any, worker: Worker) -> bool:
    return bool(r.exists(KEYS.parked(worker.worker_id)))


def _held_hand_off(server, worker: Worker, client) -> tuple[Any, Gate, str]:
    """Park the worker, submit a job: it is handed over and read, and held at the gate before the fetcher
    takes it. Returns the server's client, the gate and the job id."""
    r = server.client()
    gate = Gate(worker, after=True)
    _start_fetcher(worker)
    wait_for(lambda: _parked(r, worker), timeout=10, message="the worker did not park")
    t, _ = client
    job_id = t.submit(square, 7)
    assert gate.reached.wait(GATE_S)  # read, not yet taken
    return r, gate, job_id


def test_a_job_given_back_while_the_fetcher_waits_on_its_inbox_is_claimed_at_once(server, worker, client,
                                                                                  monkeypatch):
    """The stray check finds a hand-off not yet read, and the reconciliation gives it back (unparking
    us) before the fetcher's blocking read reaches the server. No other worker is parked, so nobody
    is woken for the job: without a wake of its own, the fetcher waits out its blocking read (here
    made longer than the test's bound) while the job waits in the queue."""
    # Longer than the test's bound: the fetcher reads BLOCK_TIMEOUT_S as it starts, and its inbox
    # connection (opened at its first read) takes the pool's socket timeout, which must not cut it short.
    monkeypatch.setattr(config, "BLOCK_TIMEOUT_S", 60.0)
    worker._link._redis.connection_pool.connection_kwargs["socket_timeout"] = 70.0
    r = server.client()
    gate = Gate(worker, after=False)
    _start_fetcher(worker)
    assert gate.reached.wait(GATE_S)  # parked, about to wait on the inbox
    assert _parked(r, worker)
    t, outcomes = client
    job_id = t.submit(square, 7)
    assert r.lrange(KEYS.inflight(worker.worker_id), 0, -1) == [job_id.encode()]  # handed to us
    assert worker.intake.reconcile(worker.recorder.owned_ids)  # gives it back: not held yet
    assert r.lrange(KEYS.queue("default"), 0, -1) == [job_id.encode()]
    gate.open.set()
    wait_for(lambda: _runs(worker), timeout=10, message="the job given back was not claimed")
    assert [run.job_id for run in _runs(worker)] == [job_id]
    fields = _fields(r, job_id)
    assert fields["s"] == "running" and fields["w"] == worker.worker_id
    assert fields["n"] == "1" and fields["k"] == "2"  # the hand-off's charge refunded, the claim's kept


def test_a_hand_off_on_its_way_is_not_taken_for_a_stray(server, worker, client):
    """The fetcher has read a hand-off and not yet taken it when the lease thread looks for strays:
    the job is in our in-flight list and not held. That is no stray; giving it back would requeue
    a job about to start (and unpark us). It runs as handed: one attempt, its first token."""
    r, gate, job_id = _held_hand_off(server, worker, client)
    assert worker.pool.owned_ids() == [] and worker.intake.epoch == 0
    worker.check_strays()  # the lease thread's look
    assert not worker.intake.needs_reconcile, "a hand-off on its way was taken for a stray"
    gate.open.set()
    wait_for(lambda: _runs(worker), timeout=10, message="the handed job did not start")
    worker.check_strays()  # the next look: held now
    assert not worker.intake.needs_reconcile
    assert [run.job_id for run in _runs(worker)] == [job_id]
    fields = _fields(r, job_id)
    assert fields["s"] == "running" and fields["n"] == "1" and fields["k"] == "1"


def test_a_job_left_unheld_at_two_looks_is_a_stray(server, worker):
    """A job in our in-flight list that we never take (a claim that reached the server after we
    gave up on it) is found at the second look, and the reconciliation gives it back."""
    r = server.client()
    Scripts(r, KEYS).load()
    r.hset(KEYS.job("late"), mapping={"s": "running", "w": worker.worker_id, "p": "nospec", "n": 1, "k": 1})
    r.lpush(KEYS.inflight(worker.worker_id), "late")
    worker.check_strays()
    assert not worker.intake.needs_reconcile  # one look: it may be on its way
    worker.check_strays()
    assert worker.intake.needs_reconcile


@pytest.mark.parametrize("repark", ["loop's claim", "child's park"])
def test_a_hand_off_read_across_a_reconciliation_that_left_it_is_kept(server, worker, client, repark):
    """A reconciliation runs while the fetcher waits on its inbox (after an outage, say) and unparks
    us; we are parked again at once -- by the claim that follows the reconciliation in the loop's
    round trip, or by a child recording its job's outcome (park.lua) -- and a job is handed to us
    and read. The read began before the reconciliation, which never saw this job: it is still ours
    and must run as handed. (Dropped as stale, it waited in our in-flight list for the loop's next
    reconciliation, which gave it back -- unparking us while the fetcher, blocked in a read begun
    before that reconciliation in turn, waited for the next hand-off: seen in the latency benchmark
    as every job given back and run half a second late, for ever.)"""
    r = server.client()
    scripts = Scripts(r, KEYS)
    scripts.load()
    gate = Gate(worker, after=False)
    _start_fetcher(worker)
    assert gate.reached.wait(GATE_S)  # the epoch of this read is taken
    if repark == "loop's claim":
        worker.intake.needs_reconcile = True  # what an outage's end (Worker.link_ok) asks for
        assert worker.recorder.record()  # reconciles (giving back nothing), then claims: parked again
        assert worker.intake.epoch == 1
    else:
        assert worker.intake.reconcile(worker.recorder.owned_ids)  # gives back nothing, unparks us
        assert not _parked(r, worker)
        assert scripts.park(r, worker_id=worker.worker_id, queues=["default"])[0] == 1
    assert _parked(r, worker)
    t, outcomes = client
    job_id = t.submit(square, 7)
    assert r.lrange(KEYS.inflight(worker.worker_id), 0, -1) == [job_id.encode()]  # handed to us
    gate.open.set()
    wait_for(lambda: _runs(worker), timeout=10, message="the handed job was dropped")
    assert [run.job_id for run in _runs(worker)] == [job_id]
    fields = _fields(r, job_id)
    assert fields["s"] == "running" and fields["n"] == "1" and fields["k"] == "1"  # as handed: no give-back


def test_a_hand_off_read_across_a_lapse_of_our_lease_is_confirmed_though_a_renewal_came_since(server, worker,
                                                                                              client):
    """A worker frozen in its blocking read (SIGSTOP): the server hands it a job, its lease runs out, the
    coordinator requeues the job, and on waking its lease thread renews (re-registering it) before the
    fetcher takes the hand-off. The renewal is recent, but it found the lease had lapsed: the hand-off is
    confirmed, found requeued, and not run."""
    r, gate, job_id = _held_hand_off(server, worker, client)  # the worker is "frozen" here
    later_ms = int(r.time()[0] * 1000) + 10 * worker._lease.lease_ms
    recovered = Scripts(r, KEYS).requeue_expired(r, worker_id=worker.worker_id, forget_after_ms=0,
                                                 result_ttl_ms=60_000, lost_body=b"", lost_error="lost",
                                                 lost_traceback="", now_ms=later_ms)
    assert recovered.requeued == 1 and r.lrange(KEYS.queue("default"), 0, -1) == [job_id.encode()]
    worker._lease.renew()  # "thawed": the lease thread first; the lease had lapsed
    assert worker._lease.lapses == 1 and not worker._lease.may_have_expired()
    gate.open.set()
    wait_for(lambda: worker.intake.room == 0, timeout=10, message="the fetcher did not take the hand-off")
    assert worker.recorder.record()  # the loop's next round trip: it claims what is queued
    wait_for(lambda: _runs(worker), timeout=10, message="the job did not run at all")
    fields = _fields(r, job_id)
    assert (fields["s"], fields["k"]) == ("running", "2"), "the requeued hand-off ran on its stale token"
    assert [run.job_id for run in _runs(worker)] == [job_id]  # once: claimed afresh from the queue
    head = worker.pool.slots[0].job
    assert head is not None and head.claimed.token == "2" and not worker.pool.ready

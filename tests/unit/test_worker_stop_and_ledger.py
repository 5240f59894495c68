"""The worker's stop request and its ledger of writes owed to Redis."""

from __future__ import annotations

import select
import threading
import time

from cwredis.script_types import Completion, Requeue
from cwredis.worker.ledger import Ledger, Start
from cwredis.worker.stop import Step, StopRequest


def test_signals_go_graceful_then_hard_and_never_back():
    stop = StopRequest()
    assert not stop.graceful
    stop.on_signal()
    assert stop.graceful and not stop.hard
    stop.on_signal()
    assert stop.hard and not stop.finished
    stop.advance(Step.GRACEFUL)
    assert stop.hard
    stop.advance(Step.FINISHED)
    assert stop.finished


def test_a_wait_returns_as_soon_as_its_step_is_reached():
    stop = StopRequest()
    threading.Timer(0.05, stop.on_signal).start()
    started = time.monotonic()
    assert stop.wait(Step.GRACEFUL, 30.0)
    assert time.monotonic() - started < 5
    assert not stop.wait(Step.FINISHED, 0.01)  # a later step: times out


def test_every_step_wakes_the_main_loops_poll():
    stop = StopRequest()
    poller = select.poll()
    poller.register(stop.wake_fd, select.POLLIN)
    assert poller.poll(0) == []
    stop.on_signal()
    assert poller.poll(0) != []
    stop.drain()
    assert poller.poll(0) == []


def _outcome(job_id: str) -> Completion:
    return Completion(job_id, "1", "c", "ok", b"body")


def test_a_failed_round_trip_puts_everything_back_in_order():
    ledger = Ledger(threading.Condition())
    ledger.add_start(Start("a", "1"))
    ledger.add_outcome(_outcome("b"))
    ledger.add_requeue(Requeue("c", "1", "q", "retry"))
    batch = ledger.take()
    assert ledger.outcomes == 0 and bool(ledger)  # on its way: not all recorded
    assert sorted(ledger.owned_ids()) == ["b", "c"]
    ledger.add_outcome(_outcome("d"))
    ledger.restore(batch)
    again = ledger.take()
    assert [s.id for s in again.starts] == ["a"]
    assert [c.id for c in again.outcomes] == ["b", "d"] and [r.id for r in again.requeues] == ["c"]
    ledger.sent()
    assert not ledger


def test_a_job_that_finished_is_charged_by_its_outcome_not_a_start_marker():
    ledger = Ledger(threading.Condition())
    ledger.add_start(Start("a", "1"))
    ledger.add_start(Start("b", "1"))
    ledger.add_outcome(_outcome("a"))
    batch = ledger.take()
    assert [s.id for s in batch.starts] == ["b"]
    ledger.forget_start("b")  # nothing left to forget: harmless
    ledger.add_start(Start("c", "1"))
    ledger.forget_start("c")  # recorded by the child with its charge
    assert ledger.take().starts == []

"""The worker's pacing of live output: a job's new output is written at most every 0.5 s, in the same round trip
as progress reports, and forgotten when its attempt ends (no sockets, no processes; the clock is moved by hand)."""

from __future__ import annotations

import pytest

from cwredis import config
from cwredis.job import Spec
from cwredis.script_types import Claimed
from cwredis.worker import attempts as attempts_module
from cwredis.worker.attempts import Attempts
from cwredis.worker.pool import Printed, Reported
from cwredis.worker.slot import Running


class FakeLedger:
    def forget_start(self, job_id: str) -> None:
        pass


class FakeLink:
    def __init__(self) -> None:
        self.sent: list[list[tuple]] = []

    def send_progress(self, reports) -> None:
        self.sent.append(list(reports))


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(attempts_module.time, "monotonic", lambda: now[0])
    return now


def running(job_id: str) -> Running:
    return Running(Claimed(job_id, "1", "spec", "fn", b"", 1, 0), Spec("c1", "default", "env", None, 3))


def test_output_is_written_at_most_every_half_second_with_the_progress(clock):
    link = FakeLink()
    attempts = Attempts(ledger=FakeLedger(), link=link, signer=None)  # type: ignore[arg-type]
    a = running("a")
    attempts.printed(Printed(a, "one\n"))
    attempts.send_progress_if_due()
    assert link.sent == [[("a", "1", "c1", None, None, "one\n")]]
    attempts.printed(Printed(a, "two\n"))
    attempts.report(Reported(a, 0.5, "half"))
    clock[0] += 0.3  # progress is due (0.2 s), output not yet (0.5 s)
    attempts.send_progress_if_due()
    assert link.sent[-1] == [("a", "1", "c1", 0.5, "half", None)]
    clock[0] += config.LIVE_OUTPUT_INTERVAL_S
    attempts.send_progress_if_due()
    assert link.sent[-1] == [("a", "1", "c1", None, None, "one\ntwo\n")]  # the whole tail
    attempts.send_progress_if_due()
    assert len(link.sent) == 3  # nothing new: nothing sent


def test_the_tail_is_bounded_and_forgotten_when_the_attempt_ends(clock):
    link = FakeLink()
    attempts = Attempts(ledger=FakeLedger(), link=link, signer=None)  # type: ignore[arg-type]
    a = running("a")
    attempts.printed(Printed(a, "x" * (config.OUTPUT_TAIL_BYTES + 10)))
    attempts.send_progress_if_due()
    assert len(link.sent[-1][0][5]) == config.OUTPUT_TAIL_BYTES
    attempts.printed(Printed(a, "late\n"))
    attempts.recorded(a)  # the child recorded the outcome itself
    clock[0] += 1
    attempts.send_progress_if_due()
    assert len(link.sent) == 1

"""A worker's pool of job processes: deaths are seen through the process, not only its pipe."""

from __future__ import annotations

import os
import select
import signal
import threading

import pytest

from cwredis.worker.pool import Died, Pool
from cwredis.worker.protocol import Setup

SETUP = Setup("redis://127.0.0.1:1/0", None, "cwtest", "w1", ["default"])


@pytest.fixture
def pool():
    p = Pool(1, SETUP, threading.Condition())
    yield p
    p.shutdown()


def test_a_child_that_exits_makes_its_pidfd_readable_and_is_replaced(pool):
    slot = pool.slots[0]
    old_pid = slot.proc.pid
    assert slot.pidfd is not None
    os.kill(old_pid, signal.SIGKILL)
    poller = select.poll()
    poller.register(slot.pidfd, select.POLLIN)
    assert poller.poll(10_000), "the pidfd did not become readable"
    died = pool.died(slot)
    assert isinstance(died, Died) and died.running is None and died.exit_code == -signal.SIGKILL
    assert slot.proc.pid != old_pid and slot.proc.poll() is None  # a fresh child in its place


def test_without_pidfds_an_exited_child_is_found_by_polling(monkeypatch):
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")  # ENOSYS: a kernel before Linux 5.3

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    pool = Pool(1, SETUP, threading.Condition())
    try:
        slot = pool.slots[0]
        assert slot.pidfd is None and pool.exited() == []
        os.kill(slot.proc.pid, signal.SIGKILL)
        slot.proc.wait(10)
        assert pool.exited() == [slot]
    finally:
        pool.shutdown()

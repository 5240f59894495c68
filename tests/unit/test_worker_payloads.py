"""How a worker hands a job's payload to its child: large arguments raw after the Run, large results recorded
by the child (never on a Sentinel URL), and the pipe helpers that carry them."""

from __future__ import annotations

import os
import threading

import pytest

from cwredis.job import Spec
from cwredis.script_types import Claimed

from cwredis import config
from cwredis.worker.pool import Pool
from cwredis.worker.slot import SEPARATE_ARGS_BYTES, Running, Slot
from cwredis.worker.protocol import MessagePipe, Ok, Run, Setup, read_exactly, write_all

SETUP = Setup("redis://127.0.0.1:1/0", None, "cwtest", "w1", ["default"])
SPEC = Spec("c1", "default", "env1", None, 3)


class RecordingSlot(Slot):
    """A slot with no process: it keeps what the worker would write to its child."""

    def spawn(self) -> None:
        self.sent_messages: list[object] = []
        self.functions, self.env = set(), None

    def _send(self, message) -> None:
        self.sent_messages.append(message)

    def _write(self, data) -> None:
        self.sent_messages.append(bytes(data))


def running(args: bytes, *, direct: bool = False, record_large: bool = True) -> Running:
    job = Running(Claimed("j1", "7", "spec1", "fn1", b"", 1, 0), SPEC, record_large=record_large)
    job.args, job.function, job.env, job.direct = memoryview(b"S" + args)[1:], b"FN", b"ENV", direct
    return job


def test_large_arguments_follow_their_run_raw_and_small_ones_travel_inside_it():
    slot = RecordingSlot(0, SETUP)
    big = bytes(range(256)) * (SEPARATE_ARGS_BYTES // 256)
    slot.start(running(big))
    run, raw = slot.sent_messages
    assert isinstance(run, Run) and run.args == b"" and run.args_follow == len(big) and raw == big
    slot.start(running(b"small"))
    (run,) = slot.sent_messages[2:]
    assert run.args == b"small" and type(run.args) is bytes and run.args_follow == 0


def test_a_large_result_is_recorded_by_the_child_unless_outcomes_wait_for_a_replica():
    slot = RecordingSlot(0, SETUP)
    slot.start(running(b"a"))  # fn1 never returned a large result here: a small job's Run carries no Direct
    assert slot.sent_messages.pop().direct is None
    slot.large_results.add("fn1")  # what Pool.read notes once fn1's result came back large through the pipe
    slot.start(running(b"a", direct=True))
    slot.start(running(b"a"))
    slot.start(running(b"a", record_large=False))  # a Sentinel URL: the worker records (and WAITs)
    slot.start(running(b"a", direct=True, record_large=False))  # asked directly: main's rule decides
    directs = [m.direct for m in slot.sent_messages]
    assert directs[0].only_large is False and directs[0].token == "7" and directs[0].client == "c1"
    assert directs[1].only_large is True
    assert directs[2] is None
    assert directs[3].only_large is False


def test_write_all_and_read_exactly_carry_a_megabyte_through_a_pipe():
    r, w = os.pipe()
    data = os.urandom(1 << 20)
    writer = threading.Thread(target=write_all, args=(w, memoryview(data)))
    try:
        writer.start()
        assert read_exactly(r, len(data)) == data
        writer.join(10)
        os.close(w)
        w = -1
        with pytest.raises(EOFError):  # the worker died half-way: the child sees it, never a short buffer
            read_exactly(r, 1)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_large_result_through_the_pipe_teaches_the_slot_its_function():
    pool = Pool(1, SETUP, threading.Condition(), slot=RecordingSlot)
    slot = pool.slots[0]
    r, w = os.pipe()
    reader, writer = MessagePipe(r, writable=False), MessagePipe(w, readable=False)
    slot.out = reader
    replies = [Ok("small", b"r" * 10, ""), Ok("big", b"r" * config.DIRECT_RECORD_BYTES, "")]
    for reply in replies:
        slot.sent.append(Running(Claimed(reply.job_id, "7", "spec1", f"fn-{reply.job_id}", b"", 1, 0), SPEC))
    child = threading.Thread(target=lambda: [writer.send(reply) for reply in replies])  # the big one fills the pipe
    child.start()
    events: list = []
    while len(events) < 2 and reader.poll(10):
        events += pool.read(slot)
    child.join(10)
    assert [e.running.id for e in events] == ["small", "big"]
    assert slot.large_results == {"fn-big"}

"""The job process's mailbox (cwredis.worker.mailbox.Mailbox): no job is left unseen in it.

The watcher thread answers the worker's "unsend" requests and, to find the
job asked for, reads every job waiting in the pipe into the mailbox's queue.
If it does so after the main thread found the queue empty and before the main
thread waits on the pipe -- as at a job process's start, when the worker asks
back a job written ahead behind the first one -- the main thread must still
wake: the job is no longer in the pipe it waits on. (Seen in a benchmark: the
first job of a fresh worker never ran, and a map waited for it for good.)
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from cwredis.worker.mailbox import Mailbox
from cwredis.worker.protocol import MessagePipe, Run, Unsend, Unsent


def _pipe() -> tuple[MessagePipe, MessagePipe]:
    """A one-way pipe of worker/child messages, read end first."""
    r, w = os.pipe()
    return MessagePipe(r, writable=False), MessagePipe(w, readable=False)


def _run(job_id: str) -> Run:
    return Run(job_id, "fn", b"function", b"args", "env", b"{}", False, None)


class _JobComesAndWatcherReadsIt:
    """Stands in for the main thread's poll object. On the first wait -- the main thread has found no
    job queued -- the worker writes a job, and the watcher, answering an unsend of another job, reads
    it out of the pipe; only then does the main thread wait on the pipe: the interleaving that lost a job."""

    def __init__(self, real: Any, inbox: Any, control: Any, replies: queue.Queue) -> None:
        self._real, self._inbox, self._control, self._replies = real, inbox, control, replies
        self._first = True

    def poll(self, *args: Any) -> Any:
        if self._first:
            self._first = False
            self._inbox.send(_run("first"))
            self._control.send(Unsend("not-there"))
            assert self._replies.get(timeout=10) == Unsent("not-there", False)
        return self._real.poll(*args)


def test_a_job_the_watcher_read_wakes_the_main_thread() -> None:
    inbox_r, inbox_w = _pipe()
    control_r, control_w = _pipe()
    replies: queue.Queue = queue.Queue()
    mailbox = Mailbox(inbox_r, control_r, replies.put)
    mailbox._waiter = _JobComesAndWatcherReadsIt(mailbox._waiter, inbox_w, control_w,  # type: ignore[assignment]
                                                 replies)
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(mailbox.next()), daemon=True)
    reader.start()
    try:
        reader.join(10)
        assert got == [_run("first")], "the job the watcher read was not returned"
    finally:
        inbox_w.close()  # a main thread still waiting (the failure) sees the pipe close and returns
        control_w.close()
        reader.join(5)


def test_an_unsent_job_is_taken_out_and_the_rest_come_in_order() -> None:
    inbox_r, inbox_w = _pipe()
    control_r, control_w = _pipe()
    replies: queue.Queue = queue.Queue()
    mailbox = Mailbox(inbox_r, control_r, replies.put)
    try:
        for job_id in ("a", "b", "c"):
            inbox_w.send(_run(job_id))
        control_w.send(Unsend("b"))
        assert replies.get(timeout=10) == Unsent("b", True)
        assert [mailbox.next(), mailbox.next()] == [_run("a"), _run("c")]
        inbox_w.close()
        assert mailbox.next() is None  # the worker closed the pipe
    finally:
        control_w.close()

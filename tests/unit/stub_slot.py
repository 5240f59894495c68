"""A job-process slot whose "child" is the test, for driving a real Worker's loop without processes."""

from __future__ import annotations

from cwredis.worker.protocol import Run, Setup
from cwredis.worker.slot import Slot


class StubSlot(Slot):
    """What would be written to the process is kept in ``runs``; it never dies, and a kill reads as -9."""

    def spawn(self) -> None:
        self.runs: list[Run] = []
        self.functions = set()
        self.env = None

    @property
    def alive(self) -> bool:
        return True

    def _send(self, message: Setup | Run) -> None:
        if isinstance(message, Run):
            self.runs.append(message)

    def ask_back(self, job_id: str) -> None:
        pass

    def kill(self) -> int | None:
        return -9

    def shutdown(self, grace_s: float = 0.0) -> None:
        pass

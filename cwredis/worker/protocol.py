"""What a worker and its job processes say to each other, as named types.

A child (``python -m cwredis.worker.child``) has three pipes, each a
:class:`MessagePipe` (each message one pickle of its type's number and fields)::

    job pipe      worker -> child   Setup (first), then Run per job
    control pipe  worker -> child   Unsend
    out pipe      child -> worker   Progress, Output, Unsent, Resend, CannotOpen, Stale, then per job one of
                                    Ok / Err / Recorded;
                                    Took / Unparked end a parking (cwredis.worker.parking)

Every message is a NamedTuple: read by name, never by index. On the wire it
is a plain tuple, ``(number of its type, fields)``: a NamedTuple pickled as
itself costs its class reference and a Python-level ``__reduce_ex__`` --
with multiprocessing's own pickler, 5-10 us a message against about 1 us,
on every job twice (the Run and its reply). The field names below are the
protocol; change both ends together.
"""

from __future__ import annotations

import io
import os
import pickle
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, Union

from ..job import Spec


class Setup(NamedTuple):
    """First message to a new child: enough to record outcomes itself (:mod:`cwredis.worker.direct`)."""

    url: str
    secret: bytes | None
    namespace: str
    worker_id: str
    queues: list[str]
    slot: int = -1  # the child's slot: names its own inbox, where it parks (cwredis.worker.parking); -1: never
    attention: int = -1  # a pipe's write end the child inherits: a byte there wakes the worker's loop


class Direct(NamedTuple):
    """Asks the child to record a job's outcome itself: the attempt's token and the job's generation (both
    signed into the outcome), the client, and whether to re-park. With ``only_large``, only an outcome
    of at least ``config.DIRECT_RECORD_BYTES`` (a large result never crosses the pipe to the worker)."""

    token: str
    generation: int
    client: str
    repark: bool
    only_large: bool = False

    def __reduce__(self) -> tuple[type[Direct], tuple[Any, ...]]:
        # Inside a Run: the class and its fields, without the namedtuple's slower default pickling.
        return Direct, tuple(self)


class Run(NamedTuple):
    """Run one job. ``function``/``env`` are None when the worker believes the child holds them already."""

    job_id: str
    function_digest: str
    function: bytes | None
    args: bytes | bytearray | memoryview
    env_digest: str
    env: bytes | None
    capture: bool
    direct: Direct | None
    retry_on: tuple[str, ...] = ()  # the spec's: an exception of one of these classes ends in a retry
    blobs: dict[str, bytes] | None = None  # the argument blobs ``args`` names (cwredis.argblobs)
    args_follow: int = 0  # if > 0, ``args`` is empty: that many bytes of them follow on the pipe, raw
    #: If set, ``args`` is ``job.STAGED_ARGS``, not verified: the child reads the envelope from its own key,
    #: and verifies it with this spec digest, before anything of the job is unpickled (worker.staged).
    staged_spec: str = ""


class Unsend(NamedTuple):
    """Give ``job_id`` back if it has not started (it waits behind a long job)."""

    job_id: str


class Progress(NamedTuple):
    """``cwredis.progress()`` inside a running job."""

    job_id: str
    fraction: float
    message: str | None


class Output(NamedTuple):
    """What a running job printed since the last Output (sent at most every ``config.LIVE_OUTPUT_INTERVAL_S``)."""

    job_id: str
    text: str


class Unsent(NamedTuple):
    """Answer to Unsend: ``given_back`` is False when the job had already started (or finished)."""

    job_id: str
    given_back: bool


class Resend(NamedTuple):
    """The function or environment was left out of a Run, but the child does not hold it."""

    job_id: str


class CannotOpen(NamedTuple):
    """The child ran nothing of ``job_id``: it could not read or verify the arguments staged beside it, or
    they name argument blobs (:mod:`cwredis.worker.staged`); the worker opens the job itself."""

    job_id: str


class Stale(NamedTuple):
    """The child did not start ``job_id``: a module it loaded changed on disk (``path``); replace it
    (:mod:`cwredis.worker.freshness`)."""

    job_id: str
    path: str


class Ok(NamedTuple):
    """The job returned; ``result`` is its cloudpickle, ``output`` what it printed (captured tail)."""

    job_id: str
    result: bytes
    output: str


class Err(NamedTuple):
    """The job failed: reason (exception, corrupt, ...), last error line, traceback text, output tail;
    for a raised exception, the cloudpickles of its class and of itself (None: could not be pickled)."""

    job_id: str
    reason: str
    error: str
    traceback: str
    output: str
    exc_type: bytes | None = None
    exception: bytes | None = None
    retryable: bool = False  # raised an instance of one of the Run's retry_on classes


class Recorded(NamedTuple):
    """The child recorded the outcome itself: ``accepted`` False if the attempt no longer owned the job;
    ``room`` is the worker's parking room after re-parking (0: not parked)."""

    job_id: str
    accepted: bool
    room: int
    parked: bool = False  # the child parked on its own inbox in the same step (cwredis.worker.parking)
    ended: float = 0.0  # time.monotonic() when recorded: the worker may read this late (a parked child's pipe)


class Took(NamedTuple):
    """A parked child read a job submit.lua handed it (claimed for this worker, attempt charged).

    With ``spec`` (the job's verified spec) the child verified the job and
    runs it now, and records its outcome itself; ``args`` is then empty.
    Without, it runs nothing (a signature, record or argument blob it could
    not check itself): the worker verifies the job from ``args``, the
    envelope, and rejects, fails or runs it as any claimed job.
    """

    job_id: str
    token: str
    spec_digest: str
    function_digest: str
    args: bytes
    attempts: int
    generation: int
    spec: Spec | None
    started: float  # time.monotonic() when the child took it (one clock for the machine): its timeout counts from it


class Unparked(NamedTuple):
    """A parked child stopped waiting on its inbox without a job: the worker unparked it, or (``failed``)
    its connection failed, or (``garbled``) it read a message it could not parse. After either of those a
    job handed to it may wait in the worker's in-flight list, and the child may still be listed as parked."""

    garbled: bool = False
    failed: bool = False


#: A job's end, as a child reports it.
Reply = Union[Ok, Err]
#: Everything a child sends.
ChildMessage = Union[Progress, Output, Unsent, Resend, CannotOpen, Stale, Ok, Err, Recorded, Took, Unparked]
#: Everything either side sends.
Message = Union[Setup, Run, Unsend, ChildMessage]

#: A reply with a result this large is pickled through a file (see MessagePipe.send).
LARGE_MESSAGE_BYTES = 64 * 1024

#: The message types by their number on the wire.
_TYPES: tuple[type[Any], ...] = (Setup, Run, Unsend, Progress, Output, Unsent, Resend, Stale, Ok, Err, Recorded, Took,
                                  Unparked, CannotOpen)
_NUMBERS = {kind: number for number, kind in enumerate(_TYPES)}


class MessagePipe(Connection):
    """One end of a worker/child pipe: ``send``/``recv`` carry messages as ``(type number, fields)``."""

    def send(self, obj: Message) -> None:
        message = (_NUMBERS[type(obj)], tuple(obj))
        if (isinstance(obj, Ok) and len(obj.result) >= LARGE_MESSAGE_BYTES) or (isinstance(obj, Run) and obj.blobs):
            # A pickler writing to a file writes a large bytes object straight through; pickle.dumps
            # copies it into a buffer it grows (a fresh allocation each time it doubles).
            buffer = io.BytesIO()
            pickle.Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(message)
            self.send_bytes(buffer.getbuffer())
        else:
            self.send_bytes(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))

    def recv(self) -> Any:
        """The next message (a :data:`Message`: the reader knows which kinds its pipe carries)."""
        number, fields = pickle.loads(self.recv_bytes())
        return _TYPES[number]._make(fields)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to a pipe (blocking), with no copy of it."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def read_exactly(fd: int, size: int) -> bytearray:
    """Read ``size`` bytes from a pipe straight into one buffer (no copy of it); EOFError if it closes first."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            raise EOFError("the pipe closed in the middle of a job's arguments")
        got += n
    return buffer

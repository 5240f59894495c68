"""The records Lua scripts take and give back, and the parsing of a worker's inbox.

:mod:`cwredis.scripts` runs the scripts; these are the typed shapes of what
crosses: a claim's rows (:class:`Claimed`, :class:`ClaimReply`), the
messages ``submit.lua`` and ``cancel.lua`` leave in a worker's inbox
(:func:`parse_handed`), and what a worker hands in to end an attempt
(:class:`Completion`, :class:`Requeue`) or the coordinator gets back
(:class:`Recovered`). Anything read from Redis may be garbage: a row or a
message that cannot be read raises ValueError here or is counted as garbled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

from . import job


@dataclass
class Claimed:
    """One attempt a worker just started (a row of claim.lua's reply)."""

    id: str
    token: str
    spec: str
    function: str
    args: bytes
    attempts: int
    generation: int


@dataclass
class ClaimReply:
    """What a claim (or a hand-off read from the inbox) gave a worker."""

    claimed: list[Claimed]
    dropped: list[str]  # queue entries that named no pending job
    handed: int = 0  # the first `handed` of claimed came from the inbox (submit.lua claimed them ahead)
    garbled: int = 0  # inbox messages that could not be read
    room: int = 0  # jobs the worker is now parked for (0: not parked)
    cancels: list[str] = field(default_factory=list)  # running jobs to stop (read from the inbox)


def claimed_row(row: Sequence[Any]) -> Claimed:
    """(id, token, spec, fn, args, attempts, generation) -> Claimed."""
    def text(value: Any) -> str:
        return job.text(value) or ""

    args = row[4] if isinstance(row[4], bytes) else str(row[4]).encode()
    return Claimed(text(row[0]), text(row[1]), text(row[2]), text(row[3]), args, int(row[5]), int(row[6] or 0))


def _unframe(message: bytes) -> list[bytes]:
    """The fields of a hand-off message (frame() in _prelude.lua: each field as <length>:<bytes>)."""
    fields, i = [], 0
    while i < len(message):
        colon = message.index(b":", i)
        end = colon + 1 + int(message[i:colon])
        if end > len(message):
            raise ValueError("truncated field")
        fields.append(message[colon + 1:end])
        i = end
    return fields


class Inbox(NamedTuple):
    """What a read of a worker's inbox brought (see parse_handed)."""

    claimed: list[Claimed]  # jobs submit.lua handed us
    wake: bool  # jobs were queued: claim
    garbled: int  # messages that could not be read
    cancels: list[str]  # ids of our running jobs whose cancellation was asked (cancel.lua)


def parse_handed(messages: Sequence[bytes]) -> Inbox:
    """Inbox messages: hand-offs (frame() in the prelude), 'wake', and 'x:<job id>' (cancel this job)."""
    claimed: list[Claimed] = []
    cancels: list[str] = []
    wake, garbled = False, 0
    for message in messages:
        if message == b"wake":
            wake = True
            continue
        if message.startswith(b"x:"):
            cancels.append(message[2:].decode(errors="replace"))
            continue
        try:
            fields = _unframe(message)
            if len(fields) != 7:
                raise ValueError(f"{len(fields)} fields")
            claimed.append(claimed_row(fields))
        except (ValueError, UnicodeDecodeError):
            garbled += 1
    return Inbox(claimed, wake, garbled, cancels)


@dataclass
class Completion:
    """One attempt's outcome for complete.lua; kind is 'ok' or 'err'."""

    id: str
    token: str
    client: str
    kind: str
    body: bytes
    reason: str = ""
    error: str = ""
    traceback: str = ""
    output: str = ""  # tail kept with a failed job
    staged: str = ""  # the key its body was written to beside the script (Scripts.stage), body then b""


class Recovered(NamedTuple):
    """What requeue_expired.lua did with one expired worker's in-flight list."""

    requeued: int  # back on their queues
    lost: int  # failed 'lost': their workers died max_attempts times
    dropped: int  # entries naming no job record (poison: a key of another type), removed


@dataclass
class Requeue:
    """One job a worker gives back: mode 'retry' (attempt counted), 'release' (refunded) or 'reject'.

    ``client`` is the job's (its outcome goes there if the job ends here). A rejection (see requeue.lua) is refunded like a release and goes to the
    back of the queue, until the job's ``limit``-th rejection; that one fails
    it ``rejected`` with ``error``, and ``body`` (a signed outcome) goes to ``client``.
    """

    id: str
    token: str
    queue: str
    mode: str
    delay_ms: int = 0
    limit: int = 0
    client: str = ""
    body: bytes = b""
    error: str = ""

"""The job record and its states. Data only: no Redis calls here.

A job is one Redis HASH (``keys.job(id)``) with short field names, because a
queued job's memory is mostly field names and values: the long-lived, shared
parts (client, queue, environment, limits, and which function) live once in a
*spec* hash and the function once in a *blob*; the job only points at its
spec. So a client that submits two functions has two specs. A pending job has
no state field at all (:func:`state_of`).

State machine (every arrow is one Lua script in ``cwredis/lua``)::

    submit -> pending --claim--> running --complete--> done
                 ^                  |  \\--complete(error)/fail--> failed
                 |                  |                                 |
                 +--requeue/expired-+--retry(backoff)--> delayed      |
                 +--promote---------------------------------+          |
                 +--requeue_failed (admin) <--------------------------+
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

# Field names of the job hash (kept short: see the module docstring).
STATE = "s"
SPEC = "p"
FUNCTION = "f"  # only in jobs queued before the function's digest moved into the spec (SPEC_FUNCTION)
ARGS = "a"
#: What ``ARGS`` holds when the job's arguments are staged in their own key (``Keys.staged_args``): large
#: arguments copied through a Lua script cost ~3 ms of server time per MiB, a plain SET and GET ~0.9 ms.
STAGED_ARGS = b"staged"
ATTEMPTS = "n"
TOKEN = "k"
WORKER = "w"
GENERATION = "g"
REASON = "r"
ERROR = "x"
TRACEBACK = "tb"
OUTPUT = "o"  # output tail of a failed job
PROGRESS = "pg"  # latest "fraction message" a running job reported
LIVE_OUTPUT = "lo"  # the tail of what a running job printed so far (kept if it fails, dropped when done)
PREFETCHED = "pf"  # set while a claimed-ahead attempt has not started: its attempt is not yet charged
DEATHS = "d"  # how many workers died holding the job (at 2 x max_attempts it fails lost)
REJECTIONS = "rj"  # how often a worker refused its signature (at max_attempts it fails rejected)

# Field names of the spec hash.
SPEC_CLIENT = "c"
SPEC_QUEUE = "q"
SPEC_ENV = "e"
SPEC_TIMEOUT = "t"
SPEC_MAX_ATTEMPTS = "m"
SPEC_FORWARD_OUTPUT = "o"
SPEC_RETRY_ON = "r"  # comma-separated qualified names of exception classes (absent: retry none)
SPEC_FUNCTION = "f"  # the digest of the function's blob (16 bytes less per job than in each job)

# Field names of a blob hash.
BLOB_DATA = "b"
BLOB_NAME = "n"

PENDING = "pending"
RUNNING = "running"
DELAYED = "delayed"
DONE = "done"
FAILED = "failed"
STATES = (PENDING, RUNNING, DELAYED, DONE, FAILED)

# Failure reasons, as the contract names them.
EXCEPTION = "exception"
TIMEOUT = "timeout"
LOST = "lost"
REJECTED = "rejected"
CORRUPT = "corrupt"


def state_of(state: object, spec: object) -> str | None:
    """A job's state from its ``s`` and ``p`` fields as read (bytes, str or None).

    A pending job has no state field: 12 bytes less per queued job (see the
    module docstring). So an absent state reads ``pending`` when the record
    names its spec, as every job does from submit on; a record with neither is
    no job (None). The Lua scripts read it the same way (``job_state`` in
    ``_prelude.lua``).
    """
    if state is not None:
        return text(state)
    return PENDING if spec is not None else None


#: The fields that say which attempt owns a job: its state, the attempt's token, the worker holding it.
FENCE = (STATE, TOKEN, WORKER)


def held_by(fence: Sequence[object], token: str, worker_id: str) -> bool:
    """Whether the :data:`FENCE` fields as read (bytes, str or None) say attempt ``token`` of worker
    ``worker_id`` still owns the job -- as complete.lua checks before recording its outcome."""
    state, held_token, holder = (text(value) for value in fence)
    return state == RUNNING and held_token == token and holder == worker_id


#: The fields that say whether a job in a worker's in-flight list has started there (:func:`started_on`).
STARTED = (STATE, PREFETCHED, WORKER)


def started_on(fields: Sequence[object], worker_id: str) -> bool:
    """Whether the :data:`STARTED` fields as read say the job runs on worker ``worker_id``: running, held
    by it, and started (not only claimed ahead of its start)."""
    state, prefetched, holder = (text(value) for value in fields)
    return state == RUNNING and prefetched is None and holder == worker_id


def text(value: object) -> str | None:
    """A Redis reply field as text (bytes decoded, undecodable bytes replaced); None stays None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: object, default: int = 0) -> int:
    try:
        return int(text(value) or default)
    except ValueError:
        return default


def int_or_none(value: object) -> int | None:
    """A Redis reply field as an int; None when absent, empty or garbage."""
    try:
        return int(text(value) or "")
    except ValueError:
        return None


@dataclass
class JobRecord:
    """A job as read back from Redis, tolerant of missing or garbage fields."""

    id: str
    state: str
    spec: str | None = None
    function: str | None = None
    attempts: int = 0
    generation: int = 0
    worker: str | None = None
    reason: str | None = None
    error: str | None = None
    traceback: str | None = None
    output: str | None = None
    progress: str | None = None

    @classmethod
    def from_hash(cls, job_id: str, fields: Mapping[bytes | str, bytes | str]) -> "JobRecord":
        """Decode a job hash; an unknown state reads as ``corrupt`` data, never raises."""
        named = {text(k) or "": v for k, v in fields.items()}
        state = state_of(named.get(STATE), named.get(SPEC)) or "unknown"
        return cls(
            id=job_id,
            state=state if state in STATES else "unknown",
            spec=text(named.get(SPEC)),
            function=text(named.get(FUNCTION)),
            attempts=_int(named.get(ATTEMPTS)),
            generation=_int(named.get(GENERATION)),
            worker=text(named.get(WORKER)),
            reason=text(named.get(REASON)),
            error=text(named.get(ERROR)),
            traceback=text(named.get(TRACEBACK)),
            output=text(named.get(OUTPUT)),
            progress=text(named.get(PROGRESS)),
        )


@dataclass(frozen=True)
class Spec:
    """What every job of one submitter shares; stored once per distinct value."""

    client: str
    queue: str
    env: str
    timeout_s: float | None
    max_attempts: int
    forward_output: bool = False
    #: Qualified names (``builtins.OSError``) of the exception classes whose instances are retried.
    retry_on: tuple[str, ...] = ()
    #: The digest of the function's blob ('': none named).
    function: str = ""

    def to_hash(self) -> dict[str, str]:
        # retry_on only when set: the spec (and its digest) of a client without it stays as it was.
        retry = {SPEC_RETRY_ON: ",".join(self.retry_on)} if self.retry_on else {}
        function = {SPEC_FUNCTION: self.function} if self.function else {}
        return retry | function | {
            SPEC_CLIENT: self.client,
            SPEC_QUEUE: self.queue,
            SPEC_ENV: self.env,
            SPEC_TIMEOUT: "" if self.timeout_s is None else repr(float(self.timeout_s)),
            SPEC_MAX_ATTEMPTS: str(self.max_attempts),
            SPEC_FORWARD_OUTPUT: "1" if self.forward_output else "0",
        }

    @classmethod
    def from_hash(cls, fields: Mapping[bytes | str, bytes | str]) -> "Spec":
        """Decode a spec hash; raise ValueError when a field is missing or garbage."""
        named = {text(k) or "": text(v) or "" for k, v in fields.items()}
        try:
            timeout = named.get(SPEC_TIMEOUT, "")
            return cls(
                client=named[SPEC_CLIENT],
                queue=named[SPEC_QUEUE],
                env=named[SPEC_ENV],
                timeout_s=float(timeout) if timeout else None,
                max_attempts=int(named[SPEC_MAX_ATTEMPTS]),
                forward_output=named.get(SPEC_FORWARD_OUTPUT) == "1",
                retry_on=tuple(n for n in named.get(SPEC_RETRY_ON, "").split(",") if n),
                function=named.get(SPEC_FUNCTION, ""),
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(f"bad job spec: {exc!r}") from None

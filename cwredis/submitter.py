"""Turning calls into durable jobs: pickling, shared records, pipelined batches.

A submitter belongs to one client. What all its jobs share -- the client id,
queue, limits and the client's environment (cwd and sys.path) -- is stored
once as a *spec*; each distinct function once as a *blob*; a job carries only
its pickled arguments and two digests. That keeps a queued no-op job small.
Each job's arguments are sealed together with its id and both digests
(:meth:`cwredis.signing.Signer.seal_job`), so the job is signed as a whole.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import redis

from . import config, job
from . import sentinel
from .connection import Batch, Pinned, describe, is_server_full
from .reachability import Reconnector, memory_limit
from .errors import CwredisError, ServerFullError
from .keys import Keys
from .scripts import STAGE_BYTES, Scripts
from .argblobs import ArgPickler, Pickled
from .serialization import ENV, FUNCTION, capture_env, dumps_function, function_name
from .signing import Signer


#: The last shared records a submitter used are kept while their function and environment are at most this
#: big (a closure pickled by value with a large capture is not kept past its jobs).
KEEP_LAST_RECORDS_BYTES = 64 * 1024


@dataclass(frozen=True, eq=False, slots=True, weakref_slot=True)
class SharedRecords:
    """What the jobs of one submit share and submit.lua stores once: the spec, function and environment.

    A client keeps a reference with every unfinished job, so it can submit the
    job again with exactly these records if the server loses it.
    """

    spec_digest: str
    spec_fields: dict[str, str]
    fn_digest: str
    fn_blob: bytes
    fn_name: str
    env_digest: str
    env_blob: bytes


class Attached(NamedTuple):
    """A job a session already held when it was submitted: its state then, and its outcome if it had finished."""

    job_id: str
    state: str
    generation: int
    kind: bytes  # b"" unless finished: b"ok" / b"err"
    body: bytes

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "Attached":
        job_id, state, generation, outcome = row
        kind, _, body = outcome.partition(b"\n") if isinstance(outcome, bytes) else (b"", b"", b"")
        try:
            gen = int(generation)
        except ValueError:
            gen = 0
        return cls(job_id.decode(errors="replace") if isinstance(job_id, bytes) else str(job_id),
                   state.decode(errors="replace") if isinstance(state, bytes) else str(state), gen, kind, body)


#: Job ids drawn from the system's randomness at a time (see :func:`new_job_id`).
_IDS_PER_DRAW = 256
_ids: Iterator[str] = iter(())


def new_job_id() -> str:
    """12 characters of [A-Za-z0-9_.] (72 random bits): unique without coordination, never starting with '-'.

    Twelve, not more: the job's key (``{cw}:job:`` and the id) then fits the
    smallest allocation the server makes for a key, and the id is also a
    queue entry -- about 25 bytes less per queued job than 16 characters.
    The chance that two of ten million jobs alive at once share an id is
    about 1e-8 (n^2 / 2^73).

    Ids are drawn ``_IDS_PER_DRAW`` at a time: one ``getrandom`` call per id
    was 2.5 us of a lone submit and let the results thread take the GIL in
    the middle of it. Threads share the draw (``next`` on a list iterator is
    one step under the GIL); a forked child forgets it, or parent and child
    would hand out the same ids.
    """
    global _ids
    try:
        return next(_ids)
    except StopIteration:
        raw = base64.urlsafe_b64encode(secrets.token_bytes(9 * _IDS_PER_DRAW)).decode().replace("-", ".")
        ids = iter([raw[i:i + 12] for i in range(0, len(raw), 12)])  # 9 bytes are exactly 12 characters
        first = next(ids)
        _ids = ids
        return first


def _forget_ids() -> None:
    global _ids
    _ids = iter(())


os.register_at_fork(after_in_child=_forget_ids)


class Submitter:
    """Queues jobs for one client; every method returns once the jobs are durable."""

    def __init__(self, client: redis.Redis, scripts: Scripts, keys: Keys, signer: Signer, reconnector: Reconnector,
                 *, client_id: str, queue: str, timeout_s: float | None, max_attempts: int,
                 forward_output: bool = False, session: str = "", retry_on: tuple[str, ...] = ()) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError("timeout must be positive (seconds) or None")
        if not queue or any(c.isspace() for c in queue):
            raise ValueError(f"invalid queue name {queue!r}")
        self._pinned = Pinned(client)  # submits are on the latency path
        self._replica_ack = sentinel.needs_replica_ack(client)  # a batch waits for a replica (WAIT)
        self._scripts = scripts
        self._keys = keys
        self._signer = signer
        self._reconnector = reconnector
        self._client_id = client_id
        self._queue = queue
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._forward_output = forward_output
        self._session = session
        self._retry_on = retry_on
        # Digests of records this submitter has stored; submit.lua reports a
        # missing one (expired, or lost in a server restart) and we resend.
        self._stored: set[str] = set()
        self._env_cache: tuple[tuple[str, tuple[str, ...]], bytes, str] | None = None  # (cwd, path), sealed, digest
        self._by_reference: weakref.WeakKeyDictionary[Any, tuple[bytes, str, str]] = weakref.WeakKeyDictionary()
        # One SharedRecords per distinct (environment, function) while any job holds it: a function
        # pickled by value on every submit is then kept once, however many jobs wait. (The spec
        # names the function, so it is made with them.) Only the last ones made outlive their jobs,
        # if small (KEEP_LAST_RECORDS_BYTES): else a loop of lone jobs, each done before the next is
        # submitted, made the spec and its digest again for every job (13 us of a submit's ~50).
        self._shared: weakref.WeakValueDictionary[tuple[str, str], SharedRecords] = weakref.WeakValueDictionary()
        self._last_shared: SharedRecords | None = None
        self._lock = threading.Lock()
        # Repeated large arguments become blobs, stored once -- not in a session, whose job ids
        # come from the pickled arguments (see cwredis.argblobs).
        self._arg_pickler = ArgPickler(signer, dedup=not session)
        self._stored_args: set[str] = set()  # argument blobs this submitter stored (they may expire)

    def _env(self) -> tuple[bytes, str]:
        """The sealed environment and its digest, recomputed only when cwd or sys.path changed."""
        current = (os.getcwd(), tuple(sys.path))
        cached = self._env_cache
        if cached is None or cached[0] != current:
            sealed = self._signer.seal(ENV, capture_env())
            cached = self._env_cache = (current, sealed, self._signer.digest(sealed))
        return cached[1], cached[2]

    def _spec(self, env_digest: str, fn_digest: str) -> tuple[dict[str, str], str]:
        """The spec hash for jobs of one function submitted in this environment, and its content digest."""
        spec = job.Spec(self._client_id, self._queue, env_digest, self._timeout_s, self._max_attempts,
                        self._forward_output, self._retry_on, fn_digest)
        fields = spec.to_hash()
        return fields, self._signer.spec_digest(fields)

    def prepare_function(self, fn: Callable[..., Any]) -> tuple[bytes, str, str]:
        """Pickle and seal ``fn``: (sealed blob, digest, display name).

        A function importable by name pickles as a reference, which cannot go
        stale, so that is cached; anything else (``__main__`` functions,
        closures, lambdas) is pickled by value on every call, so it carries
        the globals and closure values of the moment it was submitted.
        """
        cached = self._by_reference.get(fn) if _importable(fn) else None
        if cached is None:
            sealed = self._signer.seal(FUNCTION, dumps_function(fn))
            cached = (sealed, self._signer.digest(sealed), function_name(fn))
            if _importable(fn):
                self._by_reference[fn] = cached
        return cached

    def pickle_args(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """The call's arguments as a pickle (sealed later, with the job's id: :meth:`seal_jobs`); a repeated
        large argument is left out, named by the digest of its blob (:mod:`cwredis.argblobs`)."""
        return self._arg_pickler.pickle_call(fn, args, kwargs)

    def seal_jobs(self, shared: SharedRecords, pickled_args: Sequence[bytes],
                  ids: Sequence[str] | None = None) -> list[tuple[str, bytes]]:
        """Jobs (id, envelope) for ``shared``: each signed with its id, spec, function and arguments.

        ``ids``: a session's (derived from each job's key); else new random ones.
        """
        seal = self._signer.seal_job
        spec_digest, fn_digest = shared.spec_digest, shared.fn_digest
        if ids is None:
            ids = [new_job_id() for _ in pickled_args]
        return [(job_id, _with_blobs(seal(job_id, spec_digest, fn_digest, args), args))
                for job_id, args in zip(ids, pickled_args)]

    def shared_records(self, prepared: tuple[bytes, str, str]) -> SharedRecords:
        """The records jobs of ``prepared`` (from :meth:`prepare_function`) share in the current environment."""
        fn_blob, fn_digest, fn_name = prepared
        env_blob, env_digest = self._env()
        with self._lock:
            shared = self._shared.get((env_digest, fn_digest))
            if shared is None:
                spec_fields, spec_digest = self._spec(env_digest, fn_digest)
                shared = SharedRecords(spec_digest, spec_fields, fn_digest, fn_blob, fn_name, env_digest, env_blob)
                self._shared[(env_digest, fn_digest)] = shared
                if len(fn_blob) + len(env_blob) <= KEEP_LAST_RECORDS_BYTES:
                    self._last_shared = shared
        return shared

    def submit(self, shared: SharedRecords, jobs: Sequence[tuple[str, bytes]]) -> list[Attached]:
        """Store ``jobs`` (id, envelope from :meth:`seal_jobs`) durably with ``shared``, in batches, retrying
        through outages; in a session, the jobs it already held (see submit.lua).

        Idempotent: a job id the server already holds is skipped, so jobs can be sent again.
        """
        attached: list[Attached] = []
        start = 0
        for batch in job_batches(jobs):
            try:
                attached += self._reconnector.call(lambda: self._submit_batch(shared, batch),
                                                   retry_if=lambda exc: not is_server_full(exc))
            except redis.ResponseError as exc:
                if is_server_full(exc):  # submit.lua is refused as a whole: nothing of this batch was written
                    queued = f" ({start} earlier job(s) of this call were queued)" if start else ""
                    raise ServerFullError(
                        f"the Redis server is at its memory limit ({memory_limit(self._pinned)}): "
                        f"{len(jobs) - start} job(s) not queued{queued}; wait for the workers to drain "
                        "the queues, or raise the server's maxmemory") from None
                raise CwredisError(f"Redis refused the job(s): {describe(exc)} -- nothing more was queued") from None
            start += len(batch)
        return attached

    def _put_blobs(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """Store (or renew) the argument blobs the batch's jobs name, before the jobs exist: a worker
        never sees a job whose blob is not there yet. Data goes along only when the server may lack it."""
        blobs = {b.digest: b for _, envelope in batch for b in getattr(envelope, "blobs", ())}
        if not blobs:
            return
        ttl_ms = int(config.RESULT_TTL_S * 1000)
        listed = [(d, None if d in self._stored_args else b.data) for d, b in blobs.items()]
        missing = self._scripts.put_blobs(self._pinned, blobs=listed, ttl_ms=ttl_ms)
        if missing:  # expired, or lost by the server: send their data
            self._scripts.put_blobs(self._pinned, blobs=[(listed[i][0], blobs[listed[i][0]].data) for i in missing],
                                    ttl_ms=ttl_ms)
        with self._lock:
            self._stored_args.update(blobs)

    def _submit_batch(self, shared: SharedRecords, batch: Sequence[tuple[str, bytes]]) -> list[Attached]:
        """One submit.lua call; the shared records go along only when the server may lack them, and large
        arguments (not a session's: see submit.lua) are staged beside it in the same round trip."""
        self._put_blobs(batch)
        digests = (shared.spec_digest, shared.fn_digest, shared.env_digest)
        jobs, to_stage = batch, not self._session and any(len(envelope) >= STAGE_BYTES for _, envelope in batch)
        for send_records in ((False, True) if set(digests) <= self._stored else (True,)):
            target = self._pinned.batch() if self._replica_ack or to_stage else self._pinned
            staged = 0
            if to_stage:  # once: when submit.lua asks for the records, the SETs before it have been done
                jobs, staged = self._scripts.stage_args(target, batch)
                to_stage = False
            reply = self._scripts.submit(
                target, queue=self._queue, spec_digest=shared.spec_digest,
                spec_fields=shared.spec_fields if send_records else None, fn_digest=shared.fn_digest,
                fn_blob=shared.fn_blob if send_records else None, fn_name=shared.fn_name,
                env_digest=shared.env_digest, env_blob=shared.env_blob if send_records else None, jobs=jobs,
                blob_ttl_ms=int(config.RESULT_TTL_S * 1000), session=self._session, attach=self._client_id)
            if isinstance(target, Batch):
                reply = self._send(target, staged, len(batch))
            queued, rows = reply if isinstance(reply, list) else (reply, [])
            if int(queued) >= 0:
                with self._lock:
                    self._stored.update(digests)
                return [Attached.from_row(row) for row in rows]
        raise AssertionError("submit.lua asked for records it was given")  # pragma: no cover

    def _send(self, target: Batch, staged: int, count: int) -> Any:
        """Send the gathered commands -- ``staged`` SETs of large arguments, then submit.lua -- followed, when a
        replica must have the batch, by ``WAIT`` on the same connection; submit.lua's reply (once a replica
        has it all, else NotReplicatedError: transient, and :meth:`submit` sends it again, which is safe
        because a job id the server holds is skipped)."""
        if self._replica_ack:
            target.execute_command(*sentinel.WAIT_COMMAND)
        replies = self._scripts.execute(target)
        if self._replica_ack:
            sentinel.check_acknowledged(replies[-1], f"a submit of {count} job(s)")
        return replies[staged]

    def close(self) -> None:
        self._pinned.close()


def _with_blobs(envelope: bytes, args: bytes) -> bytes:
    """A job's envelope that carries the argument blobs its arguments name (for :meth:`Submitter._put_blobs`)."""
    if not isinstance(args, Pickled):
        return envelope
    carrier = Pickled(envelope)
    carrier.blobs = args.blobs
    return carrier


def _importable(fn: Any) -> bool:
    """True if ``fn`` is reachable as ``module.qualname`` (outside ``__main__``): pickled by reference."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    module = sys.modules.get(module_name or "")
    if module is None or module_name == "__main__" or "<" in qualname:
        return False
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target is fn


def job_batches(jobs: Sequence[tuple[str, bytes]]) -> Iterable[Sequence[tuple[str, bytes]]]:
    """``jobs`` (id, envelope) in consecutive batches of at most SUBMIT_BATCH jobs, each ending
    after the job that brings it to SUBMIT_BATCH_BYTES of envelopes (a larger job goes alone)."""
    start, size = 0, 0
    for end, (_, envelope) in enumerate(jobs, 1):
        size += len(envelope)
        if end - start == config.SUBMIT_BATCH or size >= config.SUBMIT_BATCH_BYTES:
            yield jobs[start:end]
            start, size = end, 0
    if start < len(jobs):
        yield jobs[start:]


def chunked(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Lists of up to ``size`` consecutive items."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

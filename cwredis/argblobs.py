"""Large arguments repeated across jobs, stored once in Redis (content-addressed, like function blobs).

A job's pickled arguments normally travel inside its own record (or, when
large, in a key beside it: :meth:`cwredis.scripts.Scripts.stage_args`). When a
top-level argument (positional or keyword) is a large buffer -- ``bytes``,
``bytearray``, ``array.array``, a NumPy array: anything with the buffer
protocol, or a ``str`` -- of at least ``config.LARGE_ARG_BYTES``, and this
client already sent an equal one (same type, size and CRC-32, kept for the
last ``SEEN_MAX`` such arguments), it is pickled on its own into an *argument
blob*, stored once under ``keys.blob(digest)`` (field ``b``), and the job's
arguments refer to it by digest (a pickle persistent id).

Looking costs little for the common case, distinct arguments: the first look
is a CRC-32 of four 4 KiB samples (start, thirds, end) with the type and size.
Only an argument whose samples match one sent before has its whole content
checked (CRC-32 runs at ~1.4 GB/s here: 0.7 ms a MiB, on the client's path of
every large job otherwise), and that whole CRC is what the next one is
compared with. So ``map(f, [big] * 50)`` stores ``big`` about three times (the
first two jobs carry it inline, the second to learn its whole CRC; the blob
serves the other 48), not 50 times.

**Signing.** The digest is an HMAC-SHA256 of the blob keyed with the secret
(:meth:`cwredis.signing.Signer.arg_digest`), and it sits inside the job's
signed arguments, so the job's tag still binds the argument: the worker
checks each blob against its digest before the job runs, and a blob that does
not match is rejected like any record swapped under a signed job.

**Lifetime.** An argument blob lives ``config.RESULT_TTL_S`` after the last
submit that named it (each submit renews it), as function blobs do: a queued
job may wait that long. It is never deleted sooner, because another client
with the same secret may name the same content. Only a repeated argument
becomes a blob, so a map over distinct large arguments leaves nothing behind
once its jobs are done. A blob that is missing when the job runs (expired,
or lost by a server restart without persistence) fails the job ``corrupt``
at once; it never waits.

**Sessions** derive job ids from the pickled arguments, which must not
depend on what the client sent before: a session's jobs always carry their
arguments inline.

Format of a job's arguments with blobs (inside its signed envelope)::

    b"cwblobs:" + b",".join(digests) + b"\\n" + pickle of (args, kwargs) with persistent ids
"""

from __future__ import annotations

import collections
import io
import pickle
import weakref
import zlib
from typing import Any, Callable, Mapping

import cloudpickle

from . import config, heap
from .serialization import dumps_call, loads_inline_call
from .signing import Corrupt, Signer

_MARK = b"cwblobs:"
_PERSISTENT = "cwredis-arg-blob"
#: How far into a job's arguments their list of blobs may reach (a thousand digests).
_HEAD_MAX = 64 * 1024

#: How many large arguments a client remembers (type, size, samples' CRC-32) to see one repeated.
SEEN_MAX = 4096
#: The size of each of the four samples of a large argument's first look.
SAMPLE_BYTES = 4096


class ArgBlob:
    """One stored argument: its digest and pickle (shared by every job naming it while any is pending)."""

    __slots__ = ("digest", "data", "__weakref__")

    def __init__(self, digest: str, data: bytes) -> None:
        self.digest = digest
        self.data = data


class Pickled(bytes):
    """A job's pickled arguments that name argument blobs (``blobs``), which must be stored before it."""

    blobs: tuple[ArgBlob, ...] = ()


def _size(value: Any) -> int:
    """The size of a large-buffer candidate, without copying it; 0 for anything else."""
    if isinstance(value, str):
        return len(value)
    try:
        with memoryview(value) as view:
            return view.nbytes
    except TypeError:
        return 0


def _sampled(value: Any, size: int) -> tuple[str, int, int] | None:
    """Type, size and CRC-32 of four ``SAMPLE_BYTES`` samples (start, thirds, end) of a large argument, read
    in place; None for a buffer that is not contiguous (it is then never stored as a blob)."""
    starts = (0, size // 3, 2 * size // 3, size - SAMPLE_BYTES)
    crc = 0
    try:
        if isinstance(value, str):
            for start in starts:
                crc = zlib.crc32(value[start:start + SAMPLE_BYTES].encode("utf-8", "surrogatepass"), crc)
        else:
            with memoryview(value) as view, view.cast("B") as flat:
                for start in starts:
                    crc = zlib.crc32(flat[start:start + SAMPLE_BYTES], crc)
    except (TypeError, ValueError, BufferError):
        return None
    return type(value).__qualname__, size, crc


def _whole_crc(value: Any) -> int:
    """CRC-32 of a large argument's whole content (one that :func:`_sampled` could read)."""
    return zlib.crc32(value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value)


class ArgPickler:
    """Pickles a client's calls, turning repeated large arguments into blobs (see the module docstring)."""

    def __init__(self, signer: Signer, *, dedup: bool = True) -> None:
        self._signer = signer
        self._dedup = dedup
        #: first look -> the whole CRC-32 of the last argument with those samples (None: one seen, not read whole)
        self._seen: collections.OrderedDict[tuple[str, int, int], int | None] = collections.OrderedDict()
        self._blobs: weakref.WeakValueDictionary[str, ArgBlob] = weakref.WeakValueDictionary()

    def pickle_call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """``(args, kwargs)`` pickled; a :class:`Pickled` naming its blobs when a large argument repeats.

        The call is pickled as always first: a small one (nearly every call) costs nothing more, and an
        argument that cannot be pickled raises SerializationError naming it, as always.
        """
        pickled = dumps_call(fn, args, kwargs)
        repeated: dict[int, ArgBlob] = {}
        if len(pickled) >= config.LARGE_ARG_BYTES:
            heap.keep_freed_memory()  # this client moves large payloads
        if self._dedup and len(pickled) >= config.LARGE_ARG_BYTES:
            for value in (*args, *kwargs.values()):
                size = _size(value)
                if size >= config.LARGE_ARG_BYTES and id(value) not in repeated:
                    if (first_look := _sampled(value, size)) is None:
                        continue
                    if first_look not in self._seen:
                        self._seen[first_look] = None
                        if len(self._seen) > SEEN_MAX:
                            self._seen.popitem(last=False)
                        continue
                    self._seen.move_to_end(first_look)
                    crc = _whole_crc(value)  # like one sent before at a glance: compare all of it
                    if self._seen[first_look] == crc:
                        repeated[id(value)] = self._blob(value)  # pickled once already: it pickles
                    else:
                        self._seen[first_look] = crc
        if not repeated:
            return pickled
        buffer = io.BytesIO()
        _BlobPickler(buffer, repeated).dump((args, kwargs))  # pickled once already: it pickles
        blobs = tuple(repeated.values())
        out = Pickled(_MARK + b",".join(b.digest.encode() for b in blobs) + b"\n" + buffer.getvalue())
        out.blobs = blobs
        return out

    def _blob(self, value: Any) -> ArgBlob:
        data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        digest = self._signer.arg_digest(data)
        blob = self._blobs.get(digest)
        if blob is None:
            blob = self._blobs[digest] = ArgBlob(digest, data)
        return blob


class _BlobPickler(cloudpickle.Pickler):
    """cloudpickle, with the chosen objects written as references to their blobs."""

    def __init__(self, file: io.BytesIO, blobs: dict[int, ArgBlob]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._by_id = blobs

    def persistent_id(self, obj: Any) -> Any:
        blob = self._by_id.get(id(obj))
        return None if blob is None else (_PERSISTENT, blob.digest)


def named_blobs(args: bytes | memoryview) -> list[str]:
    """The digests of the argument blobs a job's (verified) arguments name; [] for plain arguments."""
    if args[:len(_MARK)] != _MARK:  # (a memoryview's slice compares by content)
        return []
    start = bytes(args[:_HEAD_MAX])
    head, sep, _ = start[len(_MARK):].partition(b"\n")
    if not sep:
        raise Corrupt("job arguments name blobs but the list is broken")
    return [d.decode("ascii", "replace") for d in head.split(b",") if d]


def loads_call(args: bytes | bytearray | memoryview, blobs: Mapping[str, bytes] | None) -> Any:
    """Unpickle a job's ``(args, kwargs)`` in the job process, putting its argument blobs in place."""
    if args[:len(_MARK)] != _MARK:  # (a pickle without PROTO never starts with b"c": no GLOBAL in protocol 5)
        return loads_inline_call(args)
    start = bytes(args[:_HEAD_MAX]).index(b"\n") + 1
    unpickler = _BlobUnpickler(io.BytesIO(memoryview(args)[start:]), blobs or {})
    return unpickler.load()


class _BlobUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, blobs: Mapping[str, bytes]) -> None:
        super().__init__(file)
        self._blobs = blobs
        self._loaded: dict[str, Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _PERSISTENT):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        digest = pid[1]
        if digest not in self._loaded:
            if digest not in self._blobs:
                raise pickle.UnpicklingError(f"argument blob {digest} was not delivered")
            self._loaded[digest] = pickle.loads(self._blobs[digest])
        return self._loaded[digest]


def envelope_blobs(envelope: bytes) -> list[str]:
    """The blobs a job's envelope names, read *before* its signature is checked: only to fetch them in
    the claim's round trip (what is used is read again from the verified arguments)."""
    at = envelope.find(_MARK, 0, 64)
    return named_blobs(envelope[at:at + _HEAD_MAX]) if at >= 0 else []


class BlobCache:
    """A worker's argument blobs by digest, as fetched (unverified), the most recent ``max_bytes`` kept."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._data: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def missing(self, digests: list[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if d not in self._data]

    def put(self, digest: str, data: bytes) -> None:
        if digest in self._data:
            return
        self._data[digest] = data
        self._bytes += len(data)
        while self._bytes > self._max_bytes and len(self._data) > 1:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old)

    def verified(self, signer: Signer, digests: list[str]) -> dict[str, bytes]:
        """The blobs ``digests`` name, each checked against its digest; Corrupt if one is missing (expired,
        or lost by the server), Rejected if one does not match."""
        found = {}
        for digest in digests:
            data = self._data.get(digest)
            if data is None:
                raise Corrupt(f"argument blob {digest} is missing (expired, or lost by the server)")
            signer.check_arg_digest(data, digest)
            self._data.move_to_end(digest)
            found[digest] = data
        return found

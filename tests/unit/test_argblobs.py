"""Repeated large arguments as blobs (cwredis.argblobs), byte-bounded submit batches, outcomes sealed in pieces."""

from __future__ import annotations

import array
import mmap
import pickle
import threading
import zlib

import pytest

from cwredis import argblobs, config
from cwredis.argblobs import ArgPickler, BlobCache, Pickled, envelope_blobs, loads_call, named_blobs
from cwredis.errors import SerializationError
from cwredis.executor import _map_batches
from cwredis.serialization import frame_outcome, frame_parts, unframe_outcome
from cwredis.signing import VIEW_BYTES, Corrupt, Rejected, Signer
from cwredis.submitter import job_batches

SECRET = b"s" * 43
signer = Signer(SECRET)
BIG = bytes(range(256)) * 1024  # 256 KiB, above LARGE_ARG_BYTES


def blobs_of(pickled: bytes) -> dict[str, bytes]:
    return {b.digest: b.data for b in getattr(pickled, "blobs", ())}


def test_a_large_argument_is_inline_twice_and_then_a_blob():
    pickler = ArgPickler(signer)
    first = pickler.pickle_call(print, (BIG, 1), {})
    second = pickler.pickle_call(print, (bytes(BIG), 1), {})  # equal, not the same object: its whole CRC read
    again = pickler.pickle_call(print, (bytes(BIG), 2), {"k": "small"})
    assert not isinstance(first, Pickled) and len(first) > len(BIG)
    assert not isinstance(second, Pickled) and second == first
    assert isinstance(again, Pickled) and len(again) < 1024
    (blob,) = again.blobs
    assert named_blobs(again) == [blob.digest] and blob.digest == signer.arg_digest(blob.data)
    assert loads_call(first, None) == ((BIG, 1), {})
    assert loads_call(again, blobs_of(again)) == ((BIG, 2), {"k": "small"})
    # the same content again shares the one blob object (stored once while its jobs wait)
    assert pickler.pickle_call(print, (BIG,), {}).blobs[0] is blob


def test_distinct_arguments_are_told_apart_by_samples_without_reading_them_whole(monkeypatch):
    whole_reads = []
    monkeypatch.setattr(argblobs, "_whole_crc", lambda value: whole_reads.append(1) or zlib.crc32(value))
    pickler = ArgPickler(signer)
    for i in range(5):
        assert not isinstance(pickler.pickle_call(print, (bytes([i]) * len(BIG),), {}), Pickled)
    assert whole_reads == []


def test_arguments_equal_in_their_samples_but_not_whole_stay_inline():
    pickler = ArgPickler(signer)
    middle = len(BIG) // 2  # no sample reaches it: the start, the thirds and the end are 4 KiB each
    variants = [BIG[:middle] + bytes([i]) + BIG[middle + 1:] for i in range(4)]
    assert not any(isinstance(pickler.pickle_call(print, (v,), {}), Pickled) for v in variants)


@pytest.mark.parametrize("value", [bytearray(BIG), array.array("d", range(len(BIG) // 8)), "\u00e9" * len(BIG)])
def test_buffers_and_strings_round_trip_as_blobs_with_their_type(value):
    pickler = ArgPickler(signer)
    for _ in range(2):  # the first two go inline (the second teaches its whole CRC)
        pickler.pickle_call(print, (value,), {})
    again = pickler.pickle_call(print, (), {"x": value})
    assert isinstance(again, Pickled)
    (args, kwargs) = loads_call(again, blobs_of(again))
    assert args == () and kwargs["x"] == value and type(kwargs["x"]) is type(value)


def test_small_distinct_and_session_arguments_stay_inline():
    pickler = ArgPickler(signer)
    small = b"x" * (config.LARGE_ARG_BYTES - 1)
    assert not any(isinstance(pickler.pickle_call(print, (small,), {}), Pickled) for _ in range(3))
    assert not any(isinstance(pickler.pickle_call(print, (bytes([i]) * len(BIG),), {}), Pickled) for i in range(3))
    session = ArgPickler(signer, dedup=False)  # session job ids come from the pickled arguments
    assert not any(isinstance(session.pickle_call(print, (BIG,), {}), Pickled) for _ in range(3))


def test_the_worker_uses_a_blob_only_if_it_is_there_and_matches_its_signed_digest():
    pickler = ArgPickler(signer)
    for _ in range(2):
        pickler.pickle_call(print, (BIG,), {})
    args = pickler.pickle_call(print, (BIG,), {})
    envelope = signer.seal_job("j1", "spec", "fn", args)
    digests = named_blobs(signer.open_job("j1", "spec", "fn", envelope))
    assert envelope_blobs(envelope) == digests  # what the worker prefetches is what the job names
    cache = BlobCache()
    with pytest.raises(Corrupt, match="missing"):
        cache.verified(signer, digests)
    cache.put(digests[0], b"tampered" + blobs_of(args)[digests[0]])
    with pytest.raises(Rejected):
        cache.verified(signer, digests)
    cache = BlobCache()
    cache.put(digests[0], blobs_of(args)[digests[0]])
    assert loads_call(args, cache.verified(signer, digests)) == ((BIG,), {})
    with pytest.raises(Rejected):  # another secret addresses content differently
        Signer(b"t" * 43).check_arg_digest(blobs_of(args)[digests[0]], digests[0])


def test_the_blob_cache_keeps_the_most_recent_within_its_bytes():
    cache = BlobCache(max_bytes=10)
    for name in "abc":
        cache.put(name, b"x" * 4)
    assert cache.missing(["a", "b", "c"]) == ["a"]


def test_submit_batches_end_at_their_byte_budget(monkeypatch):
    monkeypatch.setattr(config, "SUBMIT_BATCH", 4)
    monkeypatch.setattr(config, "SUBMIT_BATCH_BYTES", 10)
    jobs = [(str(i), b"x" * size) for i, size in enumerate([3, 3, 3, 3, 20, 1, 1, 1, 1, 1])]
    batches = [[job_id for job_id, _ in batch] for batch in job_batches(jobs)]
    assert batches == [["0", "1", "2", "3"], ["4"], ["5", "6", "7", "8"], ["9"]]


@pytest.mark.parametrize("size, pieces, opened_as", [(6000, 1, bytes), (VIEW_BYTES + 6, 3, memoryview)])
def test_an_outcome_sealed_in_pieces_is_the_outcome_sealed_whole(size, pieces, opened_as):
    result = b"RESULT" * (size // 6)
    parts = frame_parts("printed\n", result)
    whole = frame_outcome("printed\n", result)
    assert b"".join(parts) == whole and len(parts) == pieces  # a small result comes joined: nothing to save
    assert signer.seal_outcome("j1", 2, "5", "ok", parts) == signer.seal_outcome("j1", 2, "5", "ok", whole)
    sealed = signer.seal_outcome("j1", 2, "5", "ok", parts)
    output, payload = unframe_outcome(signer.open_outcome("j1", 2, b"ok", sealed))
    assert output == "printed\n" and payload == result
    assert type(payload) is opened_as  # a large result is a view into the body, a small one a copy
    with pytest.raises(Rejected):
        signer.open_outcome("j1", 3, b"ok", sealed)  # another generation: the tag covers the pieces as joined


def test_put_blobs_stores_renews_and_names_the_missing(r, s):
    blob_key = s.keys.blob
    assert s.put_blobs(r, blobs=[("d1", b"ONE"), ("d2", None)], ttl_ms=60_000) == [1]  # d2 was never sent
    assert r.hget(blob_key("d1"), "b") == b"ONE" and 0 < r.pttl(blob_key("d1")) <= 60_000
    assert not r.exists(blob_key("d2"))
    r.pexpire(blob_key("d1"), 1_000)
    assert s.put_blobs(r, blobs=[("d1", None)], ttl_ms=60_000) == []  # there: renewed, not sent again
    assert r.pttl(blob_key("d1")) > 1_000 and r.hget(blob_key("d1"), "b") == b"ONE"


def test_map_pickles_lazily_and_ends_a_batch_at_its_byte_budget(monkeypatch):
    monkeypatch.setattr(config, "SUBMIT_BATCH_BYTES", 2 * len(BIG))
    drawn = []

    def items():
        for i in range(5):
            drawn.append(i)
            yield (BIG, i)

    batches = _map_batches(lambda fn, args, kwargs: pickle.dumps(args), print, items(), 1)
    first = next(batches)
    assert [call[0][1] for call in first[1]] == [0, 1] and drawn == [0, 1]  # nothing pickled ahead
    assert pickle.loads(first[2][1]) == (BIG, 1)
    assert [[call[0][1] for call in batch[1]] for batch in batches] == [[2, 3], [4]]


def test_an_unpicklable_argument_beside_a_repeated_one_is_named_as_always():
    pickler = ArgPickler(signer)
    pickler.pickle_call(print, (BIG,), {})
    with pytest.raises(SerializationError, match="argument 1"):
        pickler.pickle_call(print, (BIG, threading.Lock()), {})
    area = mmap.mmap(-1, len(BIG))  # a buffer that cannot be pickled, sent twice
    with pytest.raises(SerializationError, match="argument 0"):
        pickler.pickle_call(print, (area,), {})
    with pytest.raises(SerializationError, match="argument 0"):
        pickler.pickle_call(print, (area,), {})

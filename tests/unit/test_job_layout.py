"""What keeps a queued job small: short ids, short digests, arguments pickled without a frame header (and,
for a call without keyword arguments, without the empty dict and the PROTO header)."""

from __future__ import annotations

import os
import pickle
import re

import pytest

from cwredis.serialization import dumps_call, loads_inline_call, unframed
from cwredis.signing import Signer
from cwredis.submitter import new_job_id


def test_job_ids_are_twelve_key_safe_characters_never_starting_with_a_dash():
    ids = {new_job_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(re.fullmatch(r"[A-Za-z0-9_.]{12}", i) for i in ids)
    # Every character of the alphabet turns up (72 random bits, not fewer).
    assert set("".join(ids)) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")


def test_a_forked_child_draws_job_ids_of_its_own():
    """Ids are drawn many at a time; a child forked with some left must not hand out the parent's next ones."""
    new_job_id()  # a draw is under way: the rest of it is what a fork would copy
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then leave at once (no pytest teardown in here)
        os.write(write_end, " ".join(new_job_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = set(pipe.read().split())
    _, status = os.waitpid(pid, 0)
    assert status == 0 and len(child_ids) == 100
    assert child_ids.isdisjoint(new_job_id() for _ in range(100))


def test_record_digests_are_eleven_characters_and_keyed():
    signer = Signer(b"s" * 43)
    digest = signer.digest(b"blob")
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}", digest)
    assert digest == signer.digest(b"blob") != Signer(b"t" * 43).digest(b"blob")
    assert signer.spec_digest({"q": "a"}) != signer.spec_digest({"q": "b"})


def test_a_call_is_pickled_without_its_frame_header_and_loads_the_same():
    for args, kwargs in [((9999, "x" * 300), {"k": [1, 2]}), ((), {"k": 1})]:
        framed = pickle.dumps((args, kwargs), protocol=5)
        stored = dumps_call(print, args, kwargs)
        assert len(stored) == len(framed) - 9
        assert pickle.loads(stored) == (args, kwargs) == loads_inline_call(stored)
    assert dumps_call(print, (5,), {}) == b"K\x05\x85\x94."  # BININT1 5, TUPLE1, MEMOIZE, STOP: all there is
    # A pickle of several frames, or of another protocol, is left as it is.
    big = pickle.dumps(list(range(50_000)), protocol=5)
    assert unframed(big) == big and pickle.loads(unframed(big)) == list(range(50_000))
    old = pickle.dumps((1,), protocol=2)
    assert unframed(old) == old


@pytest.mark.parametrize("args", [(5,), (9999,), (), ("x" * 300, [1, 2]), (list(range(50_000)),), ((1,), {})])
def test_a_call_without_keyword_arguments_is_its_arguments_alone_without_proto(args):
    stored = dumps_call(print, args, {})
    assert stored[:1] != pickle.PROTO
    assert loads_inline_call(stored) == (args, {})
    if len(stored) < 1000:  # one frame: 9 + 2 + 4 bytes less than the pickle of (args, {}) ('}', memo, pair, memo)
        assert len(stored) == len(pickle.dumps((args, {}), protocol=5)) - 15


def test_a_module_named_like_python_2s_is_not_renamed_when_read():
    # Without PROTO the unpickler would read a protocol-0 pickle and map Python 2 names (Queue -> queue).
    # (Queue.Queue,) with no PROTO and no frame, as dumps_call stores a user module "Queue"'s class.
    stored = b"\x8c\x05Queue\x94\x8c\x05Queue\x94\x93\x94\x85\x94."
    assert pickle.loads(stored)[0].__module__ == "queue"  # what plain pickle.loads would run
    with pytest.raises(ModuleNotFoundError, match="'Queue'"):
        loads_inline_call(stored)  # looked up as written, not as the stdlib's queue

"""What keeps a queued job small: short ids, short digests, arguments pickled without a frame header."""

from __future__ import annotations

import pickle
import re

from cwredis.serialization import dumps_call, unframed
from cwredis.signing import Signer
from cwredis.submitter import new_job_id


def test_job_ids_are_twelve_key_safe_characters_never_starting_with_a_dash():
    ids = {new_job_id() for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(re.fullmatch(r"[A-Za-z0-9_.]{12}", i) for i in ids)
    # Every character of the alphabet turns up (72 random bits, not fewer).
    assert set("".join(ids)) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")


def test_record_digests_are_eleven_characters_and_keyed():
    signer = Signer(b"s" * 43)
    digest = signer.digest(b"blob")
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}", digest)
    assert digest == signer.digest(b"blob") != Signer(b"t" * 43).digest(b"blob")
    assert signer.spec_digest({"q": "a"}) != signer.spec_digest({"q": "b"})


def test_a_call_is_pickled_without_its_frame_header_and_loads_the_same():
    for args, kwargs in [((5,), {}), ((9999, "x" * 300), {"k": [1, 2]}), ((), {})]:
        framed = pickle.dumps((args, kwargs), protocol=5)
        stored = dumps_call(print, args, kwargs)
        assert len(stored) == len(framed) - 9
        assert pickle.loads(stored) == (args, kwargs)
    # A pickle of several frames, or of another protocol, is left as it is.
    big = pickle.dumps(list(range(50_000)), protocol=5)
    assert unframed(big) == big and pickle.loads(unframed(big)) == list(range(50_000))
    old = pickle.dumps((1,), protocol=2)
    assert unframed(old) == old

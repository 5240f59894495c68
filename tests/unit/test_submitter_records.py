"""The records a submitter's jobs share (spec, function, environment): made once, and kept only as long as wanted."""

from __future__ import annotations

import gc
import threading
import weakref

import fakeredis

from cwredis.keys import DEFAULT_KEYS
from cwredis.reachability import Reconnector
from cwredis.scripts import Scripts
from cwredis.signing import Signer
from cwredis.submitter import KEEP_LAST_RECORDS_BYTES, Submitter


def noop(x: object) -> object:
    return x


def make_submitter() -> Submitter:
    r = fakeredis.FakeRedis()
    return Submitter(r, Scripts(r, DEFAULT_KEYS), DEFAULT_KEYS, Signer(b"s" * 32),
                     Reconnector("redis://127.0.0.1:1/0", "client", threading.Event()),
                     client_id="c1", queue="default", timeout_s=None, max_attempts=3)


def test_lone_jobs_one_after_another_share_one_set_of_records():
    """No job holds the records between two lone jobs; the last ones made are kept anyway (not made again)."""
    submitter = make_submitter()
    prepared = submitter.prepare_function(noop)
    first = weakref.ref(submitter.shared_records(prepared))  # the job that held them is done: no job holds them
    gc.collect()
    assert first() is not None and submitter.shared_records(prepared) is first()


def test_records_of_a_large_function_go_with_their_last_job():
    submitter = make_submitter()
    blob, digest, name = submitter.prepare_function(noop)
    large = (blob + b"\0" * KEEP_LAST_RECORDS_BYTES, digest + "L", name)  # a closure with a large capture
    shared = submitter.shared_records(large)
    assert submitter.shared_records(large) is shared  # while a job holds them: one set
    gone = weakref.ref(shared)
    del shared
    gc.collect()
    assert gone() is None  # nothing kept them past their jobs

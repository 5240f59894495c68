"""The records a submitter's jobs share (spec, function, environment): made once, and kept only as long as wanted."""

from __future__ import annotations

import gc
import threading
import weakref

import fakeredis

from cwredis import job
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


def test_large_arguments_are_staged_once_when_the_server_asks_for_the_records_again():
    """The server lost the shared records (submit.lua answers -1 and the batch goes again, with them): the
    large arguments' SETs ran with the first try, so they are not sent a second time."""
    r = fakeredis.FakeRedis()
    scripts = Scripts(r, DEFAULT_KEYS)
    submitter = Submitter(r, scripts, DEFAULT_KEYS, Signer(b"s" * 32),
                          Reconnector("redis://127.0.0.1:1/0", "client", threading.Event()),
                          client_id="c1", queue="default", timeout_s=None, max_attempts=3)
    shared = submitter.shared_records(submitter.prepare_function(noop))
    submitter.submit(shared, submitter.seal_jobs(shared, [submitter.pickle_args(noop, (1,), {})]))  # records stored
    r.delete(DEFAULT_KEYS.spec(shared.spec_digest))  # lost by the server
    staged_calls, submits = [], []
    stage_args, submit = scripts.stage_args, scripts.submit
    scripts.stage_args = lambda pipe, jobs: staged_calls.append(len(jobs)) or stage_args(pipe, jobs)  # type: ignore
    scripts.submit = lambda client, **kw: submits.append(kw["spec_fields"] is not None) or submit(client, **kw)  # type: ignore
    jobs = submitter.seal_jobs(shared, [submitter.pickle_args(noop, (bytes([i]) * 100_000,), {}) for i in range(2)])
    submitter.submit(shared, jobs)
    assert submits == [False, True] and staged_calls == [2]
    for job_id, envelope in jobs:
        assert r.hget(DEFAULT_KEYS.job(job_id), job.ARGS) == job.STAGED_ARGS
        assert r.get(DEFAULT_KEYS.staged_args(job_id)) == envelope

"""Hop timestamps of a lone job, for the ``latency_hops`` benchmark (see ``benchmarks/hops.py``).

The benchmark puts this directory first on ``PYTHONPATH`` of every process of
its stack and names a directory in ``CWREDIS_HOPTRACE_DIR``; Python then
imports this module at start-up in the client, the worker and each job
process. It wraps a few of cwredis's functions -- from outside, so the
package carries no tracing code and an old checkout can be traced the same
way -- and each process appends ``HOP JOB_ID NANOSECONDS`` lines to a file of
its own. ``time.perf_counter_ns`` is CLOCK_MONOTONIC on Linux: one clock for
every process of the machine.

A hook whose function is gone (a renamed private method) is skipped and
listed in the file as ``missing``, so the analysis says which hops it cannot
show instead of failing.
"""

from __future__ import annotations

import functools
import importlib
import os
import time

_DIR = os.environ.get("CWREDIS_HOPTRACE_DIR")
_fd: int | None = None


def mark(hop: str, job_id: object, ns: int | None = None) -> None:
    """Append one line: the hop, the job's id, and the time (now, or ``ns``)."""
    global _fd
    if _fd is None:
        assert _DIR is not None
        _fd = os.open(os.path.join(_DIR, f"{os.getpid()}.hops"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(_fd, f"{hop} {job_id} {time.perf_counter_ns() if ns is None else ns}\n".encode())


def _wrap(module: str, qualname: str, make):
    """Replace ``module.qualname`` (a function or a class's method) with ``make(original)``."""
    try:
        owner = importlib.import_module(module)
        *path, name = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)
    except (ImportError, AttributeError):
        mark("missing", f"{module}:{qualname}")
        return
    setattr(owner, name, functools.wraps(original)(make(original)))


def _wrap_first(places: list[tuple[str, str]], make) -> None:
    """:func:`_wrap` the first of ``places`` (module, qualname) that exists: a function that moved between
    versions, so an old checkout is traced the same way; missing only if none does."""
    for module, qualname in places:
        try:
            owner = importlib.import_module(module)
            for part in qualname.split("."):
                owner = getattr(owner, part)
        except (ImportError, AttributeError):
            continue
        _wrap(module, qualname, make)
        return
    mark("missing", ",".join(f"{module}:{qualname}" for module, qualname in places))


def _around(before: str | None, after: str | None, ids):
    """A wrapper marking ``before`` at entry and ``after`` at return, for each job id ``ids(args)`` names."""
    def make(original):
        def wrapper(*args, **kwargs):
            if before:
                for job_id in ids(args):
                    mark(before, job_id)
            result = original(*args, **kwargs)
            if after:
                for job_id in ids(args):
                    mark(after, job_id)
            return result
        return wrapper
    return make


def _on_result(hop: str, id_of):
    """A wrapper marking ``hop`` at return for the job id ``id_of(result)`` names (None: no mark)."""
    def make(original):
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            job_id = id_of(result)
            if job_id is not None:
                mark(hop, job_id)
            return result
        return wrapper
    return make


class _JobProcess:
    """Hooks of the job process. It runs its loop as ``__main__`` (``python -m cwredis.worker.child``), so
    its own functions cannot be wrapped from here: these are on what it calls, from modules it imports --
    the fresh-code check it makes as soon as it has a job (``k_woke``, written once the job's id is
    known), and entering and leaving the job's context around the call (``k_run``, ``k_ran``)."""

    woke_ns = 0
    job_id = "-"

    @classmethod
    def install(cls) -> None:
        def on_check(original):
            def wrapper(*args, **kwargs):
                cls.woke_ns = time.perf_counter_ns()
                return original(*args, **kwargs)
            return wrapper

        def on_enter(original):
            def wrapper(job_id, *args, **kwargs):
                cls.job_id = job_id
                mark("k_woke", job_id, cls.woke_ns)
                mark("k_run", job_id)
                return original(job_id, *args, **kwargs)
            return wrapper

        _wrap("cwredis.worker.freshness", "CodeWatch.changed", on_check)
        _wrap("cwredis.jobcontext", "_enter", on_enter)
        _wrap("cwredis.jobcontext", "_leave", _around(None, "k_ran", lambda a: [cls.job_id]))
        _wrap("cwredis.worker.direct", "DirectRecorder.record", _around(None, "k_recorded", lambda a: [a[1].job_id]))

        def on_take(original):  # a parked job process's inbox answered (cwredis.worker.child_parking)
            def wrapper(*args, **kwargs):
                woke_ns = time.perf_counter_ns()
                run = original(*args, **kwargs)
                if run is not None:
                    mark("k_handed", run.job_id, woke_ns)
                    mark("k_took", run.job_id)
                return run
            return wrapper

        _wrap("cwredis.worker.child_parking", "ChildParking.take", on_take)


def install() -> None:
    # client
    _wrap("cwredis.submitter", "Submitter._submit_batch",
          _around("c_submit", "c_submitted", lambda a: [job_id for job_id, _ in a[2]]))
    _wrap("cwredis.outcome_list", "OutcomeList.parse", _on_result("c_published", lambda entry: entry.job_id))
    # The older place first: an editable install's finder may supply cwredis.delivery to an old checkout too.
    _wrap_first([("cwredis.client", "ClientThread._deliver"), ("cwredis.delivery", "Delivery.deliver")],
                _around("c_callback", None, lambda a: [a[1]]))
    # worker (supervisor process)
    _wrap("cwredis.worker.intake", "Intake._take_handed",
          _around("w_handed", None, lambda a: [c.id for c in a[1].claimed]))
    _wrap("cwredis.worker.pool", "Slot.resend", _around("w_piping", "w_piped", lambda a: [a[1].id]))
    # job process
    _JobProcess.install()


if _DIR:
    install()

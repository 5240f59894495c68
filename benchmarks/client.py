"""The client program of every measurement: ``python benchmarks/client.py ROLE PARAMS_JSON``.

``run.py`` starts one per run (so each client's peak RSS is its own), with the
server's URL in ``CWREDIS_URL`` (never on the command line). It runs one role
and prints its result as a ``protocol`` line. As a script, ``benchmarks/`` is
``sys.path[0]``, so ``import jobs`` works and the workers import the job
functions by reference through the replayed ``sys.path``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import sys
import time
import traceback
from typing import Any, Callable

import protocol
from hops import role_latency_hops
from latency import role_bare_latency, role_latency
from measuring import Counter
from memory import role_bounded, role_memory
from payloads import role_bare_payload, role_large_args, role_large_results
from server_load import role_ceiling, role_mass_death
from sessions import role_resume, role_session_fill
from throughput import role_client_submit, role_executor_map, role_fanout, role_scale, role_wait_cost


def role_smoke(url, timeout, **_):
    """Does the package work at all: Executor.map, Executor.submit, ClientThread."""
    import cwredis
    import jobs

    t0 = time.perf_counter()
    with cwredis.Executor(url=url) as ex:
        out = list(ex.map(jobs.noop, range(10), chunksize=1))
        fut = ex.submit(jobs.noop, "x")
        assert fut.result(timeout=30) == "x"
    assert out == list(range(10)), out
    c = Counter(3)
    with cwredis.ClientThread(c.ok, url=url, error_callback=c.bad) as t:
        for i in range(3):
            t.submit(jobs.noop, i)
    c.wait(30)
    return {"ok": 1, "seconds": time.perf_counter() - t0}


#: The roles by the name ``stack.Stack.client`` gives on the command line.
ROLES: dict[str, Callable[..., dict[str, Any]]] = {
    "smoke": role_smoke, "executor_map": role_executor_map, "client_submit": role_client_submit,
    "latency": role_latency, "bare_latency": role_bare_latency, "fanout": role_fanout,
    "memory": role_memory, "scale": role_scale, "bounded": role_bounded,
    "session_fill": role_session_fill, "resume": role_resume, "ceiling": role_ceiling,
    "mass_death": role_mass_death, "wait_cost": role_wait_cost, "large_args": role_large_args,
    "large_results": role_large_results, "bare_payload": role_bare_payload, "latency_hops": role_latency_hops}


def main(role: str, params: dict) -> None:
    """Run ``role`` with ``params`` (``timeout`` among them; ``cpu``: add this process's CPU seconds)."""
    faulthandler.dump_traceback_later(params.get("timeout", 3600) + 5, exit=True)
    want_cpu = params.pop("cpu", False)
    try:
        res = ROLES[role](os.environ["CWREDIS_URL"], **params)
        if want_cpu:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            res["client_cpu_s"] = ru.ru_utime + ru.ru_stime
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    protocol.emit(protocol.RESULT, res)
    os._exit(0)  # a stuck non-daemon thread in the package must not hang the benchmark


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))

"""When jobs fail: catch them as you would locally, keep going, retry the flaky, repair the rest.

    cw-local -n 2 -- python examples/failures.py

First, a remote exception is caught by its own class (``except ValueError``),
``map(..., return_exceptions=True)`` hands back each failure in place, and
``retry_on=(OSError,)`` retries a job that hit a passing network error.

Then failed jobs wait to be repaired: the jobs fail (their input file is
missing), so `cw-admin failed` lists them. The script creates the file --
the fix -- and runs `cw-admin requeue-failed` with their ids: they run again, and this
still-running client gets their new outcomes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading

import cwredis


def read_input(path: str, n: int) -> int:
    """Fails until ``path`` exists, then returns n times the number in it."""
    with open(path) as f:
        return n * int(f.read())


def fetch(marker: str) -> str:
    """Fails once with ConnectionResetError (an OSError), as a flaky network would, then works."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionResetError("connection reset by peer")
    return "fetched"


def catch_and_retry() -> None:
    with cwredis.Executor() as ex:
        try:
            ex.submit(int, "x").result()
        except ValueError as error:  # the remote ValueError (also a cwredis.RemoteError)
            print(f"caught the remote {error.exception!r}")
        results = ex.map(int, ["1", "x", "3"], return_exceptions=True)
        print("map kept going:", [f"failed: {r.exception}" if isinstance(r, cwredis.RemoteError) else r
                                  for r in results])
    marker = os.path.join(tempfile.mkdtemp(prefix="cwredis-flaky-"), "tried")
    with cwredis.Executor(retry_on=(OSError,), max_attempts=3) as ex:
        print("retried after a ConnectionResetError:", ex.submit(fetch, marker).result())


def repair_and_requeue() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="cwredis-failures-"), "input.txt")
    results: dict[str, int] = {}
    failed: list[str] = []
    lock = threading.Condition()

    def on_result(jobid: str, value: int) -> None:
        with lock:
            results[jobid] = value
            lock.notify_all()

    def on_error(jobid: str, error: cwredis.RemoteError) -> None:
        print(error)  # "job ID failed (REASON): TYPE: MESSAGE"
        with lock:
            failed.append(jobid)
            lock.notify_all()

    with cwredis.ClientThread(on_result, error_callback=on_error) as client:
        for n in range(3):
            client.submit(read_input, path, n)
        client.wait()
        print(f"{len(failed)} job(s) failed; `cw-admin failed` shows:")
        subprocess.run(["cw-admin", "failed"], check=True)
        with open(path, "w") as f:
            f.write("7")
        print("input file created; `cw-admin requeue-failed JOBID...`:")
        subprocess.run(["cw-admin", "requeue-failed", *failed], check=True)
        with lock:
            if not lock.wait_for(lambda: len(results) == len(failed), timeout=60):
                sys.exit("requeued jobs did not finish")
    print("results after the fix:", sorted(results.values()))


if __name__ == "__main__":
    catch_and_retry()
    repair_and_requeue()

"""Failed jobs wait to be repaired: a job that fails until a file exists.

    cw-local -n 2 -- python examples/failures.py

The jobs fail (their input file is missing), so `cw-admin failed` lists
them. The script then creates the file -- the fix -- and runs
`cw-admin requeue-failed`: the jobs run again, and this still-running client
gets their new outcomes.
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


def main() -> None:
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
        print("input file created; `cw-admin requeue-failed`:")
        subprocess.run(["cw-admin", "requeue-failed"], check=True)
        with lock:
            if not lock.wait_for(lambda: len(results) == len(failed), timeout=60):
                sys.exit("requeued jobs did not finish")
    print("results after the fix:", sorted(results.values()))


if __name__ == "__main__":
    main()

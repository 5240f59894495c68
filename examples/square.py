"""The original cluster-workers example, on cwredis: square numbers on the cluster.

Run it against any running cwredis (it finds the server through
$CWREDIS_URL or $CWREDIS_HOME/url), or give it a private one-machine cluster:

    cw-local -n 2 -- python examples/square.py
"""

from __future__ import annotations

import cwredis


def square(n: int) -> int:
    return n * n


def on_result(jobid: str, result: int) -> None:
    print(f"{jobid}: {result}")


def main() -> None:
    # Leaving the block waits for every job, then stops the client thread.
    with cwredis.ClientThread(on_result) as client:
        for i in range(10):
            client.submit(square, i)
    print("all 10 squares computed")


if __name__ == "__main__":
    main()

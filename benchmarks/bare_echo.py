"""The second process of the bare latency loop: BRPOP a job, LPUSH it back, forever.

Started by ``latency.role_bare_latency`` with the server's URL in ``CWREDIS_URL``.
"""

from __future__ import annotations

import os

from latency import BARE_JOBS, BARE_RESULTS
from measuring import bare_client


def main() -> None:
    r = bare_client(os.environ["CWREDIS_URL"])
    while True:
        item = r.brpop([BARE_JOBS], 1)
        if item is not None:
            r.lpush(BARE_RESULTS, item[1])


if __name__ == "__main__":
    main()

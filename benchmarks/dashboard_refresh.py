"""How much one dashboard overview refresh costs with N jobs queued (default 1,000,000).

    .venv/bin/python benchmarks/dashboard_refresh.py [--jobs N] [--refreshes R]

Starts a server (no persistence) through the shared harness, queues N real
jobs with submit.lua (job hashes included, so the keyspace is as large as a
real one and the dashboard's SCAN step sees it), then times R refreshes of
the overview as the dashboard's sampler does them (:meth:`Sampler.refresh`:
the counts, the workers and the session tallies; ``--session NAME`` puts
the jobs in one session, whose tally then reads its full budget of job
states each refresh) and counts the commands the
server executed per refresh (``INFO commandstats``). Not part of ``run.py``:
it measures the dashboard, not the queue.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Server  # noqa: E402

from cwredis import job  # noqa: E402
from cwredis.inspector import Inspector  # noqa: E402
from cwredis.dashboard.sampler import Sampler  # noqa: E402
from cwredis.dashboard.sessions import SessionTallies  # noqa: E402
from cwredis.dashboard.views import Views  # noqa: E402
from cwredis.keys import DEFAULT_KEYS  # noqa: E402
from cwredis.scripts import Scripts  # noqa: E402

BATCH = 5000


def fill(client, scripts: Scripts, n: int, session: str) -> None:
    spec = job.Spec(client="bench", queue="default", env="e", timeout_s=None, max_attempts=3)
    for start in range(0, n, BATCH):
        ids = [(f"job{i:07d}", b"args") for i in range(start, min(n, start + BATCH))]
        scripts.submit(client, queue="default", spec_digest="spec", spec_fields=spec.to_hash(), fn_digest="fn",
                       fn_blob=b"fn", fn_name="bench.f", env_digest="env", env_blob=b"env", jobs=ids,
                       blob_ttl_ms=3_600_000, session=session, attach="bench" if session else "")


def commands(client) -> int:
    return sum(int(v["calls"]) for k, v in client.info("commandstats").items() if k != "cmdstat_info")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--refreshes", type=int, default=50)
    parser.add_argument("--session", default="", help="queue the jobs in this session (the overview tallies it)")
    args = parser.parse_args()
    server = Server(Path(tempfile.mkdtemp(prefix="cw-dash-bench-")), aof=False)
    server.start()
    try:
        client = server.client()
        scripts = Scripts(client, DEFAULT_KEYS)
        scripts.load()
        started = time.monotonic()
        fill(client, scripts, args.jobs, args.session)
        print(f"queued {client.llen(DEFAULT_KEYS.queue('default')):,} jobs in {time.monotonic() - started:.1f} s; "
              f"{client.dbsize():,} keys")
        inspector = Inspector(client)
        sampler = Sampler(Views(inspector), SessionTallies(client, DEFAULT_KEYS), threading.Event())
        sampler.refresh()  # warm: scripts, connections
        times, counts = [], []
        for _ in range(args.refreshes):
            before = commands(client)
            sampler.refresh()
            times.append(sampler.last_refresh_s * 1000)
            counts.append(commands(client) - before)
        times.sort()
        print(f"overview refresh: median {statistics.median(times):.2f} ms, p95 {times[int(len(times) * .95)]:.2f} ms, "
              f"max {times[-1]:.2f} ms over {args.refreshes}; commands per refresh: {min(counts)}..{max(counts)}")
        print(f"overview: {sampler.snapshot()['queues']}")
    finally:
        server.close()


if __name__ == "__main__":
    main()

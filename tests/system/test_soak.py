"""Soak: many small jobs while workers keep dying and the coordinator restarts once."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import threading
import time

import pytest

import cwredis
import helpers
from helpers import TEST_LEASE_S, Outcomes, start_coordinator

pytestmark = [pytest.mark.system, pytest.mark.soak]

JOBS = 10_000
#: The session client killed and restarted during the storm: its jobs, and how often it is killed.
SESSION_JOBS = 300
SESSION_KILLS = 3
WORKERS = 3
CONCURRENCY = "2"
JOB_S = 0.005
#: The whole run must finish well inside the suite's budget.
DEADLINE_S = 120


@pytest.mark.timeout(DEADLINE_S + 60)
def test_soak_random_worker_kills_and_a_coordinator_restart(server, home, procs, keys):
    # A fresh seed each run (printed, and settable to replay a failure's kill schedule).
    seed = int(os.environ.get("CWREDIS_SOAK_SEED") or random.randrange(1 << 30))
    print(f"\nsoak seed: CWREDIS_SOAK_SEED={seed}")
    rng = random.Random(seed)
    coordinator = start_coordinator(procs, server, keys)
    workers = [procs.worker(server.url, "--concurrency", CONCURRENCY) for _ in range(WORKERS)]
    outcomes = Outcomes()
    stop = threading.Event()
    stats = {"kills": 0, "coordinator_restarts": 0}
    chaos_errors: list[BaseException] = []

    def chaos() -> None:
        """Every 1-2 s SIGKILL a random worker (with its jobs) and start a replacement;
        once, a third of the way in, kill -9 the coordinator and restart it a second later."""
        nonlocal coordinator
        try:
            while not stop.wait(rng.uniform(1.0, 2.0)):
                victim = workers.pop(rng.randrange(len(workers)))
                victim.signal_group(signal.SIGKILL)
                victim.wait(10)
                stats["kills"] += 1
                workers.append(procs.worker(server.url, "--concurrency", CONCURRENCY))
                if not stats["coordinator_restarts"] and outcomes.count() >= JOBS // 3:
                    coordinator.signal(signal.SIGKILL)
                    coordinator.wait(10)
                    if stop.wait(1.0):
                        break
                    coordinator = procs.coordinator(server.url, "--lease-timeout", str(TEST_LEASE_S))
                    stats["coordinator_restarts"] += 1
        except BaseException as exc:  # surfaced in the test thread
            chaos_errors.append(exc)

    markers = home.parent / "session-markers"
    markers.mkdir()
    session_runs: list = []

    def session_client() -> None:
        """A sweep in a session whose client is kill -9'd SESSION_KILLS times during the storm, then
        rerun to its end: that last attachment must get every result, once."""
        try:
            for kill in range(SESSION_KILLS + 1):
                proc = procs.run([sys.executable, str(helpers.SESSION_CLIENT), "soak-session", "default",
                                  str(markers), str(SESSION_JOBS), "0.01"], env={"CWREDIS_URL": server.url},
                                 name=f"session-client-{kill}")
                session_runs.append(proc)
                if kill < SESSION_KILLS:
                    if stop.wait(rng.uniform(0.5, 1.5)):
                        return
                    proc.kill()
                else:
                    proc.wait(DEADLINE_S)
        except BaseException as exc:
            chaos_errors.append(exc)

    started = time.monotonic()
    chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    chaos_thread.start()
    session_thread = threading.Thread(target=session_client, name="session-client", daemon=True)
    session_thread.start()
    try:
        with cwredis.ClientThread(outcomes.on_result, url=server.url, max_attempts=6,
                                  error_callback=outcomes.on_error) as t:
            # 5 ms each: short, yet the run lasts long enough for several kills.
            # max_attempts 6, not the default 3: a requeued job goes to the front of its queue, so the
            # next worker to be killed often holds the same early job; with ~17 kills in a run on a
            # loaded CI, one job was caught in three (failed 'lost', seen once). Exactly-once delivery
            # is what this test is about; the session client below keeps the default and checks <= 3 runs.
            expected = {t.submit(helpers.square_after, i, JOB_S): i * i for i in range(JOBS)}
            remaining = DEADLINE_S - (time.monotonic() - started)
            try:
                t.wait(timeout=remaining)
            except TimeoutError:
                raise AssertionError(f"only {outcomes.count()} of {JOBS} outcomes in {DEADLINE_S}s") from None
            session_thread.join(DEADLINE_S)
            stop.set()
            chaos_thread.join(30)
            time.sleep(0.5)
    finally:
        stop.set()
        chaos_thread.join(30)
        session_thread.join(30)
    seconds = time.monotonic() - started
    # Informational only (the log wording is not part of the contract).
    requeued = sum(int(n) for p in procs.started for n in re.findall(r"requeued (\d+) job", p.log()))
    print(f"jobs={JOBS}, kills={stats['kills']}, coordinator_restarts={stats['coordinator_restarts']}, "
          f"requeued_by_coordinator={requeued}, seconds={seconds:.1f}")
    assert not chaos_errors, chaos_errors
    outcomes.assert_exactly_once(expected)
    assert stats["kills"] >= 3, "the run was too short to inject faults"
    assert stats["coordinator_restarts"] == 1, "the coordinator was never killed and restarted"
    # The session: its last attachment got every result once, in order, and no job ran more often
    # than its attempts allow (3), whatever the kills of its clients and workers.
    last = session_runs[-1]
    assert len(session_runs) == SESSION_KILLS + 1 and last.returncode == 0, last.log()[-3000:]
    (line,) = [x for x in last.log().splitlines() if x.startswith("RESULTS ")]
    assert json.loads(line[len("RESULTS "):]) == [x * x for x in range(SESSION_JOBS)]
    ran = helpers.executions(markers)
    assert set(ran) == {str(x) for x in range(SESSION_JOBS)} and max(ran.values()) <= 3, ran

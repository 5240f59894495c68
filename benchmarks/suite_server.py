"""The server at scale (issue 13): the measurements of the server itself rather than of one client's jobs.

``ceiling`` (the server's jobs/s and CPU per job, 100 connections driving
the scripts), ``idle_workers`` (what 1,000 idle workers cost in AOF bytes
and CPU), ``mass_death`` (1,000 workers dying at once) and ``sentinel``
(what replica acknowledgement costs). Each needs a stack of its own shape
(no worker, a simulated fleet, sentinels) and samples the server directly;
``Suite`` takes them in as a base class, so ``run.py`` names them like the
others.
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
from pathlib import Path

from cwredis import config
from cwredis.keys import DEFAULT_KEYS
from results import fmt_run, log, summarize
from stack import Stack

#: ceiling: driver processes, and connections (threads) in each.
CEILING_DRIVERS, CEILING_CONNECTIONS_EACH = 4, 25
#: ceiling: jobs per script call in its second half (a busy client's submits and worker's records are batched).
CEILING_BATCH = 10
#: How long the ceiling's drivers get to start (interpreter, imports, connections) before they all begin.
CEILING_START_S = 8.0
#: idle_workers: simulated idle workers, in how many processes (``idle_fleet.py``), on a queue of their own.
IDLE_WORKERS, IDLE_FLEET_PROCS, IDLE_QUEUE = 1_000, 4, "idle-fleet"
IDLE_FLEET_PROGRAM = str(Path(__file__).resolve().parent / "idle_fleet.py")
#: mass_death: workers holding a job each that die at once.
DEAD_WORKERS = 1_000


class ServerBenchmarks:
    """The server-at-scale benchmarks, with ``Suite``'s options (set by ``Suite.__init__``)."""

    o: argparse.Namespace
    q: bool
    R: int
    layout: tuple[int, int]

    def ceiling(self) -> dict:
        """Server jobs/s and server CPU per job with 100 connections driving the scripts, one job per call and
        CEILING_BATCH per call, each without and with the AOF."""
        out: dict = {}
        for batch in (1, CEILING_BATCH):
            for aof in (False, True):
                runs = []
                suffix = (f"@b{batch}" if batch > 1 else "") + ("@aof" if aof else "")
                for i in range(self.R):
                    res = self._ceiling_one(aof, batch)
                    log(f"ceiling{suffix} run {i + 1}: {fmt_run(res)}")
                    runs.append(res)
                for k, v in summarize(runs).items():
                    out[k + suffix] = v
        out["connections"] = CEILING_DRIVERS * CEILING_CONNECTIONS_EACH
        return out

    def _ceiling_one(self, aof: bool, batch: int) -> dict:
        warm_s, measure_s = 3.0, 5.0 if self.q else 15.0
        with Stack(self.o, aof=aof, workers=None) as st:
            r = st.server.client()
            start_at = time.time() + CEILING_START_S
            stop_at = start_at + warm_s + measure_s + 2.0
            params = {"connections": CEILING_CONNECTIONS_EACH, "batch": batch, "start_at": start_at,
                      "stop_at": stop_at}
            replies: list[dict] = []
            failures: list[BaseException] = []

            def drive() -> None:
                try:
                    replies.append(st.client("ceiling", params, timeout=stop_at - time.time() + 120))
                except BaseException as exc:
                    failures.append(exc)

            drivers = [threading.Thread(target=drive, daemon=True) for _ in range(CEILING_DRIVERS)]
            for d in drivers:
                d.start()
            time.sleep(max(0.0, start_at + warm_s - time.time()))
            before = self._server_sample(r)
            time.sleep(measure_s)
            after = self._server_sample(r)
            for d in drivers:
                d.join()
            if failures:
                raise failures[0]
        jobs, cpu_s, wall_s = (after[k] - before[k] for k in ("done", "cpu_s", "t"))
        if jobs <= 0:
            raise RuntimeError("no job completed while measuring")
        return {"jobs_per_s": jobs / wall_s, "server_cpu_us_per_job": cpu_s * 1e6 / jobs,
                "server_cpu_share": cpu_s / wall_s, "jobs_per_server_cpu_s": jobs / cpu_s}

    @staticmethod
    def _server_sample(r) -> dict:
        """Jobs done so far, the server's CPU seconds (user + sys, all its threads), and the time."""
        cpu = r.info("cpu")
        done = int(r.hget(DEFAULT_KEYS.stats, "done") or 0)
        return {"done": done, "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
                "t": time.monotonic()}

    def idle_workers(self) -> dict:
        """1,000 idle workers (simulated, ``idle_fleet.py``): AOF bytes/s, server CPU, and a job's latency."""
        window_s = 30.0 if self.q else 160.0  # full: the descriptions' TTL refresh (every 5 leases) falls in it
        lat_n = 200 if self.q else 500
        lease_s = self.o.lease_timeout
        with Stack(self.o, aof=True, workers=(1, 1)) as st:
            alone = st.client("latency", {"n": lat_n, "warmup": 20}, timeout=600)
            log(f"idle_workers: latency with no idle worker: {fmt_run(alone)}")
            r = st.server.client()
            for i in range(IDLE_FLEET_PROCS):
                st.procs.run([sys.executable, IDLE_FLEET_PROGRAM, str(IDLE_WORKERS // IDLE_FLEET_PROCS), IDLE_QUEUE],
                             name=f"idle-fleet{i}")
            deadline = time.monotonic() + 180
            while r.zcard(DEFAULT_KEYS.idle(IDLE_QUEUE)) < IDLE_WORKERS:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {r.zcard(DEFAULT_KEYS.idle(IDLE_QUEUE))} simulated workers parked")
                time.sleep(0.5)
            time.sleep(lease_s / config.RENEWALS_PER_LEASE + 3)  # past the start-up writes and first heartbeats
            workers = r.zcard(DEFAULT_KEYS.workers)  # the fleet, the stack's real worker
            leases = dict(r.zrange(DEFAULT_KEYS.workers, 0, -1, withscores=True))
            aof0, before = aof_bytes(st.server.dir), self._server_sample(r)
            time.sleep(window_s)
            aof1, after = aof_bytes(st.server.dir), self._server_sample(r)
            renewed = [score - leases.get(w, score) for w, score in r.zrange(DEFAULT_KEYS.workers, 0, -1,
                                                                               withscores=True)]
            among = st.client("latency", {"n": lat_n, "warmup": 20}, timeout=600)
            log(f"idle_workers: latency among {IDLE_WORKERS} idle workers: {fmt_run(among)}")
        wall_s = after["t"] - before["t"]
        res = {"aof_bytes_per_s_per_worker": (aof1 - aof0) / wall_s / workers,
               "aof_bytes_per_s": (aof1 - aof0) / wall_s,
               "server_cpu_share": (after["cpu_s"] - before["cpu_s"]) / wall_s,
               "min_lease_renewed_s": min(renewed) / 1000,
               "p50_ms": among["p50_ms"], "p99_ms": among["p99_ms"],
               "alone_p50_ms": alone["p50_ms"], "alone_p99_ms": alone["p99_ms"]}
        return dict(summarize([res]), workers=workers, window_s=window_s, lease_s=lease_s)

    def mass_death(self) -> dict:
        """1,000 workers holding a job each die at once: seconds until the coordinator has requeued every job."""
        opts = copy.copy(self.o)
        opts.lease_timeout = 5.0 if self.q else self.o.lease_timeout
        runs = []
        for i in range(self.R):
            with Stack(opts, workers=None) as st:
                res = st.client("mass_death", {"n": DEAD_WORKERS, "lease_s": opts.lease_timeout},
                                timeout=4 * opts.lease_timeout + 120)
            log(f"mass_death run {i + 1}: {fmt_run(res)}")
            runs.append(res)
        return dict(summarize(runs), n=DEAD_WORKERS, lease_s=opts.lease_timeout)


    def sentinel(self) -> dict:
        """Through Sentinel (a primary, two replicas, three sentinels; every batch waits for WAIT 1) beside the
        same primary's own redis:// URL (the client does not wait), paired per run; workers on Sentinel in
        both. ``wait_ms@500``: what WAIT adds to one pipelined batch of 500 writes."""
        n = 2_000 if self.q else 20_000
        runs = []
        with Stack(self.o, workers=self.layout, sentinel=True) as st:
            direct_url = st.server.url
            for i in range(self.R):
                plain = st.client("executor_map", {"n": n, "warmup": 50}, timeout=600, url=direct_url)
                res = st.client("executor_map", {"n": n, "warmup": 50}, timeout=600)
                plain_submit = st.client("client_submit", {"n": 5_000, "warmup": 50}, timeout=600, url=direct_url)
                submit = st.client("client_submit", {"n": 5_000, "warmup": 50}, timeout=600)
                wait = st.client("wait_cost", {"batches": 200, "size": 500}, timeout=600)
                row = {"map_jobs_per_s": res["jobs_per_s"], "map_direct_jobs_per_s": plain["jobs_per_s"],
                       "map_over_direct": res["jobs_per_s"] / plain["jobs_per_s"],
                       "submit_calls_per_s": submit["submit_calls_per_s"],
                       "submit_direct_calls_per_s": plain_submit["submit_calls_per_s"],
                       "submit_added_ms": 1000 / submit["submit_calls_per_s"]
                       - 1000 / plain_submit["submit_calls_per_s"], **wait}
                log(f"sentinel run {i + 1}: {fmt_run(row)}")
                runs.append(row)
        return dict(summarize(runs), n=n)


def aof_bytes(data_dir: Path) -> int:
    """The size of a server's append-only files (base and increments)."""
    return sum(p.stat().st_size for p in Path(data_dir).rglob("*.aof*") if p.is_file())

"""The measurements, parent side: what each one runs, on which stack, with what N and how often.

Each method of ``Suite`` is one benchmark name of ``run.py`` and returns its
table rows: metric -> {median, min, max, runs}, plus plain numbers such as
``n``. The client side of each run is a role in ``throughput.py``,
``latency.py`` or ``memory.py``. Keep N, warm-ups and the bare-loop floor
beside each latency run as they are, so numbers compare across versions.
"""

from __future__ import annotations

import copy
import statistics
import sys
import threading
import time
from pathlib import Path

from cwredis import config
from cwredis.keys import DEFAULT_KEYS
import hops
from stack import Stack

#: The benchmark names, in the order a full run takes them.
ALL = ["executor_map", "client_submit", "latency", "fanout", "memory", "scale", "aof",
       "bounded_client_memory", "session_map", "session_memory", "resume", "ceiling", "idle_workers",
       "mass_death", "sentinel", "large_args", "large_results", "latency_hops"]

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


def summarize(runs: list[dict]) -> dict:
    """Per metric over the runs: median/min/max/runs for numbers, runs alone for anything else."""
    out: dict = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if key in r]
        if all(isinstance(v, (int, float)) for v in vals):
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                        "runs": vals}
        else:
            out[key] = {"runs": vals}
    return out


def derived(value: float) -> dict:
    """A number computed from medians, shaped like a summarized metric."""
    return {"median": value, "min": value, "max": value, "runs": [value]}


def fmt_num(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def fmt_run(res: dict) -> str:
    return ", ".join(f"{k}={fmt_num(v)}" for k, v in res.items())


def log(msg: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"  {msg}", file=sys.stderr, flush=True)


class Suite:
    """The benchmarks, run with ``run.py``'s options (``quick``, ``runs``, worker layouts...)."""

    def __init__(self, opts) -> None:
        self.o = opts
        self.q = opts.quick
        self.R = opts.runs
        self.layout = (opts.workers, opts.concurrency)

    def repeat(self, st: Stack, role: str, params: dict, timeout: float) -> list[dict]:
        out = []
        for i in range(self.R):
            res = st.client(role, params, timeout)
            log(f"{role} run {i + 1}: {fmt_run(res)}")
            out.append(res)
        return out

    def executor_map(self, aof=False) -> dict:
        n = 2_000 if self.q else 20_000
        with Stack(self.o, aof=aof, workers=self.layout) as st:
            runs = self.repeat(st, "executor_map", {"n": n, "warmup": 50}, timeout=600)
        return dict(summarize(runs), n=n)

    def client_submit(self) -> dict:
        n = 5_000
        with Stack(self.o, workers=self.layout) as st:
            runs = self.repeat(st, "client_submit", {"n": n, "warmup": 50}, timeout=600)
        return dict(summarize(runs), n=n)

    def latency(self, aof=False) -> dict:
        """Sequential submit-to-callback latency, each run next to a run of the bare loop (the floor now)."""
        n = 1_000
        runs = []
        with Stack(self.o, aof=aof, workers=self.layout) as st:
            for i in range(self.R):
                bare = st.client("bare_latency", {"n": n, "warmup": 20}, timeout=600)
                res = st.client("latency", {"n": n, "warmup": 20}, timeout=600)
                res.update(bare_p50_ms=bare["p50_ms"], bare_p99_ms=bare["p99_ms"],
                           p50_over_bare=res["p50_ms"] / bare["p50_ms"])
                log(f"latency run {i + 1}: {fmt_run(res)}")
                runs.append(res)
        return dict(summarize(runs), n=n)

    def latency_hops(self) -> dict:
        """The latency role traced hop by hop (hops.py), beside the bare loop; each run its own trace files."""
        n = 300 if self.q else 1_000
        runs = []
        st = Stack(self.o, workers=self.layout)
        trace_dir = st.dir / "hops"  # the workers keep their files open: one directory for every run
        trace_dir.mkdir()
        st.procs.env.update(hops.trace_env(trace_dir))  # before the workers start
        with st:
            for i in range(self.R):
                since_ns = time.perf_counter_ns()  # the machine's monotonic clock, as the marks'
                bare = st.client("bare_latency", {"n": n, "warmup": 20}, timeout=600)
                st.client("latency_hops", {"n": n, "warmup": 20}, timeout=600)
                res = dict(hops.hop_table(trace_dir, since_ns=since_ns), bare_p50_ms=bare["p50_ms"])
                if not res["jobs_traced"]:
                    raise RuntimeError(f"latency_hops: no job traced ({res.get('missing_hooks', 'no hook missing')})")
                log(f"latency_hops run {i + 1}: {fmt_run(res)}")
                runs.append(res)
        log("hops:\n" + hops.describe())
        return dict(summarize(runs), n=n)

    def fanout(self) -> dict:
        slots = self.o.fanout_workers * self.o.fanout_concurrency
        n, secs = 400, 0.05
        with Stack(self.o, workers=(self.o.fanout_workers, self.o.fanout_concurrency)) as st:
            runs = self.repeat(st, "fanout", {"n": n, "seconds": secs, "slots": slots}, timeout=300)
        return dict(summarize(runs), n=n, slots=slots)

    def memory(self) -> dict:
        n = 10_000
        runs = []
        for i in range(self.R):
            with Stack(self.o, workers=None) as st:  # coordinator, no worker
                res = st.client("memory", {"n": n}, timeout=600)
            log(f"memory run {i + 1}: {fmt_run(res)}")
            runs.append(res)
        return dict(summarize(runs), n=n)

    def _scale_one(self, n: int) -> dict:
        with Stack(self.o, workers=None) as st:
            return st.client("scale", {"n": n}, timeout=max(300, n / 50),
                             on_event=lambda _event: st.start_workers(*self.layout))

    def scale(self) -> dict:
        big = 10_000 if self.q else 100_000
        out: dict = {}
        medians = {}
        for n in (1_000, big):
            runs = []
            for i in range(self.R):
                res = self._scale_one(n)
                log(f"scale n={n} run {i + 1}: {fmt_run(res)}")
                runs.append(res)
            s = summarize(runs)
            for k, v in s.items():
                out[f"{k}@{n}"] = v
            medians[n] = s["drain_jobs_per_s"]["median"]
        out["drain_ratio_big/small"] = derived(medians[big] / medians[1_000])
        return out

    def aof(self) -> dict:
        out: dict = {}
        for k, v in self.executor_map(aof=True).items():
            out[f"executor_map.{k}"] = v
        for k, v in self.latency(aof=True).items():
            out[f"latency.{k}"] = v
        return out

    def session_map(self) -> dict:
        """Executor.map in a session (each run a new one: all computed) beside one without, paired per run."""
        n = 2_000 if self.q else 20_000
        runs = []
        with Stack(self.o, workers=self.layout) as st:
            for i in range(self.R):
                plain = st.client("executor_map", {"n": n, "warmup": 50}, timeout=600)
                res = st.client("executor_map", {"n": n, "warmup": 50, "session": f"bench-{i}-{id(st)}"},
                                timeout=600)
                res.update(plain_jobs_per_s=plain["jobs_per_s"],
                           session_over_plain=res["jobs_per_s"] / plain["jobs_per_s"])
                log(f"session_map run {i + 1}: {fmt_run(res)}")
                runs.append(res)
        return dict(summarize(runs), n=n)

    def session_memory(self) -> dict:
        """Redis bytes per queued job in a session, beside the same without one."""
        n = 10_000
        runs = []
        for i in range(self.R):
            with Stack(self.o, workers=None) as st:
                plain = st.client("memory", {"n": n}, timeout=600)
            with Stack(self.o, workers=None) as st:
                res = st.client("memory", {"n": n, "session": f"bench-mem-{i}"}, timeout=600)
            row = {"bytes_per_job": res["bytes_per_job"], "plain_bytes_per_job": plain["bytes_per_job"],
                   "extra_bytes_per_job": res["bytes_per_job"] - plain["bytes_per_job"]}
            log(f"session_memory run {i + 1}: {fmt_run(row)}")
            runs.append(row)
        return dict(summarize(runs), n=n)

    def resume(self) -> dict:
        """A finished sweep of n jobs in a session, rerun by fresh clients: results/s and peak RSS."""
        n = 10_000 if self.q else 100_000
        session = f"bench-resume-{id(self)}"
        with Stack(self.o, workers=self.layout) as st:
            fill = st.client("session_fill", {"n": n, "session": session}, timeout=max(600, n / 50))
            log(f"resume: filled {n} jobs in {fill['seconds']:.1f}s")
            runs = self.repeat(st, "resume", {"n": n, "session": session}, timeout=600)
        return dict(summarize(runs), n=n)

    def bounded_client_memory(self) -> dict:
        sizes = (10_000, 100_000) if self.q else (100_000, 1_000_000)
        out: dict = {}
        peaks = {}
        with Stack(self.o, workers=self.layout) as st:
            for n in sizes:
                res = st.client("bounded", {"n": n}, timeout=max(600, n / 20))
                log(f"bounded n={n}: {fmt_run(res)}")
                for k, v in summarize([res]).items():
                    out[f"{k}@{n}"] = v
                peaks[n] = res["peak_rss_mb"] - res["start_peak_mb"]
        out["peak_growth_mb_ratio_big/small"] = derived(
            peaks[sizes[1]] / peaks[sizes[0]] if peaks[sizes[0]] > 0 else float("nan"))
        return out

    # -- the server at scale (issue 13) ----------------------------------------------------------

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

    # -- large payloads (issue 13) ---------------------------------------------------------------

    def _payload(self, role: str) -> dict:
        """200 x 1 MiB through ``role`` (MiB/s), each run between two runs of the bare LPUSH + RPOP floor on
        the same server; the floor is their mean (this VM's speed drifts within seconds)."""
        n, size = (50 if self.q else 200), 1 << 20
        runs = []
        with Stack(self.o, workers=self.layout) as st:
            for i in range(self.R):
                before = st.client("bare_payload", {"n": n, "size": size}, timeout=600)
                res = st.client(role, {"n": n, "size": size, "warmup": 4}, timeout=600)
                after = st.client("bare_payload", {"n": n, "size": size}, timeout=600)
                bare = (before["mib_per_s"] + after["mib_per_s"]) / 2
                res.update(bare_mib_per_s=bare, over_bare=res["mib_per_s"] / bare)
                log(f"{role} run {i + 1}: {fmt_run(res)}")
                runs.append(res)
        return dict(summarize(runs), n=n, size=size)

    def large_args(self) -> dict:
        return self._payload("large_args")

    def large_results(self) -> dict:
        return self._payload("large_results")


def aof_bytes(data_dir: Path) -> int:
    """The size of a server's append-only files (base and increments)."""
    return sum(p.stat().st_size for p in Path(data_dir).rglob("*.aof*") if p.is_file())

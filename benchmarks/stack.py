"""One benchmark stack on the shared process harness, and its client runs.

A stack is a server, a ``cw-coordinator`` and (usually) workers in a temp dir,
started through ``tests/harness.py`` (the system tests' harness), each in its
own process group, all stopped by PID when the stack closes: at the end, on
an error or on Ctrl-C. Every measurement runs in a fresh client subprocess
(``client.py ROLE PARAMS``), so its peak RSS is its own; its result comes
back as a ``protocol`` line on stdout.

The URL (password included) reaches every process in ``CWREDIS_URL``, never
on a command line; roles run with this interpreter and the caller's
``PYTHONPATH``, so ``PYTHONPATH=old/`` measures an old checkout's package.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import protocol
from cluster_harness import LoopbackCluster
from harness import Proc, Procs, Server, admin_json, log_tail
from sentinel_set import SentinelSet

#: The client program every measurement runs in.
CLIENT_PROGRAM = str(Path(__file__).resolve().parent / "client.py")
#: How long a stopping role gets between SIGTERM and SIGKILL.
ROLE_STOP_GRACE_S = 10.0
#: How long a finished or timed-out client gets between SIGTERM and SIGKILL.
CLIENT_STOP_GRACE_S = 5.0
#: How long after its own timeout a client is stopped from outside.
CLIENT_KILL_MARGIN_S = 10.0
#: How long to wait for ``cw-admin status`` to count the workers started.
WORKERS_SEEN_TIMEOUT_S = 30.0


class Stack:
    """A server + coordinator (+ workers) in a temp dir; a context manager that stops them all."""

    def __init__(self, opts, *, aof: bool = False, workers: tuple[int, int] | None = None,
                 sentinel: bool = False) -> None:
        """``workers``: (processes, --concurrency each) started with the stack, or None for none.
        ``sentinel``: a primary with two replicas and three sentinels (``server`` is the primary), and
        every role on the ``redis+sentinel://`` URL."""
        self.opts = opts
        self.aof = aof
        self.layout = workers
        self.dir = Path(tempfile.mkdtemp(prefix="cwbench-"))
        home = self.dir / "home"
        home.mkdir()
        self.env = {"CWREDIS_HOME": str(home)}
        if opts.insecure:
            self.env["CWREDIS_INSECURE"] = "1"
        else:
            self.env["CWREDIS_SECRET"] = secrets.token_urlsafe(32)
        # --cluster: a loopback 3-primary Valkey Cluster; the URL names a primary not serving the slot.
        # sentinel: a primary, two replicas and three sentinels; the URL is the Sentinel set's.
        self.sentinel_set = SentinelSet(self.dir) if sentinel else None
        self.server: Server | LoopbackCluster = (
            self.sentinel_set.primary if self.sentinel_set
            else LoopbackCluster(self.dir, aof=aof) if getattr(opts, "cluster", False)
            else Server(self.dir, aof=aof))
        self.url = self.sentinel_set.url if self.sentinel_set else self.server.url
        # cwd: the temp dir, so no checkout's cwredis/ shadows the one PYTHONPATH names.
        self.procs = Procs(self.dir / "logs", env=dict(self.env, CWREDIS_URL=self.url), cwd=self.dir)
        self.coordinator: Proc | None = None
        self.workers: list[Proc] = []
        self.last_client: Proc | None = None  # what --profile attaches py-spy to

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Stack:
        try:
            (self.sentinel_set or self.server).start()
            self._start_coordinator()
            if self.layout:
                self.start_workers(*self.layout)
            return self
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.procs.stop_all(ROLE_STOP_GRACE_S)
        (self.sentinel_set or self.server).close()
        if not self.opts.keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start_coordinator(self) -> None:
        # A coordinator writes a secret into its home when none is set: with --insecure it gets a home
        # of its own, or the workers and clients would find that secret and sign after all.
        env = None
        if self.opts.insecure:
            own = self.dir / "coordinator-home"
            own.mkdir(mode=0o700)
            env = {"CWREDIS_HOME": str(own)}
        self.coordinator = self.procs.role("cwredis.coordinator", self.url, "--lease-timeout",
                                           str(self.opts.lease_timeout), name="coordinator", env=env)
        time.sleep(0.3)
        if not self.coordinator.alive():
            raise RuntimeError(f"cw-coordinator exited with {self.coordinator.returncode}:\n"
                               f"{log_tail(self.coordinator.log_path, 25)}")

    def start_workers(self, count: int, concurrency: int) -> None:
        for _ in range(count):
            self.workers.append(self.procs.role("cwredis.worker", self.url, "--concurrency", str(concurrency),
                                                name=f"worker{len(self.workers)}"))
        self.wait_workers(len(self.workers))

    def wait_workers(self, count: int, timeout_s: float = WORKERS_SEEN_TIMEOUT_S) -> None:
        """Until ``cw-admin status`` counts ``count`` live workers (best effort: warn and go on)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for worker in self.workers:
                if not worker.alive():
                    raise RuntimeError(f"{worker.name} exited with {worker.returncode}:\n"
                                       f"{log_tail(worker.log_path, 25)}")
            try:
                status = admin_json(self.url, "status", timeout=20)
            except Exception:  # a slow or failing cw-admin only delays the check
                status = None
            if isinstance(status, dict) and int(status.get("workers", 0)) >= count:
                return
            time.sleep(0.1)
        print(f"  [warn] {count} workers not seen by cw-admin status within {timeout_s:.0f}s; going on",
              file=sys.stderr)

    def role_pids(self) -> dict[str, int]:
        """PID of each long-running process of the stack, by name (valkey, coordinator, worker0...)."""
        pids = {"valkey": self.server.pid} if self.server.pid is not None else {}
        pids.update((proc.name, proc.pid) for proc in [self.coordinator, *self.workers] if proc is not None)
        return pids

    def dead_role(self) -> tuple[str, str] | None:
        """(name, log tail) of the first stack process that has exited, or None."""
        if not self.server.alive():
            return "valkey", self.server.log_tail()
        for proc in [self.coordinator, *self.workers]:
            if proc is not None and not proc.alive():
                return f"{proc.name} (exit {proc.returncode})", log_tail(proc.log_path)
        return None

    # ------------------------------------------------------------------- clients

    def client(self, role: str, params: dict, timeout: float,
               on_event: Callable[[dict], None] | None = None, url: str | None = None) -> dict:
        """Run one measurement in a fresh client subprocess; return its result dict. ``url``: another URL
        of the stack's server for this client (default: the stack's)."""
        params = dict(params, timeout=timeout)
        proc = self.procs.run([sys.executable, CLIENT_PROGRAM, role, json.dumps(params)],
                              env={"CWREDIS_URL": url} if url else None, name=f"client-{role}",
                              capture_stdout=True)
        self.last_client = proc
        killer = threading.Timer(timeout + CLIENT_KILL_MARGIN_S, proc.stop, args=(2.0,))
        killer.daemon = True
        killer.start()
        died: list[tuple[str, str]] = []

        def watchdog() -> None:  # a dead server/coordinator/worker fails the run now, not at the timeout
            while proc.alive():
                dead = self.dead_role()
                if dead is not None:
                    died.append(dead)
                    proc.stop(2.0)
                    return
                time.sleep(0.2)

        threading.Thread(target=watchdog, daemon=True).start()
        result = None
        try:
            assert proc.popen.stdout is not None
            for raw in proc.popen.stdout:
                kind, payload = protocol.parse(raw)
                if kind == protocol.EVENT and on_event is not None:
                    on_event(payload)
                elif kind == protocol.RESULT:
                    result = payload
            proc.popen.wait()
        finally:
            killer.cancel()
            proc.stop(CLIENT_STOP_GRACE_S)
        if died:
            name, tail = died[0]
            raise RuntimeError(f"{name} died during {role}:\n{tail}")
        if result is None:
            dead = self.dead_role()
            if dead is not None:
                raise RuntimeError(f"{dead[0]} died:\n{dead[1]}")
            raise RuntimeError(f"client {role} failed (exit {proc.returncode}):\n{log_tail(proc.log_path, 30)}")
        return result

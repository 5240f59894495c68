"""A whole cwredis on one machine: ``with cwredis.LocalCluster(workers=4) as url:`` and ``cw-local``.

Starts a coordinator with its embedded server in a private temporary
``$CWREDIS_HOME`` (or a given one) plus worker processes, and stops all of
them -- by PID -- when the block exits, raises or is interrupted. The
coordinator writes the URL and a signing secret in that home, where the
workers and the clients of this process find them: signed, with no setup.
The roles start with ``python -P``, so a file in the working directory (a
user's ``glob.py``) never shadows a module they import, and get the URL (and
its password) from the home, never on a command line.

The roles run in a process group of their own: a Ctrl-C at the terminal
reaches ``cw-local`` and the user's command only, and :meth:`LocalCluster.stop`
then stops the roles in order -- workers first (they take no new job and
exit), then the coordinator, which stops its server -- so no worker is left
talking to a server that is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .cli import version_line
from .errors import ConfigError
from .safefiles import read_private

#: How long to wait for the embedded server's URL file.
START_TIMEOUT_S = 60.0


class LocalCluster:
    """Coordinator + embedded server + ``workers`` worker processes; the URL is the with-value."""

    def __init__(self, workers: int = 2, *, concurrency: int = 1, home: str | os.PathLike[str] | None = None,
                 lease_timeout: float | None = None, queues: Sequence[str] = ()) -> None:
        self.workers = workers
        self.concurrency = concurrency
        self.lease_timeout = lease_timeout
        self.queues = list(queues)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._home = Path(home) if home is not None else None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._saved_env: dict[str, str | None] = {}
        self.url = ""

    @property
    def home(self) -> Path:
        assert self._home is not None
        return self._home

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CWREDIS_HOME"] = str(self.home)
        env.pop("CWREDIS_URL", None)
        env.pop("CWREDIS_SECRET", None)
        return env

    def start(self) -> str:
        if self._home is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cwredis-")
            self._home = Path(self._tmp.name)
        url_file = self.home / "url"
        url_file.unlink(missing_ok=True)
        env = self._env()
        coordinator = [sys.executable, "-P", "-m", "cwredis.coordinator"]
        if self.lease_timeout:
            coordinator += ["--lease-timeout", str(self.lease_timeout)]
        self._procs.append(self._spawn(coordinator, env))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not url_file.exists():
            if (code := self._procs[0].poll()) is not None or time.monotonic() > deadline:
                self.stop()
                why = f"it exited with code {code}" if code is not None else f"no URL within {START_TIMEOUT_S:g}s"
                # "see its log above" pointed at nothing in a notebook: say where the log really is.
                raise ConfigError(f"the coordinator did not start its server ({why}); its log is on this "
                                  "process's stderr (in Jupyter: the terminal running the notebook server)")
            time.sleep(0.05)
        self.url = (read_private(url_file, "URL file") or b"").decode().strip()
        worker = [sys.executable, "-P", "-m", "cwredis.worker", "--concurrency", str(self.concurrency)]
        for queue in self.queues:
            worker += ["--queue", queue]
        for _ in range(self.workers):
            self._procs.append(self._spawn(worker, env))
        # Clients in this process find the cluster through the environment.
        for name, value in (("CWREDIS_HOME", str(self.home)), ("CWREDIS_URL", None), ("CWREDIS_SECRET", None)):
            self._saved_env[name] = os.environ.get(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        return self.url

    @staticmethod
    def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        # process_group=0: out of the terminal's foreground group, so a Ctrl-C does not stop the
        # coordinator (and its server) under the workers' feet; stop() signals each role in order.
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, process_group=0)

    def stop(self) -> None:
        """Workers first (graceful: they finish running jobs), then the coordinator and its server."""
        workers, coordinator = self._procs[1:], self._procs[:1]
        for group in (workers, coordinator):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs = []
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._home = None

    def __enter__(self) -> str:
        try:
            return self.start()
        except BaseException:  # Ctrl-C while starting: __exit__ will not run, so stop what did start
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``cw-local -n 4 -- python script.py``: run a command against a private local cluster."""
    parser = argparse.ArgumentParser(prog="cw-local", description="Run COMMAND with a private cwredis on this machine.")
    parser.add_argument("--version", action="version", version=version_line("cw-local"))
    parser.add_argument("-n", "--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="jobs at once per worker")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    try:
        with LocalCluster(workers=args.workers, concurrency=args.concurrency):
            code = _run_command(command)
            # The cluster now stops in order (LocalCluster.stop); a second Ctrl-C must not cut that short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return code
    except ConfigError as exc:
        print(f"cw-local: {exc}", file=sys.stderr)
        return 1


def _run_command(command: list[str]) -> int:
    """Run the user's command to its end; its exit status as a shell reports it (128 + signal).

    A Ctrl-C reaches the command too (same process group): we wait for it
    to finish its own way (a client cancels or reports its jobs) rather
    than kill it, then the cluster stops.
    """
    proc = subprocess.Popen(command)
    while True:
        try:
            code = proc.wait()
            return 128 - code if code < 0 else code
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())

"""The process a worker runs jobs in: ``python -m cwredis.child FD_IN FD_OUT FD_CONTROL``.

A child lives across jobs (no fork per job) and keeps the functions it has
unpickled, keyed by their content digest, so a map over 100,000 items
unpickles its function once. The supervising worker has already checked
every signature; the child only decodes and runs.

Messages (multiprocessing Connection framing over three pipes)::

    in : ("config", url, secret, namespace, worker_id, queues)    first: for recording directly
         ("run", job_id, fn_digest, fn_pickle | None, args_pickle, env_digest, env_json | None, capture,
          direct)              direct: None, or (token, client_id, repark): record the outcome yourself
    ctl: ("unsend", job_id)    give that job back if it has not started
    out: ("progress", job_id, fraction, message | None)      any number, while the job runs
         ("unsent", job_id, given_back)
         ("resend", job_id)    the function or environment was left out but is not held here
         ("ok", job_id, result_pickle, output)
         ("err", job_id, reason, error_line, traceback_text, output)
         ("recorded", job_id, flag, room)   recorded directly: 1, or 0 refused; the worker's room after
                               re-parking (0: its queues were not empty). If the child cannot reach
                               Redis it sends "ok"/"err" instead, for the worker to record.

With ``capture``, what the job writes to sys.stdout/sys.stderr is also kept
(the last OUTPUT_TAIL_BYTES) and returned as ``output`` for the client.

The child ignores SIGINT/SIGTERM (a Ctrl-C to the worker's process group is
for the supervisor to handle gracefully) and dies with its supervisor
(PR_SET_PDEATHSIG), so a SIGKILLed worker leaves no job running behind.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import logging
import os
import pickle
import select
import signal
import sys
import threading
import traceback
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any, Callable

import cloudpickle

from . import jobcontext
from .outcomes import DirectRecorder
from .serialization import Corrupt, error_line, parse_env

log = logging.getLogger("cwredis.child")

#: Unpickled functions kept per child.
FUNCTION_CACHE_SIZE = 256

_PR_SET_PDEATHSIG = 1

#: How much of a job's output is kept for the client and for failed jobs.
OUTPUT_TAIL_BYTES = 64 * 1024


class _Tee(io.TextIOBase):
    """Passes writes on to the worker's stream and keeps the tail for the client."""

    def __init__(self, stream: Any, sink: list[str]) -> None:
        self._stream = stream
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._sink.append(text)
        if len(self._sink) > 256:  # keep the buffer a bounded tail
            joined = "".join(self._sink)[-OUTPUT_TAIL_BYTES:]
            self._sink[:] = [joined]
        try:
            self._stream.write(text)
        except (OSError, ValueError):
            pass
        return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker's pipe EOF still stops us between jobs
        pass


class JobRunner:
    """Runs jobs one at a time, caching functions and the applied environment."""

    def __init__(self) -> None:
        self._functions: OrderedDict[str, Callable[..., Any]] = OrderedDict()
        self._env_digest: str | None = None
        self._home_cwd = os.getcwd()
        self._home_path = list(sys.path)
        self._warned_cwds: set[str] = set()

    def _apply_env(self, digest: str, env_json: bytes | None) -> None:
        if digest == self._env_digest or env_json is None:
            return
        self._env_digest = None  # until this one is applied
        cwd, path = parse_env(env_json)
        if os.path.isdir(cwd):
            os.chdir(cwd)
        else:
            if cwd not in self._warned_cwds:
                self._warned_cwds.add(cwd)
                log.warning("client working directory %s does not exist here; running in %s",
                            cwd, self._home_cwd)
            os.chdir(self._home_cwd)
        # The client's entries that exist here, in its order, then ours.
        client_path = [p for p in path if p == "" or os.path.exists(p)]
        sys.path[:] = client_path + [p for p in self._home_path if p not in client_path]
        self._env_digest = digest

    def _function(self, digest: str, blob: bytes | None) -> Callable[..., Any]:
        fn = self._functions.get(digest)
        if fn is not None:
            self._functions.move_to_end(digest)
            return fn
        assert blob is not None  # run() asked for a resend otherwise
        fn = cloudpickle.loads(blob)
        self._functions[digest] = fn
        if len(self._functions) > FUNCTION_CACHE_SIZE:
            self._functions.popitem(last=False)
        return fn

    def run(self, message: tuple[Any, ...], report: Callable[[str, float, str | None], None]) -> tuple[Any, ...]:
        """Run one job; the reply tuple ends with the captured output ('' without capture)."""
        job_id, fn_digest, fn_blob, env_digest, env_json, capture = (message[1], message[2], message[3],
                                                                      message[5], message[6], message[7])

        if (fn_blob is None and fn_digest not in self._functions) or \
                (env_json is None and env_digest != self._env_digest):
            return ("resend", job_id)
        sink: list[str] = []
        jobcontext._enter(job_id, report)
        try:
            if capture:
                with contextlib.redirect_stdout(_Tee(sys.stdout, sink)), \
                        contextlib.redirect_stderr(_Tee(sys.stderr, sink)):
                    reply = self._run(message)
            else:
                reply = self._run(message)
        finally:
            jobcontext._leave()
        return (*reply, "".join(sink)[-OUTPUT_TAIL_BYTES:])

    def _run(self, message: tuple[Any, ...]) -> tuple[Any, ...]:
        _, job_id, fn_digest, fn_blob, args_blob, env_digest, env_json = message[:7]
        try:
            self._apply_env(env_digest, env_json)
        except Corrupt as exc:
            return ("err", job_id, "corrupt", str(exc), str(exc))
        try:
            fn = self._function(fn_digest, fn_blob)
        except (ImportError, AttributeError) as exc:  # the worker lacks a module the function needs
            return ("err", job_id, "exception", error_line(exc), traceback.format_exc())
        except Exception as exc:
            return ("err", job_id, "corrupt", f"function could not be unpickled: {error_line(exc)}",
                    traceback.format_exc())
        try:
            args, kwargs = pickle.loads(args_blob)
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise TypeError("arguments record has the wrong shape")
        except (ImportError, AttributeError) as exc:
            return ("err", job_id, "exception", error_line(exc), traceback.format_exc())
        except Exception as exc:
            return ("err", job_id, "corrupt", f"arguments could not be unpickled: {error_line(exc)}",
                    traceback.format_exc())
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt in a job fail the job, not the child
            # tb_next: start the traceback at the user's function, not at this frame.
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            return ("err", job_id, "exception", error_line(exc), text)
        try:
            return ("ok", job_id, cloudpickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            line = f"SerializationError: cannot pickle the result {type(result).__name__}: {error_line(exc)}"
            return ("err", job_id, "exception", line, traceback.format_exc())


class Mailbox:
    """Jobs written to us, and the "unsend" protocol, with no hand-off between threads per job.

    The main thread waits for the job pipe to be readable, then reads it
    under ``_lock``. Requests to give a job back come on a pipe of their own,
    which a watcher thread reads -- it wakes only for those, never per job --
    and answers, while the main thread runs a job: it reads whatever jobs are
    waiting (under ``_lock``) and takes the one asked for out of the queue.
    Neither thread holds ``_lock`` while it blocks.
    """

    def __init__(self, inbox: Connection, control: Connection, send: Callable[[tuple[Any, ...]], None]) -> None:
        self._inbox = inbox
        self._control = control
        self._send = send
        self._jobs: collections.deque[tuple[Any, ...] | None] = collections.deque()
        self._lock = threading.Lock()
        # select.poll, not Connection.poll: that builds a selector on every call.
        self._poller = select.poll()
        self._poller.register(inbox.fileno(), select.POLLIN)
        threading.Thread(target=self._watch, name="cw-mailbox", daemon=True).start()

    def _read_waiting(self) -> None:
        """Queue every message waiting in the job pipe (call with _lock held); None once it closed."""
        while self._poller.poll(0):
            try:
                self._jobs.append(self._inbox.recv())
            except (EOFError, OSError):
                self._jobs.append(None)  # the worker is gone or closed us
                return

    def _watch(self) -> None:
        while True:
            try:
                _, job_id = self._control.recv()
            except (EOFError, OSError):
                return
            with self._lock:
                if self._jobs and self._jobs[-1] is None:
                    return
                self._read_waiting()
                waiting = next((m for m in self._jobs if m is not None and m[1] == job_id), None)
                if waiting is not None:
                    self._jobs.remove(waiting)
            self._send(("unsent", job_id, waiting is not None))

    def next(self) -> tuple[Any, ...] | None:
        """The next job to run; None once the worker closed us."""
        while True:
            with self._lock:
                if self._jobs:
                    return self._jobs.popleft()
            self._poller.poll()
            with self._lock:
                self._read_waiting()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    logging.basicConfig(level=os.environ.get("CWREDIS_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    inbox = Connection(int(argv[0]), writable=False)
    outbox = Connection(int(argv[1]), readable=False)
    control = Connection(int(argv[2]), writable=False)
    runner = JobRunner()
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            outbox.send(message)

    def report(job_id: str, fraction: float, text: str | None) -> None:
        send(("progress", job_id, fraction, text))

    mailbox = Mailbox(inbox, control, send)
    recorder: DirectRecorder | None = None
    while True:
        message = mailbox.next()
        if message is None:
            return  # the worker is gone or closed us: exit quietly
        if message[0] == "config":
            recorder = DirectRecorder(*message[1:])
            continue
        reply = runner.run(message, report)
        direct = message[8]
        if direct is not None and recorder is not None and reply[0] in ("ok", "err"):
            token, client, repark = direct
            recorded = recorder.record(message[1], token, client, reply, repark)
            if recorded is not None:
                send(("recorded", message[1], *recorded))
                continue
        send(reply)


if __name__ == "__main__":
    main()

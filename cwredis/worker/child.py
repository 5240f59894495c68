"""The process a worker runs jobs in: ``python -m cwredis.worker.child FD_JOBS FD_OUT FD_CONTROL``.

A child lives across jobs (no fork per job) and keeps the functions it has
unpickled, keyed by their content digest, so a map over 100,000 items
unpickles its function once. The supervising worker has already checked
every signature of a job it writes to the pipe; the child only decodes and
runs it. A job the child reads from its own inbox while parked
(:mod:`cwredis.worker.child_parking`) it verifies itself before unpickling
anything, and tells the worker it took it before it starts. What the worker
writes to it is read by :class:`~cwredis.worker.mailbox.Mailbox`.

The messages are the named types of :mod:`cwredis.worker.protocol`: a
:class:`Setup` first, then a :class:`Run` per job on the job pipe,
:class:`Unsend` on the control pipe; the child answers on its out pipe with
:class:`Progress` (any number while a job runs), :class:`Unsent`,
:class:`Resend`, and one :class:`Ok`, :class:`Err` or -- when the worker asked
it to record the outcome itself and it could -- :class:`Recorded` per job.

With ``capture``, what the job writes to sys.stdout/sys.stderr is also kept
(the last ``config.OUTPUT_TAIL_BYTES``) and returned as ``output`` for the client;
while the job runs, what is new is also sent as :class:`Output` at most every
``config.LIVE_OUTPUT_INTERVAL_S`` (:class:`_LiveOutput`), for ``cw-admin logs``.

Before each job the child checks that no module a job imported changed on
disk (:mod:`cwredis.worker.freshness`); if one did, it says :class:`Stale`
and runs nothing, and the worker replaces it, so a job always runs the code
on disk.

The child ignores SIGINT/SIGTERM (a Ctrl-C to the worker's process group is
for the supervisor to handle gracefully) and dies with its supervisor
(PR_SET_PDEATHSIG), so a SIGKILLed worker leaves no job running behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import cloudpickle

from .. import config, heap, jobcontext
from ..argblobs import loads_call
from ..serialization import (ErrorRecord, dumps_exception, error_line, is_instance_of_any, loads_function,
                             parse_env)
from ..keys import Keys
from ..signing import Corrupt, Signer
from .child_parking import ChildParking
from .direct import DirectRecorder
from .freshness import CodeWatch
from .mailbox import INBOX, Mailbox
from .protocol import (CannotOpen, ChildMessage, Err, MessagePipe, Ok, Output, Progress, Recorded, Resend, Run, Setup,
                       Stale, Unparked)
from .staged import StagedArgs

log = logging.getLogger("cwredis.worker.child")

_PR_SET_PDEATHSIG = 1



class _Tee(io.TextIOBase):
    """Passes writes on to the worker's stream and keeps the tail for the client."""

    def __init__(self, stream: Any, sink: list[str], live: _LiveOutput) -> None:
        self._stream = stream
        self._sink = sink
        self._live = live

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._sink.append(text)
        if len(self._sink) > 256:  # keep the buffer a bounded tail
            joined = "".join(self._sink)[-config.OUTPUT_TAIL_BYTES:]
            self._sink[:] = [joined]
        self._live.add(text)
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


class _LiveOutput:
    """Sends the running job's new output to the worker every ``config.LIVE_OUTPUT_INTERVAL_S``.

    One thread per job process, started with its first job, not one per job:
    a job's writes only append to a list under a lock, so neither printing nor
    a job's start or end waits on it.
    """

    def __init__(self, send: Callable[[str, str], None]) -> None:
        self._send = send
        self._job_id: str | None = None
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def begin(self, job_id: str) -> None:
        with self._lock:
            self._job_id, self._pending = job_id, []
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cwredis-live-output", daemon=True)
            self._thread.start()

    def end(self) -> None:
        """What is left goes in the job's reply (and a late Output for a finished job is ignored)."""
        with self._lock:
            self._job_id, self._pending = None, []

    def add(self, text: str) -> None:
        with self._lock:
            if self._job_id is not None:
                self._pending.append(text)

    def _run(self) -> None:
        while True:
            time.sleep(config.LIVE_OUTPUT_INTERVAL_S)
            with self._lock:
                job_id, text = self._job_id, "".join(self._pending)[-config.OUTPUT_TAIL_BYTES:]
                self._pending = []
            if job_id is not None and text:
                try:
                    self._send(job_id, text)
                except (OSError, ValueError):  # the worker is gone: the main loop sees it and exits
                    return


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker's pipe EOF still stops us between jobs
        pass


class Failed(NamedTuple):
    """A job that did not return: its error record, and whether it raised one of the job's retry_on classes."""

    record: ErrorRecord
    retryable: bool = False


class JobRunner:
    """Runs jobs one at a time, caching functions and the applied environment."""

    def __init__(self, printed: Callable[[str, str], None]) -> None:
        self._live = _LiveOutput(printed)
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
        fn = loads_function(blob)
        self._functions[digest] = fn
        if len(self._functions) > config.FUNCTION_CACHE_SIZE:
            self._functions.popitem(last=False)
        return fn

    def run(self, job: Run, report: Callable[[str, float, str | None], None]) -> Ok | Err | Resend:
        """Run one job; the reply carries the captured output ('' without capture), which also goes to the
        runner's ``printed`` (job id, new text) while the job runs."""
        if (job.function is None and job.function_digest not in self._functions) or \
                (job.env is None and job.env_digest != self._env_digest):
            return Resend(job.job_id)
        sink: list[str] = []
        jobcontext._enter(job.job_id, report)
        try:
            if job.capture:
                self._live.begin(job.job_id)
                try:
                    with contextlib.redirect_stdout(_Tee(sys.stdout, sink, self._live)), \
                            contextlib.redirect_stderr(_Tee(sys.stderr, sink, self._live)):
                        outcome = self._run(job)
                finally:
                    self._live.end()
            else:
                outcome = self._run(job)
        finally:
            jobcontext._leave()
        output = "".join(sink)[-config.OUTPUT_TAIL_BYTES:]
        if isinstance(outcome, bytes):
            return Ok(job.job_id, outcome, output)
        record = outcome.record
        return Err(job.job_id, record.reason, record.error, record.traceback, output, record.exc_type,
                   record.exception, outcome.retryable)

    def _run(self, job: Run) -> bytes | Failed:
        """The pickled result, or the failure (with the raised exception pickled, when there is one)."""
        try:
            self._apply_env(job.env_digest, job.env)
        except Corrupt as exc:
            return Failed(ErrorRecord("corrupt", str(exc), str(exc)))
        try:
            fn = self._function(job.function_digest, job.function)
        except (ImportError, AttributeError) as exc:  # the worker lacks a module the function needs
            return Failed(ErrorRecord("exception", error_line(exc), traceback.format_exc()))
        except Exception as exc:
            why = f"function could not be unpickled: {error_line(exc)}"
            return Failed(ErrorRecord("corrupt", why, traceback.format_exc()))
        try:
            args, kwargs = loads_call(job.args, job.blobs)
            if not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise TypeError("arguments record has the wrong shape")
        except (ImportError, AttributeError) as exc:
            return Failed(ErrorRecord("exception", error_line(exc), traceback.format_exc()))
        except Exception as exc:
            why = f"arguments could not be unpickled: {error_line(exc)}"
            return Failed(ErrorRecord("corrupt", why, traceback.format_exc()))
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt in a job fail the job, not the child
            # tb_next: start the traceback at the user's function, not at this frame.
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            return Failed(ErrorRecord("exception", error_line(exc), text, *dumps_exception(exc)),
                          is_instance_of_any(exc, job.retry_on))
        try:
            return cloudpickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            line = f"SerializationError: cannot pickle the result {type(result).__name__}: {error_line(exc)}"
            return Failed(ErrorRecord("exception", line, traceback.format_exc()))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    heap.keep_freed_memory()  # large arguments and results pass through here
    logging.basicConfig(level=os.environ.get("CWREDIS_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    inbox = MessagePipe(int(argv[0]), writable=False)
    outbox = MessagePipe(int(argv[1]), readable=False)
    control = MessagePipe(int(argv[2]), writable=False)
    send_lock = threading.Lock()

    def send(message: ChildMessage) -> None:
        with send_lock:
            outbox.send(message)

    def report(job_id: str, fraction: float, text: str | None) -> None:
        send(Progress(job_id, fraction, text))

    def printed(job_id: str, text: str) -> None:
        send(Output(job_id, text))

    runner = JobRunner(printed)

    mailbox = Mailbox(inbox, control, send)
    recorder: DirectRecorder | None = None
    parking: ChildParking | None = None
    staged: StagedArgs | None = None
    watch = CodeWatch()
    while True:
        message = mailbox.next(parking.fd if parking is not None else None)
        if message is None:
            return  # the worker is gone or closed us: exit quietly (parked or not)
        if message is INBOX:
            assert parking is not None
            message = parking.take()  # the worker is told first (Took / Unparked)
            if message is None:
                continue
        if isinstance(message, Setup):
            recorder = DirectRecorder(message)
            staged = StagedArgs(recorder, Keys(message.namespace), Signer(message.secret))
            parking = ChildParking(message, recorder, staged, send) if recorder.inbox else None
            continue
        assert isinstance(message, Run)
        # What we say of a job we took while parked goes to a worker not waiting on our pipe: poked (parking).
        held = parking if parking is not None and parking.holding == message.job_id else None
        if held is not None:
            held.holding = None
        if (changed := watch.changed()) is not None:
            send(Stale(message.job_id, changed))  # the worker replaces us; this job runs in the new process
            if held is not None:
                held.poke()
            continue
        # Parked, our blocking read of our inbox is out on our one connection: nothing else may use it
        # before it answers. The worker writes nothing behind a job that parks us (Slot.may_park); should a
        # job come anyway, the worker opens its staged arguments and records its outcome (the pipe).
        reading = parking is not None and parking.fd is not None
        if message.staged_spec:  # its arguments wait in their own key: read and verify them (worker.staged)
            args = None
            if staged is not None and not reading:
                args = staged.open(message.job_id, message.staged_spec, message.function_digest)
            if args is None:
                send(CannotOpen(message.job_id))  # nothing of it ran: the worker opens it
                continue
            message = message._replace(args=args, staged_spec="")
        reply = runner.run(message, report)
        watch.note_imports()
        direct = message.direct
        # A retryable failure is the worker's to requeue (attempts.py), never recorded from here.
        if (direct is not None and recorder is not None and not reading and not isinstance(reply, Resend)
                and not (isinstance(reply, Err) and reply.retryable)
                and (not direct.only_large or (isinstance(reply, Ok)
                                               and len(reply.result) >= config.DIRECT_RECORD_BYTES))):
            recorded: Recorded | None = recorder.record(reply, direct)
            if recorded is not None:
                send(recorded)
                if recorded.parked and parking is not None and not parking.park():
                    send(Unparked(failed=True))  # listed, but not reading: the worker unlists us
                    parking.poke()
                continue
        send(reply)
        if held is not None:
            held.poke()  # an outcome for the worker to record


if __name__ == "__main__":
    main()

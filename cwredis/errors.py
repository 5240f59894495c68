"""The error tree::

    CwredisError
     +-- SerializationError (also TypeError)  a function/argument cannot be pickled
     +-- RemoteError                          a job failed: .jobid .reason .traceback .exception
     |    +-- RemoteError[ValueError] ...     also the remote exception's class (cwredis.remote_errors)
     +-- ConfigError                          bad URL, unreachable server at start (CLI)
     +-- ConnectionError (also the builtin)   a client cannot start: wrong password, unknown host, nothing listening
     +-- ServerFullError (also RuntimeError)  a submit refused: the server is at its maxmemory

(A completion from an attempt that no longer owns its job is not an error
anyone sees: complete.lua refuses it and the worker logs it.)
"""

from __future__ import annotations

import builtins


class CwredisError(Exception):
    """Base of every error cwredis raises on purpose."""


class SerializationError(CwredisError, TypeError):
    """A function, argument or result cannot be pickled; the message names it."""


class ConfigError(CwredisError):
    """A setting is unusable (bad URL, wrong password); the message is one line for the user."""


class ConnectionError(CwredisError, builtins.ConnectionError):
    """A client could not reach its server when it started; the message names the (masked) URL, the cause and
    the likely fix. (Once a client has started, outages are ridden out, never raised.)"""


class ServerFullError(CwredisError, RuntimeError):
    """The server is at its memory limit (maxmemory, noeviction): a submit was refused as a whole.

    None of the refused jobs was queued; the message names the limit. Workers
    and the coordinator go on, so the cluster drains and a later submit
    succeeds.
    """


#: What a job that failed 'lost' says. The coordinator records it with the job (for cw-admin); its
#: outcome carries no text (the coordinator has no secret to sign one), so the client writes this itself.
LOST_ERROR = "LostError: the job's worker died or stopped renewing its lease on every attempt"
LOST_TRACEBACK = ("The worker running this job stopped renewing its lease (it was killed, lost its node, or was "
                  "cut off from Redis) on each of the job's max_attempts attempts, so the job was failed "
                  "instead of retried again.")


#: What a cancelled job says (its outcome carries no text either: cancel.lua has no secret).
CANCELLED_ERROR = "CancelledError: the job was cancelled"


class RemoteError(CwredisError):
    """A job failed. ``reason`` is one of exception, timeout, lost, rejected, corrupt, cancelled.

    ``traceback`` is the remote traceback text (for ``exception``) or an
    explanation; ``str()`` gives the remote exception's type and message.
    ``exception`` is the original exception object when the client could
    unpickle it, else None. When the remote exception's class is importable
    here, the error raised is an instance of a subclass of both (see
    :mod:`cwredis.remote_errors`), so ``except ValueError`` catches it too.
    """

    def __init__(self, jobid: str, reason: str, message: str, traceback: str = "",
                 exception: BaseException | None = None) -> None:
        # Not super().__init__: in a subclass mixed with the remote class, that would be the remote
        # class's __init__, whose arguments are not ours.
        Exception.__init__(self, jobid, reason, message, traceback)
        self.jobid = jobid
        self.reason = reason
        self.message = message
        self.traceback = traceback
        self.exception = exception

    def __str__(self) -> str:
        return f"job {self.jobid} failed ({self.reason}): {self.message}"

    def __reduce__(self):  # pickles (e.g. into a Future across processes) with its fields, and its remote class
        from .remote_errors import restore, remote_class
        return (restore, (self.jobid, self.reason, self.message, self.traceback, self.exception,
                          remote_class(self)))

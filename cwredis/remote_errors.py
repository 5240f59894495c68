"""A failed job's RemoteError that is also an instance of the remote exception's class.

The job process pickles the exception's class and the exception itself
(:func:`cwredis.serialization.dumps_exception`). Here, on the client and only
after the outcome's signature verified, both are unpickled: the class picks
a subclass ``RemoteError[ValueError]`` of (RemoteError, ValueError), made once
per class, so both ``except cwredis.RemoteError`` and ``except ValueError``
catch the error; the instance becomes ``.exception``. Whatever cannot be
unpickled or mixed in (a class not importable here, a layout conflict, a
``__new__`` with its own arguments) leaves a plain RemoteError: never worse
than before.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import cloudpickle

from .errors import RemoteError
from .serialization import ErrorRecord

log = logging.getLogger("cwredis.client")

#: Attributes an OSError keeps in C slots rather than its __dict__ (errno & co.).
_OSERROR_FIELDS = ("errno", "strerror", "filename", "filename2")


def from_record(job_id: str, record: ErrorRecord) -> RemoteError:
    """The RemoteError for a verified error outcome (see the module docstring)."""
    remote_type = _loads(record.exc_type)
    exception = _loads(record.exception)
    if not isinstance(remote_type, type) or not issubclass(remote_type, BaseException):
        remote_type = type(exception) if isinstance(exception, BaseException) else None
    if not isinstance(exception, BaseException):
        exception = None
    return restore(job_id, record.reason, record.error, record.traceback, exception, remote_type)


def restore(jobid: str, reason: str, message: str, traceback: str, exception: BaseException | None,
            remote_type: type | None) -> RemoteError:
    """A RemoteError, of the mixed subclass for ``remote_type`` when there can be one (also unpickles one)."""
    cls = subclass_for(remote_type) if remote_type is not None else None
    if cls is not None and remote_type is not None:
        try:
            error = cls(jobid, reason, message, traceback, exception)
        except Exception as exc:  # the remote class's __new__ or slots do not fit ours
            log.debug("RemoteError cannot also be a %s: %s", remote_type.__qualname__, exc)
        else:
            if exception is not None:
                _copy_attributes(exception, error)
            return error
    return RemoteError(jobid, reason, message, traceback, exception)


def remote_class(error: RemoteError) -> type | None:
    """The remote exception class mixed into ``error`` (None for a plain RemoteError)."""
    return getattr(type(error), "_remote_type", None)


@functools.lru_cache(maxsize=256)
def subclass_for(remote_type: type) -> type[RemoteError] | None:
    """``RemoteError[Name]``, a subclass of RemoteError and of ``remote_type``; None where that cannot be.

    Only for subclasses of Exception: a remote KeyboardInterrupt or SystemExit
    must not look like one here (a ``except KeyboardInterrupt`` would take a
    failed job for Ctrl-C).
    """
    if not issubclass(remote_type, Exception) or issubclass(remote_type, RemoteError):
        return None
    try:
        return type(f"RemoteError[{remote_type.__qualname__}]", (RemoteError, remote_type),
                    {"_remote_type": remote_type, "__module__": __name__})
    except Exception:  # a layout conflict, a final class, an __init_subclass__ that refuses
        return None


def _loads(blob: bytes | None) -> Any:
    if blob is None:
        return None
    try:
        return cloudpickle.loads(blob)
    except Exception:  # not importable here, or an __init__ that unpickling cannot call: None, as documented
        return None


def _copy_attributes(exception: BaseException, error: RemoteError) -> None:
    """The remote exception's own attributes (``e.code``, ``e.errno``), where they do not shadow ours."""
    own = {"jobid", "reason", "message", "traceback", "exception"}
    fields = dict(vars(exception))
    if isinstance(exception, OSError):
        fields.update((name, getattr(exception, name)) for name in _OSERROR_FIELDS)
    for name, value in fields.items():
        if name not in own:
            try:
                setattr(error, name, value)
            except (AttributeError, TypeError):  # a read-only or typed slot of the remote class: skip it
                pass

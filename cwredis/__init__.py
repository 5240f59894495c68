"""cwredis: throw Python functions at a cluster and get every result back, even when machines die.

The public API::

    ClientThread   submit jobs; callbacks on a background thread
    Executor       the same as a concurrent.futures.Executor
    LocalCluster   server + coordinator + workers on this machine, for a with-block
    RemoteError    a job failed (.jobid, .reason, .traceback, .exception); also the remote class when importable
    ConnectionError a client cannot start: wrong password, unknown host, nothing listening (also the builtin)
    progress       inside a job: report how far it is (the client's progress_callback gets it)
    current_job_id inside a job: its id
    ServerFullError a submit refused: the server is at its memory limit (a RuntimeError)
    SerializationError, CwredisError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConnectionError, CwredisError, RemoteError, SerializationError, ServerFullError
from .jobcontext import current_job_id, progress

if TYPE_CHECKING:
    from .client import ClientThread
    from .executor import Executor
    from .local import LocalCluster

# Imported on first use, so a worker's job processes (which import cwredis
# for cwredis.progress) start without loading the client side and redis-py.
_LAZY = {"ClientThread": "client", "Executor": "executor", "LocalCluster": "local"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cwredis' has no attribute {name!r}")


__all__ = ["ClientThread", "ConnectionError", "CwredisError", "Executor", "LocalCluster", "RemoteError", "SerializationError",
           "ServerFullError", "current_job_id", "progress"]
__version__ = "1.0.0"

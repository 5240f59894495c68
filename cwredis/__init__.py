"""cwredis: throw Python functions at a cluster and get every result back, even when machines die.

The public API::

    ClientThread   submit jobs; callbacks on a background thread
    Executor       the same as a concurrent.futures.Executor
    LocalCluster   server + coordinator + workers on this machine, for a with-block
    RemoteError    a job failed (.jobid, .reason, .traceback)
    progress       inside a job: report how far it is (the client's progress_callback gets it)
    current_job_id inside a job: its id
    SerializationError, CwredisError
"""

from __future__ import annotations

from .client import ClientThread
from .errors import CwredisError, RemoteError, SerializationError
from .executor import Executor
from .jobcontext import current_job_id, progress
from .local import LocalCluster

__all__ = ["ClientThread", "CwredisError", "Executor", "LocalCluster", "RemoteError", "SerializationError",
           "current_job_id", "progress"]
__version__ = "1.0.0"

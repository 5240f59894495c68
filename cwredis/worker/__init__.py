"""The worker (``cw-worker``, ``python -m cwredis.worker``): runs jobs in child processes.

The package is a set of small parts; :mod:`cwredis.worker.supervisor` says
which part owns what and wires them together.
"""

from .cli import main
from .supervisor import Worker

__all__ = ["Worker", "main"]

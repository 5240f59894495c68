"""The live progress bar of ``Executor.map(progress=True)`` and ``ClientThread.wait(progress=True)``.

It shows jobs done and failed, the rate and the ETA (tqdm), plus how many
jobs are running on the whole cluster, read from Redis at most once a second.
``progress=True`` shows it when stderr is a terminal or in a Jupyter notebook
(where ``tqdm.auto`` makes it a widget, and stderr is no terminal);
``progress="always"`` shows it anyway (e.g. in a log file).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import redis
from tqdm.auto import tqdm

from .inspector import Inspector
from .keys import Keys

#: Seconds between reads of the cluster's running count.
RUNNING_REFRESH_S = 1.0


def wanted(progress: bool | str | None) -> bool:
    """Whether a bar should be shown for this ``progress`` argument."""
    if progress == "always":
        return True
    return bool(progress) and (sys.stderr.isatty() or in_notebook())


def in_notebook() -> bool:
    """Whether this is a Jupyter kernel: IPython is loaded (a kernel always has it) and runs as IPKernelApp."""
    ipython = sys.modules.get("IPython")  # never import it: outside a notebook it is absent or not a kernel
    try:
        shell = ipython.get_ipython() if ipython is not None else None
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an IPython of another shape: no notebook as far as we can tell
        return False


class ProgressBar:
    """A tqdm bar over ``total`` jobs (None: unknown) with done/failed/running counters."""

    def __init__(self, client: redis.Redis, keys: Keys, total: int | None, description: str = "jobs") -> None:
        self._redis = client
        self._keys = keys
        self._bar: Any = tqdm(total=total, desc=description, unit="job", dynamic_ncols=True, file=sys.stderr)
        self._done = self._failed = 0
        self._running: int | None = None
        self._running_read = 0.0

    def update(self, done: int, failed: int) -> None:
        """Move the bar to ``done + failed`` finished jobs."""
        advance = (done + failed) - (self._done + self._failed)
        self._done, self._failed = done, failed
        now = time.monotonic()
        if now - self._running_read >= RUNNING_REFRESH_S:
            self._running_read = now
            self._running = self._read_running()
        postfix = {"done": done, "failed": failed}
        if self._running is not None:
            postfix["running"] = self._running
        self._bar.set_postfix(postfix, refresh=False)
        if advance > 0:
            self._bar.update(advance)
        else:
            self._bar.refresh()

    def _read_running(self) -> int | None:
        """Jobs running on the cluster now (all clients), as ``cw-admin status`` counts them."""
        try:
            return Inspector(self._redis, self._keys).running()
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def close(self) -> None:
        self._bar.close()

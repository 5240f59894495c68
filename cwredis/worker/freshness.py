"""Fresh code: a job process notices that a module its jobs imported changed on disk.

A job process lives across jobs, so a module a job imported (``mymod``, for
a function pickled by reference) stays loaded: after the user fixes a bug in
``mymod.py`` and runs the script again, the old code would run, silently.
Python cannot reliably reload a module in place (other modules hold
references into the old one), so the process is replaced instead: before
each job the child compares the modification time and size of every *user*
module it has loaded -- anything outside the standard library and
site-packages, i.e. the user's own code -- with what it saw when the module
was imported; if one changed, it runs nothing and says :class:`Stale`, and
the worker starts a new process for the job.

Cost per job: one ``os.stat`` per user module loaded (usually one or two),
and a length check of ``sys.modules`` to notice new imports.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from typing import Iterable


def _system_dirs() -> tuple[str, ...]:
    """Where code that is not the user's lives: the standard library and every site-packages."""
    paths = sysconfig.get_paths()
    dirs = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib") if name in paths}
    dirs.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    if site.ENABLE_USER_SITE and site.USER_SITE:
        dirs.add(site.USER_SITE)
    dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # cwredis itself (an editable install)
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs if d)


class CodeWatch:
    """The user modules loaded in this process, and whether any changed on disk since."""

    def __init__(self, system_dirs: Iterable[str] | None = None) -> None:
        self._system = tuple(system_dirs) if system_dirs is not None else _system_dirs()
        self._known: set[str] = set(sys.modules)  # modules there before any job: ours, not the user's
        self._files: dict[str, tuple[int, int]] = {}  # path -> (mtime_ns, size) when imported
        self._module_count = len(sys.modules)

    def note_imports(self) -> None:
        """Start watching the user modules imported since the last call (cheap when there are none)."""
        if len(sys.modules) == self._module_count:
            return
        for name, module in list(sys.modules.items()):
            if name in self._known:
                continue
            self._known.add(name)
            path = getattr(module, "__file__", None)
            if not path or not path.endswith(".py"):
                continue
            real = os.path.realpath(path)
            if real.startswith(self._system) or real in self._files:
                continue
            try:
                st = os.stat(real)
            except OSError:
                continue
            self._files[real] = (st.st_mtime_ns, st.st_size)
        self._module_count = len(sys.modules)

    def changed(self) -> str | None:
        """The path of a watched module that changed (or vanished) on disk, or None."""
        for path, seen in self._files.items():
            try:
                st = os.stat(path)
            except OSError:
                return path
            if (st.st_mtime_ns, st.st_size) != seen:
                return path
        return None

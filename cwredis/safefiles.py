"""Private files in ``$CWREDIS_HOME`` and the data dir: created and read as ssh treats ``~/.ssh``.

The home holds what decides whose code a worker runs (the URL, with the
server's password, and the signing secret). On a shared cluster anyone may
pre-create a directory where we expect ours, plant a symlink where we are
about to write, or -- under ``umask 002`` -- share a group with us. So:

- a directory we create is chmod-ed 0700 whatever the umask;
- a directory or file we trust must be owned by us and not writable by group
  or others (StrictModes); a symlink where a file should be is refused;
- a file is written to a fresh ``mkstemp`` name (``O_EXCL|O_NOFOLLOW``, mode
  0600) in its own directory, then renamed (or hard-linked, so as not to
  replace one that exists) into place: never through a planted link, never a
  fixed temporary name, never half-written where a reader looks.

Every refusal is a :class:`~cwredis.errors.ConfigError` whose one line names
the path, what is wrong and the fix.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from .errors import ConfigError


def _check_owner_and_mode(st: os.stat_result, path: Path, what: str, *, private: bool = False) -> None:
    """ConfigError unless ``st`` is ours and not writable (``private``: not readable either) by others."""
    if st.st_uid != os.geteuid():
        raise ConfigError(f"refusing {what} {path}: it belongs to uid {st.st_uid}, not to you "
                          f"(uid {os.geteuid()}); someone else may have planted it: remove it, or "
                          "point $CWREDIS_HOME to a directory of your own")
    loose = 0o077 if private else 0o022
    if st.st_mode & loose:
        fix = "chmod 600" if private and stat.S_ISREG(st.st_mode) else "chmod go-w"
        readable = "readable or writable" if private else "writable"
        raise ConfigError(f"refusing {what} {path}: mode {stat.S_IMODE(st.st_mode):04o} is {readable} "
                          f"by group or others; fix it with `{fix} {path}`")


def check_dir(path: Path, what: str = "directory") -> None:
    """ConfigError unless ``path`` (symlinks followed: a home may live on scratch) is a directory of ours
    that no one else may write to. A missing directory passes: there is nothing in it to trust."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot check {what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"refusing {what} {path}: it is not a directory")
    _check_owner_and_mode(st, path, what)


def ensure_private_dir(path: Path, what: str = "directory") -> Path:
    """Create ``path`` with mode 0700 (whatever the umask) unless it exists; check it either way."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path}: {exc.strerror}") from None
    else:
        os.chmod(path, 0o700)  # mkdir's mode went through the umask
    check_dir(path, what)
    return path


def read_private(path: Path, what: str, *, private: bool = False) -> bytes | None:
    """The content of the file at ``path``, or None if there is none.

    The file itself is opened without following a symlink and checked on its
    open descriptor (no swap between check and read); its directory is
    checked too. ``private``: it must not be readable by others either (a
    secret). ConfigError for anything untrustworthy or unreadable.
    """
    path = Path(path)
    check_dir(path.parent, f"the directory of {what}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"refusing {what} {path}: it is a symbolic link; replace it with "
                              "the file itself") from None
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"refusing {what} {path}: it is not a regular file")
        _check_owner_and_mode(st, path, what, private=private)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes) -> str:
    """A fresh 0600 file holding ``data`` in ``directory`` (mkstemp: O_EXCL|O_NOFOLLOW); its path."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_private(path: Path, data: bytes | str) -> None:
    """Put ``data`` at ``path`` (mode 0600), replacing what is there, atomically.

    Its directory is created 0700 if missing and must be ours; a symlink
    planted at ``path`` is replaced, never followed.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    tmp = _write_temp(path.parent, path.name, data.encode() if isinstance(data, str) else data)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def create_private(path: Path, data: bytes | str) -> bool:
    """Create ``path`` (mode 0600) holding ``data`` unless something already exists there; True if
    created. Atomic (a hard link of a complete temporary file): no reader sees it half-written, and
    two creators race safely -- one wins, the other leaves the winner's file alone."""
    path = Path(path)
    ensure_private_dir(path.parent)
    tmp = _write_temp(path.parent, path.name, data.encode() if isinstance(data, str) else data)
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True

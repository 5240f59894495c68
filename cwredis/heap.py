"""Keeping freed memory for reuse in processes that move large payloads (glibc's ``mallopt``).

A 1 MiB argument or result is allocated several times on its way (a pickle,
an envelope, a reply read from Redis, the unpickled value). With glibc's
defaults, a block that large is either mapped fresh from the kernel or taken
from the top of the heap, which is handed back to the kernel as soon as more
than a little is free there. Either way each allocation faults its pages in
again: 256 page faults per MiB, measured at ~5 us each on a VM -- about
1.3 ms per copy, ten times the copy itself, and most of what a large payload
costs a process. Raising the mmap threshold (blocks up to 32 MiB come from the
heap) and the trim threshold (up to 64 MiB free at the top of the heap is
kept) lets the next payload reuse the pages the last one freed.

The price is resident memory: a process keeps up to TRIM_THRESHOLD_BYTES of
freed heap. So the worker and its job processes tune at start (they exist to
move payloads), and a client only once it sends or receives a payload of
``config.LARGE_ARG_BYTES`` or more. Elsewhere than glibc (musl, macOS) there is
no such knob and nothing changes.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("cwredis.heap")

#: Blocks up to this size come from the heap, not a fresh mapping (glibc's own cap for its adaptive threshold).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory at the top of the heap kept for reuse, not handed back to the kernel.
TRIM_THRESHOLD_BYTES = 64 << 20

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_tuned = False


def keep_freed_memory() -> None:
    """Tune this process's allocator for large payloads, once (see the module docstring); a no-op after."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return  # no mallopt (not glibc): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        log.debug("mallopt refused the thresholds: the allocator keeps its defaults")

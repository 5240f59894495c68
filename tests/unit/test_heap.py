"""cwredis.heap: a process tuned for large payloads reuses the pages a freed payload leaves, instead of
faulting fresh ones in for every 1 MiB copy (256 faults per MiB, ~1.3 ms on a VM)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_COPIES = """
import resource, sys
from cwredis import heap
if sys.argv[1] == "tuned":
    heap.keep_freed_memory()
payloads = [i.to_bytes(8, "little") * (1 << 17) for i in range(8)]
for _ in range(20):  # warm up: the heap grows to its working size
    [b"S" + p for p in payloads]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    copies = [b"S" + p for p in payloads]  # eight 1 MiB blocks alive at once, then freed
del copies
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (50 * len(payloads)))
"""


def _faults_per_copy(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _COPIES, mode], capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's thresholds are glibc's")
def test_a_tuned_process_copies_large_payloads_without_faulting_pages_in():
    assert _faults_per_copy("tuned") < 32  # of the 256 pages each copy spans (untuned: ~130 measured)

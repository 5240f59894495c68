"""The ``latency_hops`` benchmark's tracer (benchmarks/hoptrace) and its table (benchmarks/hops.py).

The tracer wraps private cwredis functions from outside the package, so a
rename would silently lose a hop: the first test starts a process the way the
benchmark does and checks that every hook found its function and that the
wrapped functions still run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import hops  # noqa: E402  (benchmarks/ is not a package)


def test_every_hook_finds_its_function(tmp_path: Path) -> None:
    env = dict(os.environ, **hops.trace_env(tmp_path))
    # A wrapped function still runs (the freshness check), and each hook's function is a wrapper now.
    code = """if True:
        from cwredis.worker.freshness import CodeWatch
        CodeWatch().changed()
        from cwredis import jobcontext, delivery, outcome_list, submitter
        from cwredis.worker import child_parking, direct, intake, pool
        hooked = [submitter.Submitter._submit_batch, outcome_list.OutcomeList.parse, delivery.Delivery.deliver,
                  intake.Intake._take_handed, pool.Slot.resend, CodeWatch.changed, jobcontext._enter,
                  jobcontext._leave, direct.DirectRecorder.record, child_parking.ChildParking.take]
        print(sum(hasattr(f, '__wrapped__') for f in hooked), len(hooked))
    """
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    wrapped, hooks = out.stdout.split()
    assert wrapped == hooks == "10"
    lines = [line for path in tmp_path.glob("*.hops") for line in path.read_text().splitlines()]
    assert [line for line in lines if line.startswith("missing")] == []


def test_hop_table_joins_processes_by_job_id(tmp_path: Path) -> None:
    marks = [m for a, b, _ in hops.PATH + hops.ASIDE for m in (a, b)]
    order = list(dict.fromkeys(marks))
    # Two jobs whose marks are 1 µs and 3 µs apart, spread over two "processes", and one job
    # that misses a mark (left out), and a hook that was missing.
    first = [f"{m} a {i * 1000}" for i, m in enumerate(order)]
    second = [f"{m} b {i * 3000}" for i, m in enumerate(order)]
    (tmp_path / "1.hops").write_text("\n".join(first[::2] + second[::2]) + "\nc_start c 0\nmissing x:y 0\n")
    (tmp_path / "2.hops").write_text("\n".join(first[1::2] + second[1::2]) + "\n")
    table = hops.hop_table(tmp_path)
    assert table["jobs_traced"] == 2
    assert table["missing_hooks"] == "x:y"
    step = order.index("w_handed") - order.index("c_submit")
    assert table["c_submit>w_handed_p50_us"] == 2.0 * step  # the median of 1 and 3 µs per step
    assert table["c_submit>w_handed_p90_us"] == 3.0 * step
    total = order.index("c_woke") - order.index("c_start")
    assert table["c_start>c_woke_p50_us"] == 2.0 * total
    # A later run: only the jobs its client started since then count.
    assert hops.hop_table(tmp_path, since_ns=1)["jobs_traced"] == 0  # both started at 0
    (tmp_path / "3.hops").write_text("\n".join(f"{m} d {10**6 + i * 5000}" for i, m in enumerate(order)) + "\n")
    later = hops.hop_table(tmp_path, since_ns=10**6)
    assert later["jobs_traced"] == 1
    assert later["c_submit>w_handed_p50_us"] == 5.0 * step


def test_hop_table_gives_the_parked_path_its_own_spans(tmp_path: Path) -> None:
    """A job a parked job process took has no worker marks: its spans are named parked:..., apart."""
    worker = list(dict.fromkeys(m for a, b, _ in hops.PATH + hops.ASIDE for m in (a, b)))
    parked = list(dict.fromkeys(m for a, b, _ in hops.PARKED_PATH + hops.ASIDE for m in (a, b)))
    lines = [f"{m} w {i * 1000}" for i, m in enumerate(worker)] + [f"{m} p {i * 2000}" for i, m in enumerate(parked)]
    (tmp_path / "1.hops").write_text("\n".join(lines) + "\n")
    table = hops.hop_table(tmp_path)
    assert (table["jobs_traced"], table["jobs"], table["parked:jobs"]) == (2, 1, 1)
    step = parked.index("k_took") - parked.index("k_handed")
    assert table["parked:k_handed>k_took_p50_us"] == 2.0 * step
    assert table["c_start>c_woke_p50_us"] == 1.0 * (worker.index("c_woke") - worker.index("c_start"))
    assert table["parked:c_start>c_woke_p50_us"] == 2.0 * (parked.index("c_woke") - parked.index("c_start"))

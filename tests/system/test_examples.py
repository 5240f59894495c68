"""Every example runs end to end on a private one-machine cluster (cw-local)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
CW_LOCAL = [sys.executable, "-m", "cwredis.local", "-n", "2", "--"]


def run_example(args: list[str], tmp_path: Path, timeout: float = 90) -> str:
    env = dict(os.environ, CWREDIS_HOME=str(tmp_path / "home"), CWREDIS_LOG_LEVEL="WARNING",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("CWREDIS_URL", None)
    env.pop("CWREDIS_SECRET", None)
    proc = subprocess.run(CW_LOCAL + [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_square_prints_ten_squares(tmp_path):
    out = run_example([str(ROOT / "examples" / "square.py")], tmp_path)
    values = sorted(int(line.rsplit(": ", 1)[1]) for line in out.splitlines() if ": " in line)
    assert values == [i * i for i in range(10)]
    assert "all 10 squares computed" in out


def test_sweep_writes_every_grid_point_in_order(tmp_path):
    out_file = tmp_path / "sweep.csv"
    run_example([str(ROOT / "examples" / "sweep.py"), "--points", "4", "--out", str(out_file)], tmp_path)
    rows = list(csv.DictReader(out_file.open()))
    assert len(rows) == 16
    assert [(r["alpha"], r["beta"]) for r in rows[:2]] == [("0.10", "0.00"), ("0.10", "0.50")]


def test_montecarlo_pi_is_close(tmp_path):
    out = run_example([str(ROOT / "examples" / "montecarlo_pi.py"), "--jobs", "20", "--darts", "20000"], tmp_path)
    estimate = float(out.split("pi ~ ")[1].split()[0])
    assert abs(estimate - 3.14159) < 0.05


def test_failures_are_requeued_and_delivered_to_the_running_client(tmp_path):
    out = run_example([str(ROOT / "examples" / "failures.py")], tmp_path)
    assert "caught the remote ValueError(\"invalid literal for int() with base 10: 'x'\")" in out
    assert "map kept going: [1, \"failed: invalid literal for int() with base 10: 'x'\", 3]" in out
    assert "retried after a ConnectionResetError: fetched" in out
    assert out.count("failed (exception)") == 3
    assert "requeued 3 job(s)" in out
    assert "results after the fix: [0, 7, 14]" in out


def test_cw_local_passes_the_command_exit_code(tmp_path):
    env = dict(os.environ, CWREDIS_HOME=str(tmp_path / "home"), CWREDIS_LOG_LEVEL="WARNING")
    proc = subprocess.run(CW_LOCAL + [sys.executable, "-c", "import sys; sys.exit(3)"], env=env,
                          capture_output=True, timeout=60, start_new_session=True)
    assert proc.returncode == 3

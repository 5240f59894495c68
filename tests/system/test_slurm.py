"""cw-slurm against a real SLURM: the one deploy/slurm/testbed.sh runs on this machine.

The end-to-end scenario: ``cw-slurm start -n 2`` (coordinator + 2 workers in
one allocation), a client outside the allocation finds the server through
``$CWREDIS_HOME/url`` alone, one worker step is killed mid-job and the job
still completes once its lease expires, ``cw-slurm add`` brings a worker
back, ``cw-slurm stop`` drains and ends everything, and no process of the
job is left.

SLURM-dependent tests skip, with the reason, unless ``sinfo`` works: with
``$SLURM_CONF``, with the testbed's config, or after this module starts the
testbed itself (as root, with slurm-wlm and munge installed; it then stops it
at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

import helpers
from helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
TESTBED = REPO / "deploy" / "slurm" / "testbed.sh"
CW_SLURM = [sys.executable, "-m", "cwredis.slurm"]
#: Short lease: the killed worker's job is requeued quickly.
LEASE_S = 3
#: The long job: long enough to be caught mid-run.
LONG_JOB_S = 5
#: A job running while `cw-slurm stop` drains the workers.
DRAIN_JOB_S = 3


def _sinfo_ok(conf: str) -> bool:
    if shutil.which("sinfo") is None or not Path(conf).exists():
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                          env={**os.environ, "SLURM_CONF": conf}, timeout=30)
    return done.returncode == 0 and any(s.rstrip("*~#") in ("idle", "mix", "alloc")
                                        for s in done.stdout.split())


@pytest.fixture(scope="session")
def slurm_conf() -> Iterator[str]:
    """A SLURM_CONF whose cluster answers; starts (and later stops) the testbed if need be."""
    testbed_dir = os.environ.get("CWREDIS_SLURM_TESTBED", "/tmp/cwredis-slurm-testbed")
    testbed_conf = str(Path(testbed_dir) / "etc" / "slurm.conf")
    conf = os.environ.get("SLURM_CONF")
    if conf and conf != testbed_conf and _sinfo_ok(conf):
        yield conf
        return
    # `status` checks the recorded daemons first: sinfo would retry a dead
    # controller for 10 s.
    status = subprocess.run(["bash", str(TESTBED), "status"], capture_output=True, timeout=60)
    if status.returncode == 0 and _sinfo_ok(testbed_conf):
        yield testbed_conf
        return
    if os.geteuid() != 0 or not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged")):
        pytest.skip("no SLURM: sinfo does not answer (set SLURM_CONF, or run "
                    "deploy/slurm/testbed.sh start as root with slurm-wlm and munge installed)")
    done = subprocess.run(["bash", str(TESTBED), "start"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not _sinfo_ok(testbed_conf):
        pytest.skip(f"no SLURM: deploy/slurm/testbed.sh start failed: {done.stderr.strip()[-500:]}")
    try:
        yield testbed_conf
    finally:
        subprocess.run(["bash", str(TESTBED), "stop"], capture_output=True, timeout=120)


@pytest.fixture
def slurm_home(home: Path, slurm_conf: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh CWREDIS_HOME (the harness's ``home``) with SLURM_CONF set and no CWREDIS_SECRET:
    sbatch passes none on, so the job signs with the secret file its coordinator writes in the
    home, which is where the test's clients find it too (as a user's on the login node)."""
    monkeypatch.setenv("SLURM_CONF", slurm_conf)
    monkeypatch.delenv("CWREDIS_SECRET")
    return home


def cw_slurm(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(CW_SLURM + list(args), capture_output=True, text=True, timeout=timeout)


def processes_of_job(job_id: str) -> set[int]:
    """PIDs of every process of SLURM job ``job_id``: its slurmstepds and all they started.

    Identified by the job id (SLURM_JOB_ID in the environment, or the
    ``slurmstepd: [JOB.STEP]`` title), never by program name.
    """
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not helpers.pid_alive(int(entry)):
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ or f"[{job_id}.".encode() in cmdline:
            pids.add(int(entry))
    return pids


def slurm_ids_of(pid: int) -> tuple[str, str]:
    """(job id, step id) of a process running inside a SLURM step."""
    environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                   if b"=" in item)
    return environ[b"SLURM_JOB_ID"].decode(), environ[b"SLURM_STEP_ID"].decode()


def job_logs(home: Path) -> str:
    """The output of every job started from ``home`` (sbatch --output)."""
    return "\n".join(f"===== {path} =====\n{path.read_text(errors='replace')}"
                     for path in sorted(home.glob("slurm-*.out")))


# ------------------------------------------------------------ no SLURM needed


def test_sbatch_file_is_the_template():
    from cwredis.slurm_batch import SBATCH_SCRIPT

    assert (REPO / "deploy" / "slurm" / "cwredis.sbatch").read_text() == SBATCH_SCRIPT


def test_sbatch_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(REPO / "deploy" / "slurm" / "cwredis.sbatch")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_master_host_is_the_host_of_the_url_file(home):
    from cwredis.slurm import SlurmError, master_host

    with pytest.raises(SlurmError):
        master_host()
    (home / "url").write_text("redis://:pw@10.1.2.3:40123/0\n")
    assert master_host() == "10.1.2.3"


def test_commands_without_an_allocation_fail_in_one_line(home):
    for command in (["status"], ["stop"], ["add", "-n", "1"]):
        done = cw_slurm(*command)
        assert done.returncode == 1, (command, done)
        assert len(done.stderr.strip().splitlines()) == 1 and "cw-slurm start" in done.stderr
    assert cw_slurm("start").returncode == 2  # -n is required: argparse


# ------------------------------------------------------------------ real SLURM


@pytest.mark.timeout(90)
def test_allocation_survives_a_lost_worker_and_stops_cleanly(slurm_home, tmp_path):
    import cwredis

    stop: subprocess.Popen | None = None
    try:
        start = cw_slurm("start", "-n", "2", "--lease-timeout", str(LEASE_S), "--wait", "30")
        assert start.returncode == 0, start.stderr
        url = (slurm_home / "url").read_text().strip()
        password = url.split("//:", 1)[1].split("@", 1)[0]
        assert password and password not in start.stdout and "***" in start.stdout
        job_id = json.loads((slurm_home / "slurm.json").read_text())["job"]
        marker = tmp_path / "long.marker"

        def kill_long_jobs_worker() -> bool:
            runs = helpers.read_markers(marker)
            if not runs:
                return False
            worker_pid = int(runs[0].split()[1])  # the job's parent: the cw-worker
            job, step = slurm_ids_of(worker_pid)
            assert job == job_id
            subprocess.run(["scancel", "--signal=KILL", f"{job}.{step}"], check=True, timeout=30)
            return True

        # A client outside the allocation, with no URL: $CWREDIS_HOME/url.
        with cwredis.Executor() as ex:
            long_job = ex.submit(helpers.marker_sleep_then, str(marker), "long", LONG_JOB_S)
            wait_for(kill_long_jobs_worker, timeout=30, message="the long job starts")
            short = list(ex.map(helpers.square, range(5), timeout=30))
            assert long_job.result(timeout=LEASE_S + LONG_JOB_S + 30) == "long"
        assert short == [0, 1, 4, 9, 16]
        runs = helpers.read_markers(marker)
        assert len(runs) == 2 and runs[0].split()[1] != runs[1].split()[1], runs

        def status() -> dict:
            done = cw_slurm("status", "--json")
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        wait_for(lambda: status()["workers"] == 1, timeout=LEASE_S + 10, message="the killed worker stops counting")
        report = status()
        assert report["state"] == "RUNNING" and password not in report["url"]

        added = cw_slurm("add", "-n", "1")
        assert added.returncode == 0, added.stderr
        wait_for(lambda: status()["workers"] == 2, timeout=30, message="the added worker counts")
        added_job = added.stdout.strip()

        pids = processes_of_job(job_id) | processes_of_job(added_job)
        assert pids
        # Graceful stop: a job running when `stop` starts finishes (SIGTERM
        # reaches every process of a worker step, the job's included).
        drained_marker = tmp_path / "drained.marker"
        with cwredis.Executor() as ex:
            running = ex.submit(helpers.marker_sleep_then, str(drained_marker), "drained", DRAIN_JOB_S)
            wait_for(lambda: helpers.read_markers(drained_marker), timeout=30, message="the drained job starts")
            stop = subprocess.Popen(CW_SLURM + ["stop", "--timeout", "40"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            assert running.result(timeout=DRAIN_JOB_S + 30) == "drained"
        stop_out, stop_err = stop.communicate(timeout=60)
        assert stop.returncode == 0, stop_err
        assert len(helpers.read_markers(drained_marker)) == 1, "the drained job ran once"
        assert wait_for(lambda: not any(map(helpers.pid_alive, pids)), timeout=15,
                        message=f"the jobs' processes {sorted(pids)} end")
        assert not processes_of_job(job_id) and not processes_of_job(added_job)
        after = status()
        assert after["state"] in ("COMPLETED", "GONE") and after["workers"] is None
        assert set(after["worker_jobs"].values()) <= {"COMPLETED", "GONE"}
        assert "Traceback" not in job_logs(slurm_home), "a worker or the coordinator crashed"
    finally:
        print(job_logs(slurm_home))  # shown when the test fails
        if stop is not None and stop.poll() is None:
            stop.kill()
            stop.wait()
        if (slurm_home / "slurm.json").exists():  # whatever failed, cancel our jobs
            recorded = json.loads((slurm_home / "slurm.json").read_text())
            for job in [recorded["job"], *recorded.get("worker_jobs", [])]:
                subprocess.run(["scancel", job], capture_output=True, timeout=30)


def test_slurm_sweep_example_runs_end_to_end(slurm_home, tmp_path):
    """examples/slurm_sweep.sh: start an allocation, sweep from the 'login node', stop; nothing left."""
    out_file = tmp_path / "sweep.csv"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "CWREDIS_LOG_LEVEL": "WARNING"}
    done = subprocess.run(["bash", str(REPO / "examples" / "slurm_sweep.sh"), "2", "--points", "3",
                           "--out", str(out_file)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr + job_logs(slurm_home)
    assert "wrote 9 rows" in done.stdout
    assert len(out_file.read_text().splitlines()) == 10
    state = json.loads((slurm_home / "slurm.json").read_text())
    for job_id in [state["job"], *state["worker_jobs"]]:
        wait_for(lambda: not processes_of_job(job_id), timeout=30, message=f"job {job_id} left processes")

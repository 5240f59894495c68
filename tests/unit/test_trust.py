"""Fail-closed secrets, private files, URL masking, terminal escaping, TLS defaults, the sbatch environment.

The process-level attacks (a second user planting files, a planted module,
passwords in ``ps``) are in ``tests/system/test_trust_boundary.py``; these
pin the functions that stop them.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from argparse import Namespace
from pathlib import Path

import pytest

from cwredis import config, slurm_batch
from cwredis.client import ClientThread
from cwredis.connection import connect
from cwredis.errors import ConfigError
from cwredis.safefiles import create_private, ensure_private_dir, read_private, write_private
from cwredis.terminal import printable

REPO = Path(__file__).resolve().parents[2]
GOOD_SECRET = "x" * 40
#: A uid that is not ours (the tests run as root; chown needs that).
OTHER_UID = 64102

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    monkeypatch.setenv("CWREDIS_HOME", str(path))
    for name in ("CWREDIS_SECRET", "CWREDIS_URL", "CWREDIS_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    return path


def write_secret(home: Path, text: str, mode: int = 0o600) -> Path:
    path = home / "secret"
    path.write_text(text)
    path.chmod(mode)
    return path


# ------------------------------------------------------------------ secrets


def test_no_secret_is_refused_with_the_fix(home):
    with pytest.raises(ConfigError) as err:
        config.require_secret()
    message = str(err.value)
    assert "\n" not in message
    for fix in ("$CWREDIS_SECRET", str(home / "secret"), "--insecure", "CWREDIS_INSECURE=1", "insecure=True"):
        assert fix in message


def test_insecure_only_when_asked(home, monkeypatch):
    assert config.require_secret(insecure=True) is None
    monkeypatch.setenv("CWREDIS_INSECURE", "1")
    assert config.require_secret() is None


def test_secret_from_env_then_file_with_its_source(home, monkeypatch):
    path = write_secret(home, f"  {GOOD_SECRET} \n")
    assert config.require_secret() == GOOD_SECRET.encode()
    assert config.find_secret() == config.ResolvedSecret(GOOD_SECRET.encode(), str(path))
    assert config.secret_source() == str(path)
    monkeypatch.setenv("CWREDIS_SECRET", "e" * 32)
    assert config.find_secret() == config.ResolvedSecret(b"e" * 32, "$CWREDIS_SECRET")


@pytest.mark.parametrize("content, why", [
    ("", "empty"),
    ("  \n", "empty"),
    ("short-secret", "12 characters"),
    ("CHANGE-ME-to-a-long-random-string", "example value"),
])
def test_an_unusable_secret_file_is_an_error_even_insecure(home, content, why):
    write_secret(home, content)
    for insecure in (False, True):
        with pytest.raises(ConfigError, match=why):
            config.require_secret(insecure=insecure)


@pytest.mark.parametrize("value, why", [("short", "5 characters"),
                                        ("CHANGE-ME-to-a-long-random-string", "example value")])
def test_an_unusable_env_secret_is_refused(home, monkeypatch, value, why):
    monkeypatch.setenv("CWREDIS_SECRET", value)
    with pytest.raises(ConfigError, match=why):
        config.require_secret(insecure=True)


def test_an_unreadable_secret_file_is_an_error(home):
    (home / "secret").mkdir()  # root reads any mode; a directory is unreadable as a file for everyone
    with pytest.raises(ConfigError, match="not a regular file"):
        config.require_secret(insecure=True)


def test_a_client_without_a_secret_refuses_before_connecting(home):
    with pytest.raises(ConfigError, match="no signing secret"):
        ClientThread(url="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigError, match="characters"):
        ClientThread(url="redis://127.0.0.1:1/0", secret="short")


def test_ensure_secret_creates_a_private_file_once(home):
    created = config.ensure_secret()
    path = home / "secret"
    assert created.source == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(created.value) >= config.MIN_SECRET_CHARS
    assert config.ensure_secret() == created  # not replaced


# ------------------------------------------------------------ files we trust


def test_a_symlinked_secret_or_url_file_is_refused(home, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text(GOOD_SECRET)
    target.chmod(0o600)
    (home / "secret").symlink_to(target)
    (home / "url").symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link"):
        config.require_secret()
    with pytest.raises(ConfigError, match="symbolic link"):
        config.resolve_url()


@needs_root
def test_files_of_another_user_are_refused(home):
    write_secret(home, GOOD_SECRET)
    (home / "url").write_text("redis://:pw@attacker:6379/0\n")
    os.chown(home / "secret", OTHER_UID, OTHER_UID)
    os.chown(home / "url", OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"belongs to uid {OTHER_UID}"):
        config.require_secret()
    with pytest.raises(ConfigError, match=f"belongs to uid {OTHER_UID}"):
        config.resolve_url()


@needs_root
def test_a_home_of_another_user_is_refused(home):
    (home / "url").write_text("redis://:pw@attacker:6379/0\n")
    os.chown(home, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"belongs to uid {OTHER_UID}"):
        config.resolve_url()
    with pytest.raises(ConfigError, match=f"belongs to uid {OTHER_UID}"):
        config.require_secret(insecure=True)


def test_group_writable_home_or_files_are_refused(home):
    (home / "url").write_text("redis://h:1/0\n")
    (home / "url").chmod(0o664)
    with pytest.raises(ConfigError, match="chmod go-w"):
        config.resolve_url()
    (home / "url").chmod(0o644)
    assert config.resolve_url() == "redis://h:1/0"
    write_secret(home, GOOD_SECRET, mode=0o644)  # a secret others can read is no secret
    with pytest.raises(ConfigError, match="chmod 600"):
        config.require_secret()
    (home / "secret").chmod(0o600)
    home.chmod(0o775)
    with pytest.raises(ConfigError, match="writable by group or others"):
        config.require_secret()


def test_a_created_home_is_0700_whatever_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        path = ensure_private_dir(tmp_path / "new-home")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_writing_never_follows_a_planted_symlink(tmp_path):
    home = ensure_private_dir(tmp_path / "home")
    victim = tmp_path / "victim-file"
    victim.write_text("precious")
    (home / "url").symlink_to(victim)
    write_private(home / "url", "redis://h:1/0\n")
    assert victim.read_text() == "precious"
    assert not (home / "url").is_symlink()
    assert read_private(home / "url", "URL file") == b"redis://h:1/0\n"
    assert stat.S_IMODE((home / "url").stat().st_mode) == 0o600
    (home / "secret").symlink_to(victim)
    assert not create_private(home / "secret", "new")  # something is there: left alone, not followed
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in home.iterdir()) == ["secret", "url"]  # no temporary left behind


# ------------------------------------------------------------------ masking


@pytest.mark.parametrize("url, masked", [
    ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
    ("redis://user:pw@h:1/0", "redis://user:***@h:1/0"),
    ("rediss://user:pw@h:1/0", "rediss://user:***@h:1/0"),
    ("redis://h:1/0?password=pw", "redis://h:1/0?password=***"),
    ("redis://h:1/0?db=1&password=pw&socket_timeout=3", "redis://h:1/0?db=1&password=***&socket_timeout=3"),
    ("unix://:pw@/run/redis.sock", "unix://:***@/run/redis.sock"),
    ("unix:///run/redis.sock?password=pw&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ("redis://:p@ss:w@rd@h:1/0", "redis://:***@h:1/0"),
    ("redis://u:p:w@h:1/0", "redis://u:***@h:1/0"),
    ("redis+sentinel://:pw@h1:1,h2:2/svc", "redis+sentinel://:***@h1:1,h2:2/svc"),
    ("redis+sentinel://h1:1,h2:2/svc/0?password=pw", "redis+sentinel://h1:1,h2:2/svc/0?password=***"),
    ("redis://h:1/0", "redis://h:1/0"),
    ("redis://[::1:6379/0?password=pw", "redis://***"),  # does not parse: all of it masked
])
def test_every_password_form_is_masked(url, masked):
    assert config.mask_url(url) == masked


def test_masking_agrees_with_what_redis_py_reads():
    from redis.connection import parse_url

    for url in ("redis://:p@ss:w@rd@h:1/0", "unix://:pw@/s.sock", "redis://h/0?password=pw"):
        password = parse_url(url)["password"]
        assert password not in config.mask_url(url)


# ----------------------------------------------------------------- terminal


def test_control_characters_are_escaped():
    evil = "boom\x1b[2J\x1b]0;pwned\x07\r\x7f\x9b\tend"
    assert printable(evil) == "boom\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\x7f\\x9b\\x09end"
    assert printable("line1\nline2\x1b[H", multiline=True) == "line1\nline2\\x1b[H"
    assert printable("a\nb") == "a\\x0ab"
    assert printable("café ✓") == "café ✓"


# ---------------------------------------------------------------------- TLS


def test_rediss_checks_certificate_and_host_name():
    connection = connect("rediss://:pw@redis.example.org:6380/0", "test").connection_pool.make_connection()
    assert connection.check_hostname is True
    assert connection.cert_reqs == ssl.CERT_REQUIRED


def test_the_package_requires_a_redis_py_that_checks_host_names():
    """redis-py checks host names on rediss:// by default from 6.0 on; 5.x did not."""
    setup_py = (REPO / "setup.py").read_text()
    required = re.search(r'"redis>=(\d+)', setup_py)
    assert required is not None and int(required.group(1)) >= 6


# ------------------------------------------------------------------- sbatch


def test_sbatch_gets_no_url_or_secret_and_a_private_umask(home, tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    record = tmp_path / "sbatch-saw"
    (fake / "sbatch").write_text(f"#!/bin/sh\n{{ umask; env; }} > {record}\necho 4242\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CWREDIS_URL", "redis://:leaked-password@h:1/0")
    monkeypatch.setenv("CWREDIS_SECRET", GOOD_SECRET)
    args = Namespace(time=None, partition=None, sbatch_arg=[])
    assert slurm_batch.submit(1, [], args, "cwredis") == "4242"
    saw = record.read_text()
    assert saw.splitlines()[0] == "0077"
    assert "leaked-password" not in saw and GOOD_SECRET not in saw
    assert f"CWREDIS_HOME={home}" in saw
    assert "\numask 077" in slurm_batch.SBATCH_SCRIPT
    assert stat.S_IMODE((home / "cwredis.sbatch").stat().st_mode) == 0o600

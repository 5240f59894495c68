"""CodeWatch: a job process notices that a user module it loaded changed on disk."""

from __future__ import annotations

import importlib
import json
import os
import sys

from cwredis.worker.freshness import CodeWatch


def test_a_changed_user_module_is_noticed_and_system_modules_are_not_watched(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "watched_mod_xyz.py"
    module.write_text("X = 1\n")
    watch = CodeWatch()
    importlib.import_module("watched_mod_xyz")
    assert "json" in sys.modules and json  # already there before the watch: not the user's
    watch.note_imports()
    assert watch.changed() is None
    module.write_text("X = 22\n")  # another size, whatever the clock's granularity
    assert watch.changed() == os.path.realpath(module)
    sys.modules.pop("watched_mod_xyz")


def test_modules_under_the_system_directories_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "sys_like_mod_xyz.py").write_text("Y = 1\n")
    watch = CodeWatch(system_dirs=[os.path.join(os.path.realpath(tmp_path), "")])
    importlib.import_module("sys_like_mod_xyz")
    watch.note_imports()
    (tmp_path / "sys_like_mod_xyz.py").write_text("Y = 222\n")
    assert watch.changed() is None
    sys.modules.pop("sys_like_mod_xyz")

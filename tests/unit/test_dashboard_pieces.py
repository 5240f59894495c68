"""Pieces of the dashboard and ``cw-admin logs`` that need no server: the missing extra, the tail merge."""

from __future__ import annotations

import argparse
import sys

import pytest

from cwredis import admin_dashboard
from cwredis.admin_logs import new_text
from cwredis.admin_sessions import UserError


def test_without_the_extra_the_dashboard_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cwredis.dashboard.serve", None)  # what a missing uvicorn looks like
    args = argparse.Namespace(bind="127.0.0.1", port=0, metrics_only=False)
    with pytest.raises(UserError, match=r'pip install "cwredis\[dashboard\]"'):
        admin_dashboard.cmd_dashboard(object(), args)


@pytest.mark.parametrize("shown, tail, new", [
    ("", "a\n", "a\n"),
    ("a\n", "a\nb\n", "b\n"),
    ("a\nb\n", "a\nb\n", ""),
    ("y" * 100 + "x" * 300 + "a\n", "x" * 300 + "a\nb\n", "b\n"),  # the tail rolled over: placed by its end
    ("old\n", "unrelated\n", "unrelated\n"),  # more than a tail went by: all of it is new
])
def test_logs_follow_prints_only_what_is_new(shown, tail, new):
    assert new_text(shown, tail) == new

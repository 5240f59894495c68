"""``cw-admin --help`` and each subcommand's ``--help`` fit on one screen (24 lines)."""

from __future__ import annotations

import argparse

import pytest

from cwredis.admin import build_parser

SCREEN_LINES = 24


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(action.choices)


@pytest.mark.parametrize("command", [None, *_subparsers(build_parser())])
def test_help_fits_on_one_screen(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    parser = build_parser()
    text = (parser if command is None else _subparsers(parser)[command]).format_help()
    assert len(text.splitlines()) <= SCREEN_LINES, text

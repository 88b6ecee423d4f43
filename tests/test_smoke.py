"""The public names, and the offline demo end to end."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import crdtsync
from crdtsync.cli import main


def test_top_level_all_is_the_union_of_module_alls() -> None:
    expected: set[str] = set()
    for name in ("clock", "errors", "schema"):
        expected |= set(importlib.import_module(f"crdtsync.{name}").__all__)
    assert expected <= set(crdtsync.__all__)
    for name in crdtsync.__all__:
        assert hasattr(crdtsync, name), name
    assert len(crdtsync.__all__) == len(set(crdtsync.__all__))


def test_every_module_declares_all() -> None:
    missing = []
    for mod in pkgutil.walk_packages(crdtsync.__path__, "crdtsync."):
        if mod.name.endswith("__main__"):
            continue
        m = importlib.import_module(mod.name)
        if not hasattr(m, "__all__"):
            missing.append(mod.name)
    assert missing == []


def test_demo_runs_and_shows_a_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "CONFLICT on 'name'" in out
    assert "Identical on all three devices: True" in out
    assert "progress upload" in out and "completed:" in out

"""Atomic writes: all or nothing, and files readable like any other the user creates."""

from __future__ import annotations

import json
import os
import stat

import pytest

from kdlab import io


def test_atomic_write_json_round_trips_and_leaves_no_temporary_file(tmp_path):
    target = io.atomic_write_json(tmp_path / "sub" / "r.json", {"a": [1, 2.5]})
    assert json.loads(target.read_text()) == {"a": [1, 2.5]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        target = io.atomic_write_text(tmp_path / "r.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = io.atomic_write_text(tmp_path / "r.txt", "old")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.txt"]

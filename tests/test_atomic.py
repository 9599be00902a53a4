"""Atomic writes: the target is replaced in one step on success and left exactly as it was on failure."""

from __future__ import annotations

import pytest

from onebyone.atomic import atomic_file, atomic_folder


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with atomic_file(target, suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".npz")
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_folder_replaces_a_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "model.so").write_text("half")
            raise RuntimeError("build failed")
    assert [p.name for p in target.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["pkg"]
    with atomic_folder(target) as tmp:
        (tmp / "model.so").write_text("new")
    assert [p.name for p in target.iterdir()] == ["model.so"] and [p.name for p in tmp_path.iterdir()] == ["pkg"]

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


def test_outputs_get_the_permissions_of_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # mkstemp alone would leave 0600
    finally:
        os.umask(old)


def test_a_model_and_its_data_file_are_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    """If the model's rename fails after its data file moved in, the old data file is put back, so the model
    already there keeps loading."""
    import os

    from onebyone.atomic import atomic_pair

    (tmp_path / "m.onnx").write_text("old model")
    (tmp_path / "m.onnx.data").write_text("old data")
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("m.onnx"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        with atomic_pair(tmp_path / "m.onnx", "m.onnx.data") as folder:
            (folder / "m.onnx").write_text("new model")
            (folder / "m.onnx.data").write_text("new data")
    assert (tmp_path / "m.onnx").read_text() == "old model" and (tmp_path / "m.onnx.data").read_text() == "old data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    monkeypatch.setattr(os, "replace", real_replace)
    with atomic_pair(tmp_path / "m.onnx", "m.onnx.data") as folder:
        (folder / "m.onnx").write_text("new model")
        (folder / "m.onnx.data").write_text("new data")
    assert (tmp_path / "m.onnx").read_text() == "new model" and (tmp_path / "m.onnx.data").read_text() == "new data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]

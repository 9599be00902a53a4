"""Writing files and folders atomically: build next to the target, then one rename, so readers never see half a
result and a failure leaves the target as it was."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temp path in `path`'s folder; when the block ends normally it replaces `path` in one rename,
    and when it raises, the temp file is removed and `path` is untouched. `suffix` ends the temp name (some writers,
    e.g. numpy's savez, insist on their own extension)."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as an ordinary open() would create it (mkstemp makes 0600)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder next to `path`; when the block ends normally it replaces `path` (an existing
    folder there is removed first), and when it raises, the temp folder is removed and `path` is untouched."""
    out = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_pair(path: str | os.PathLike, companion: str) -> Iterator[Path]:
    """For a file that travels with a companion file beside it (a model and its external data `companion`): yield a
    temp folder next to `path`; the block writes `<folder>/<path's name>` and optionally `<folder>/<companion>`. On
    success the companion then the file replace their targets; if the second rename fails, the old companion is put
    back, so an earlier file at `path` keeps loading. On failure nothing at the targets changes."""
    out = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    target_companion = out.parent / companion
    backup = out.parent / f".{companion}.previous"
    try:
        yield tmp
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~_umask())
        moved = False
        if (tmp / companion).exists():
            if target_companion.exists():
                os.replace(target_companion, backup)
            os.replace(tmp / companion, target_companion)
            moved = True
        try:
            os.replace(tmp / out.name, out)
        except BaseException:
            if moved:
                os.replace(backup, target_companion) if backup.exists() else os.unlink(target_companion)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if backup.exists():
            os.unlink(backup)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

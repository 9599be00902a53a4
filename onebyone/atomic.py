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
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

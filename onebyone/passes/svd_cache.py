"""Singular value decompositions of weight unfoldings, computed once per matrix.

A search rewrites one model at many budgets, and every rewrite (data-aware, weight-only, each form on and off) asks
for the same weights' spectra and truncated SVDs (open_nsfw's data-aware `--macs 0.67` run: 62 SVDs of 31 matrices,
1.2 s under the profiler; its `--policy error` search rewrites it at every budget it tries). Results are cached by
the matrix's content (shape, dtype and a blake2b digest of its bytes), the most recently used first, up to
CACHE_BYTES of results; they are read-only arrays, so that no caller can change what another one gets.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

CACHE_BYTES = 256 * 2**20  # bytes of cached results (u, s, vt or s) kept; the least recently used go first

_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()
_held = [0]  # bytes held by _cache


def svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """np.linalg.svd(m, full_matrices=False) as read-only arrays, computed once per matrix content."""
    return _cached(m, True, digest(m))


def singular_values(m: np.ndarray) -> np.ndarray:
    """np.linalg.svd(m, compute_uv=False) as a read-only array (from a cached full SVD of m when there is one)."""
    key = digest(m)
    full = _get((True, key))
    return full[1] if full is not None else _cached(m, False, key)[0]


def digest(*arrays: np.ndarray) -> tuple:
    """A key for the content of `arrays` (shapes, dtypes and a blake2b digest of their bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1))
    return tuple((a.shape, np.asarray(a).dtype.str) for a in arrays), h.digest()


def clear() -> None:
    """Forget every cached result."""
    with _lock:
        _cache.clear()
        _held[0] = 0


def _get(key: tuple):
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
        return hit


def _cached(m: np.ndarray, uv: bool, content: tuple) -> tuple:
    """(u, s, vt) with `uv`, else (s,): from the cache under (uv, content), or computed and cached."""
    key = (uv, content)
    hit = _get(key)
    if hit is not None:
        return hit
    value = tuple(np.linalg.svd(m, full_matrices=False)) if uv else (np.linalg.svd(m, compute_uv=False),)
    for a in value:
        a.setflags(write=False)
    size = sum(a.nbytes for a in value)
    with _lock:
        if key not in _cache and size <= CACHE_BYTES:
            _cache[key] = value
            _held[0] += size
            while _held[0] > CACHE_BYTES:
                _, old = _cache.popitem(last=False)
                _held[0] -= sum(a.nbytes for a in old)
    return value

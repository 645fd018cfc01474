"""Rows of a store's ``.npy`` arrays (codes, latent) read from the file, and frame -> utterance maps.

The store's arrays are memory-mapped, and pages touched through a map stay resident, counted in
the process's peak RSS, for as long as the map lives: a pass over the whole corpus would leave
2 bytes x layers per frame of codes (and 2 x D of a float16 latent) in memory. Reading a block of
rows with ``np.fromfile`` instead costs the block and nothing once it is dropped.

Frames are stored utterance by utterance, so the utterance of a frame follows from the utterances'
exclusive end frames (``utterance_ends``, one int64 per utterance) by a binary search: no
per-frame index array is needed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import CodeclensError
from . import layout

CHUNK_FRAMES = 1 << 18
"""Frames per block of :func:`codes_at` (256 k: a few MB per transient array)."""


@lru_cache(maxsize=64)
def _layout(path: str, size: int, mtime: int) -> tuple[int, np.dtype, tuple[int, ...]]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise CodeclensError(f"{path}: Fortran-ordered arrays are not supported")
        return f.tell(), dtype, shape


def npy_layout(path: str | Path) -> tuple[int, np.dtype, tuple[int, ...]]:
    """(data offset, dtype, shape) of a C-ordered ``.npy`` file (header read once per file version)."""
    st = Path(path).stat()
    return _layout(str(path), st.st_size, st.st_mtime_ns)


def npy_rows(path: str | Path, a: int, b: int, cols: Sequence[int] | None = None) -> np.ndarray:
    """Rows ``a..b-1`` of a 2-D C-ordered ``.npy`` file (columns ``cols``, all when None), in the
    file's dtype, by one contiguous file read."""
    offset, dtype, shape = npy_layout(path)
    width = int(shape[1])
    a, b = int(a), int(b)
    with open(path, "rb") as f:
        f.seek(offset + a * width * dtype.itemsize)
        block = np.fromfile(f, dtype=dtype, count=(b - a) * width).reshape(b - a, width)
    if cols is None:
        return block
    cols = list(cols)
    return block if cols == list(range(width)) else block[:, cols]


def code_rows(store: Any, a: int, b: int, cols: Sequence[int]) -> np.ndarray:
    """Codes of frames ``a..b-1`` for 0-based layer columns ``cols`` (file reads, see the module)."""
    return npy_rows(store.path / layout.CODES, a, b, cols)


def latent_rows(store: Any, a: int, b: int) -> np.ndarray:
    """Latent ``[b - a, D]`` of frames ``a..b-1`` in the file's dtype (file reads, see the module)."""
    if not store.has_latent:
        raise CodeclensError(f"{store.path}: store has no latent (extract with --latent)")
    return npy_rows(store.path / layout.LATENT, a, b)


def codes_at(store: Any, rows: np.ndarray, cols: Sequence[int], chunk: int = CHUNK_FRAMES) -> np.ndarray:
    """Codes ``[len(rows), len(cols)]`` (the file's integer dtype) of ascending frame ``rows`` for 0-based
    layer columns ``cols``.

    Read block by block with :func:`code_rows` rather than gathered from the store's memory map: a
    gather of rows spread over the corpus touches every page of ``codes.npy``, and those pages stay
    resident for as long as the map lives.
    """
    cols = list(cols)
    return _rows_at(lambda a, b: code_rows(store, a, b, cols), np.asarray(rows), (len(cols),),
                    npy_layout(store.path / layout.CODES)[1], chunk)


def latent_at(store: Any, rows: np.ndarray, chunk_bytes: int = 8 << 20) -> np.ndarray:
    """Latent rows ``[len(rows), D]`` (the file's dtype) of ascending frame ``rows``, read block by block
    as :func:`codes_at` reads codes (blocks of about ``chunk_bytes``)."""
    if not store.has_latent:
        raise CodeclensError(f"{store.path}: store has no latent (extract with --latent)")
    path = store.path / layout.LATENT
    _, dtype, shape = npy_layout(path)
    return _rows_at(lambda a, b: npy_rows(path, a, b), np.asarray(rows), (int(shape[1]),), dtype,
                    max(1, chunk_bytes // (int(shape[1]) * dtype.itemsize)))


def _rows_at(read, rows: np.ndarray, width: tuple[int, ...], dtype, chunk: int) -> np.ndarray:
    out = np.empty((len(rows),) + width, dtype)
    if not len(rows):
        return out
    if np.any(np.diff(rows) < 0):
        raise ValueError("reading rows needs them ascending")
    i = 0
    while i < len(rows):
        a = int(rows[i])
        j = int(np.searchsorted(rows, a + chunk, side="left"))
        block = read(a, int(rows[j - 1]) + 1)
        out[i:j] = block[rows[i:j] - a]
        i = j
    return out


def utterance_ends(store: Any) -> np.ndarray:
    """Exclusive end frame of every utterance (frames are stored utterance by utterance)."""
    return np.cumsum(store.utterances["n_frames"].to_numpy().astype(np.int64))


def utt_of_rows(ends: np.ndarray, a: int, b: int) -> np.ndarray:
    """Utterance row of frames ``a..b-1``."""
    return utt_of_rows_at(ends, np.arange(a, b))


def utt_of_rows_at(ends: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Utterance row of the given frame rows (an empty utterance owns none)."""
    return np.searchsorted(ends, rows, side="right")

"""Utterance means of a representation, streamed in chunks of frames (``Store.pooled``).

Memory is one chunk of frames plus the ``[n_utterances, D]`` float64 sums, whatever the number
of frames: codes and latent rows are read from the files (:mod:`.codesio`, so no mapped page stays
resident) and a chunk's frames are assigned to utterances from the utterances' start frames (frames
are stored utterance by utterance), never through a per-frame index array.

``layer:k`` and ``cumulative:k`` materialise no vector: an utterance's sum over its frames of
``table_l[code_l]`` is ``sum_c count_l(utterance, code c) * table_l[c]``, integer counts times the
table in float64. That is the frames' float64 sum in another order, so the float32 means agree with
a brute-force float64 mean over the materialised frames to float32 rounding (relative 1e-7; the
tests allow 1e-6), and with each other whatever the chunk size. ``latent`` rows are summed in
float64 chunk by chunk (the same sums up to the order of additions across chunk boundaries).

An empty utterance (no frames) has mean 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CodeclensError
from . import layout
from .codesio import CHUNK_FRAMES, code_rows, latent_rows, npy_layout, utterance_ends
from .reprs import Repr

LATENT_CHUNK_BYTES = 32 << 20
"""Transient bytes per latent chunk by default (its rows in the file's dtype and in float64)."""

DENSE_COUNTS = 4
"""A chunk's per-utterance code counts are a dense ``[utterances, K]`` table (one bincount, one matmul)
while that table has at most this many cells per frame of the chunk; beyond (many short utterances,
large codebooks) only the (utterance, code) pairs that occur are kept, so the work stays linear in
the frames."""


def utterance_means(store: Any, rep: Repr, chunk_frames: int | None = None) -> np.ndarray:
    """Utterance means ``[n_utterances, D]`` (float32) of the frame-level ``rep`` (not ``codes:k``).

    ``chunk_frames``: frames per chunk (default :data:`~.codesio.CHUNK_FRAMES` for codes, about
    :data:`LATENT_CHUNK_BYTES` of rows for the latent); the result does not depend on it beyond
    float summation order."""
    if rep.kind == "codes":
        raise CodeclensError("mean(codes:k) is not meaningful; pool layer:k instead")
    nf = store.utterances["n_frames"].to_numpy().astype(np.int64)
    ends = utterance_ends(store)
    n = int(ends[-1]) if len(nf) else 0
    full = np.flatnonzero(nf > 0)  # empty utterances own no frames and would break the run starts
    starts, stops = (ends - nf)[full], ends[full]
    if rep.kind == "latent":
        latent_rows(store, 0, 0)  # the store's error when it has no latent
        dim = int(npy_layout(store.path / layout.LATENT)[2][1])
        chunk = int(chunk_frames or max(256, LATENT_CHUNK_BYTES // (10 * dim)))  # float16 + float64 rows
        add = _latent_adder(store)
    else:
        k = int(rep.layer) - 1
        layers = [k] if rep.kind == "layer" else list(range(k + 1))
        tables = [np.asarray(store.tables[l], np.float64) for l in layers]
        dim = int(tables[0].shape[1])
        chunk = int(chunk_frames or CHUNK_FRAMES)
        add = _codes_adder(store, layers, tables)
    if chunk < 1:
        raise CodeclensError(f"chunk of {chunk} frames: give at least 1")
    sums = np.zeros((len(nf), dim), np.float64)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        i0 = int(np.searchsorted(stops, a, side="right"))  # first utterance ending after a
        i1 = int(np.searchsorted(starts, b, side="left"))  # past the last one starting before b
        local = np.maximum(starts[i0:i1], a) - a  # run starts inside the chunk, ascending, distinct
        sums[full[i0:i1]] += add(a, b, local)
    sums /= np.maximum(nf, 1)[:, None]  # in place: the sums are the only [utterances, D] array
    return sums.astype(np.float32)


def _latent_adder(store: Any):
    def add(a: int, b: int, local: np.ndarray) -> np.ndarray:
        return np.add.reduceat(latent_rows(store, a, b).astype(np.float64), local, axis=0)

    return add


def _codes_adder(store: Any, layers: list[int], tables: list[np.ndarray]):
    def add(a: int, b: int, local: np.ndarray) -> np.ndarray:
        m = len(local)
        group = np.repeat(np.arange(m, dtype=np.int64), np.diff(np.append(local, b - a)))
        codes = code_rows(store, a, b, layers)
        out = np.zeros((m, tables[0].shape[1]), np.float64)
        for j, t in enumerate(tables):
            out += code_sums(group, codes[:, j], t, m)
        return out

    return add


def code_sums(group: np.ndarray, codes: np.ndarray, table: np.ndarray, m: int) -> np.ndarray:
    """``[m, D]`` float64: per group g (0..m-1, every one present), the sum of ``table[codes]`` over its
    rows, computed as code counts times the table (dense or over the occurring pairs, see
    :data:`DENSE_COUNTS`)."""
    K = len(table)
    keys = group * K + codes.astype(np.int64)
    if m * K <= DENSE_COUNTS * len(codes):
        return np.bincount(keys, minlength=m * K).reshape(m, K).astype(np.float64) @ table
    pairs, counts = np.unique(keys, return_counts=True)  # sorted: grouped by group, every group present
    g = pairs // K
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    return np.add.reduceat(table[pairs % K] * counts[:, None], first, axis=0)

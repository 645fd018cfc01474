"""Exact probes on a single layer through its (code x label) count table.

A ``layer:k`` vector is ``table_k[code]``: at most K distinct values. A linear
probe's loss over N frames is therefore a sum over those K vectors, each
weighted by how often it occurs with each label, so fitting on the count table
is the same optimisation problem as fitting on the frames (no approximation),
at a cost independent of N. For regression the per-code sums of y and y^2 give
the least-squares problem exactly. Codes whose table rows are identical are
merged first (they are the same vector), so the tables also hold for
degenerate codebooks.

The same tables give the code-lookup upper bound: the best any classifier that
sees only layer k can do is to predict, for each code, its majority train label
(for regression: its train mean).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...store import Repr, Store
from ..framestream import codes_at


@dataclasses.dataclass(frozen=True)
class CodeVectors:
    """The distinct vectors of one layer and the id of each row's vector."""

    vectors: np.ndarray
    """[U, D] distinct vectors (rows of the layer's table; the identity for codes:k)."""
    ids: dict[str, np.ndarray]
    """Vector id of every row, per split."""
    codes: dict[str, np.ndarray]
    """Raw code of every row, per split (the 'type' of a code control)."""


def code_vectors(store: Store, rep: Repr, rows: dict[str, np.ndarray]) -> CodeVectors:
    k = rep.layer - 1
    if rep.kind == "codes":
        vectors = np.eye(store.codebook_sizes[k], dtype=np.float64)
        remap = np.arange(len(vectors), dtype=np.int32)
    else:
        vectors, remap = np.unique(np.asarray(store.tables[k], np.float64), axis=0, return_inverse=True)
        remap = remap.reshape(-1).astype(np.int32)  # int32 ids: 4 bytes per frame
    codes = {s: codes_at(store, r, [k])[:, 0] for s, r in rows.items()}
    return CodeVectors(vectors, {s: remap[c] for s, c in codes.items()}, codes)


def count_table(ids: np.ndarray, y: np.ndarray, n_ids: int, n_classes: int) -> np.ndarray:
    """[U, C] how often vector u occurs with label c."""
    return np.bincount(ids * n_classes + y, minlength=n_ids * n_classes).reshape(n_ids, n_classes).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class CodeSums:
    """Per-vector regression sums: count, sum of y, sum of y^2."""

    n: np.ndarray
    s1: np.ndarray
    s2: np.ndarray


def code_sums(ids: np.ndarray, y: np.ndarray, n_ids: int) -> CodeSums:
    y = np.asarray(y, np.float64)
    return CodeSums(
        np.bincount(ids, minlength=n_ids).astype(np.float64),
        np.bincount(ids, weights=y, minlength=n_ids),
        np.bincount(ids, weights=y * y, minlength=n_ids),
    )


def lookup_classifier(train_counts: np.ndarray) -> np.ndarray:
    """Majority train label per vector; vectors unseen in train get the global majority."""
    pred = train_counts.argmax(1)
    seen = train_counts.sum(1) > 0
    pred[~seen] = train_counts.sum(0).argmax()
    return pred


def lookup_regressor(sums: CodeSums) -> np.ndarray:
    """Train mean per vector; unseen vectors get the global train mean."""
    glob = sums.s1.sum() / max(sums.n.sum(), 1)
    return np.where(sums.n > 0, sums.s1 / np.maximum(sums.n, 1), glob)

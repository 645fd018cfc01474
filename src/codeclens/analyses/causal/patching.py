"""Token-level patches of one RVQ layer: drop, mean, swap, on all frames or some.

Codes are ``[T, L]`` int64. A dropped code is :data:`ABSENT` (−1): every consumer
reads it as "this layer says nothing at this frame" (the built-in consumers map it
to a zero vector, as a decoder's dropped layer contributes nothing). ``mean``
replaces the layer by its *mean code*: the code whose table vector is closest to
the layer's expected vector under its code distribution, the token-level analogue
of mean ablation (on-distribution, unlike zero). ``swap`` takes the layer from a
counterfactual utterance, cropped or looped to the source length.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

ABSENT = -1
MODES = ("drop", "mean", "swap")


def mean_codes(codes: np.ndarray, tables: Sequence[np.ndarray]) -> np.ndarray:
    """``[L]`` mean code per layer (see module docstring) from the store's codes."""
    out = []
    for l, tab in enumerate(tables):
        tab = np.asarray(tab, dtype=np.float64)
        counts = np.bincount(np.asarray(codes[:, l], dtype=np.int64), minlength=len(tab))[: len(tab)]
        expected = counts @ tab / max(counts.sum(), 1)
        out.append(int(np.argmin(((tab - expected) ** 2).sum(axis=1))))
    return np.array(out, dtype=np.int64)


def aligned(donor: np.ndarray, n: int) -> np.ndarray:
    """``donor [T', L]`` cropped or looped to ``n`` frames."""
    if len(donor) == 0:
        raise ValueError("empty donor")
    reps = -(-n // len(donor))
    return np.concatenate([donor] * reps)[:n]


def patch(codes: np.ndarray, layers: Sequence[int], mode: str, *, mean: np.ndarray | None = None,
          donor: np.ndarray | None = None, frames: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``codes [T, L]`` with ``layers`` (0-based) patched on ``frames`` (bool ``[T]``; all
    frames when None)."""
    out = np.array(codes, dtype=np.int64, copy=True)
    sel = np.ones(len(out), bool) if frames is None else np.asarray(frames, bool)
    for l in layers:
        if mode == "drop":
            out[sel, l] = ABSENT
        elif mode == "mean":
            if mean is None:
                raise ValueError("mean patching needs the layers' mean codes")
            out[sel, l] = mean[l]
        elif mode == "swap":
            if donor is None:
                raise ValueError("swap patching needs a donor")
            out[sel, l] = aligned(np.asarray(donor, dtype=np.int64), len(out))[sel, l]
        else:
            raise ValueError(f"unknown patch mode '{mode}'; known: {', '.join(MODES)}")
    return out


def lookup(codes: np.ndarray, tables: Sequence[np.ndarray], layers: Sequence[int] | None = None) -> np.ndarray:
    """Sum of table lookups ``[T, D]``; :data:`ABSENT` codes contribute zero."""
    layers = range(codes.shape[1]) if layers is None else layers
    out = np.zeros((len(codes), tables[0].shape[1]), dtype=np.float32)
    for l in layers:
        c = codes[:, l]
        ok = c != ABSENT
        out[ok] += tables[l][c[ok]]
    return out

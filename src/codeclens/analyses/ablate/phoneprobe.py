"""The phone probe used to score content in decoded audio.

Content retention after an edit is measured by re-encoding the decoded audio
with the same codec and asking a phone classifier on ``cumulative:L`` (all
layers summed: the codec's quantized representation) which phone each frame
is. The probe comes from the probes analysis (:func:`codeclens.analyses.probes.fit_probe`,
trained on the store's train split); when that cannot fit (e.g. a store too small
for its train/val/test splits), a scikit-learn logistic regression on the given
training utterances stands in. Both sit behind :func:`fit_phone_probe`.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Sequence

import numpy as np

PHONE_COLUMN = "phone"


def _valid(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels).astype(str)
    return (labels != "") & (labels != "None") & (labels != "nan")


def has_phone_labels(store) -> bool:
    return PHONE_COLUMN in store.frames.columns and _valid(store.frames[PHONE_COLUMN].to_numpy()).any()


def cumulative_features(tables: Sequence[np.ndarray], codes_tl: np.ndarray) -> np.ndarray:
    """``[T, L]`` codes -> ``[T, D]`` sum of every layer's table lookup."""
    codes_tl = np.asarray(codes_tl, dtype=np.int64)
    out = np.asarray(tables[0], np.float32)[codes_tl[:, 0]]
    for l in range(1, codes_tl.shape[1]):
        out = out + np.asarray(tables[l], np.float32)[codes_tl[:, l]]
    return out


@dataclasses.dataclass
class PhoneProbe:
    """``predict(codes [T, L]) -> phone labels``; ``source`` says which probe it is."""

    predict_fn: Any
    source: str
    train_frames: int = 0
    n_classes: int = 0
    key: str = ""
    """Identifies the fit (cached results are reused only for the same probe)."""

    def predict(self, codes_tl: np.ndarray, tables: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self.predict_fn(np.asarray(codes_tl, np.int64), tables)).astype(str)

    def accuracy(self, codes_tl: np.ndarray, tables: Sequence[np.ndarray], labels: np.ndarray) -> float:
        """Frame accuracy against ``labels`` (frames paired by index: same codec, same frame rate)."""
        n = min(len(codes_tl), len(labels))
        if n == 0:
            return float("nan")
        labels = np.asarray(labels[:n]).astype(str)
        keep = _valid(labels)
        if not keep.any():
            return float("nan")
        return float(np.mean(self.predict(codes_tl[:n], tables)[keep] == labels[keep]))


def fit_phone_probe(store, train_rows: Sequence[int], max_frames: int = 20000, seed: int = 0,
                    device: str = "auto") -> PhoneProbe | None:
    """The content probe for ``store`` (None when it has no phone labels)."""
    if not has_phone_labels(store):
        return None
    why = ""
    # The shared probe picks its L2 on the val split; a store too small for one gets a fixed L2.
    for extra, label in (({}, "train split"), ({"l2": (1e-3,)}, "train split, fixed L2 1e-3: no val split")):
        try:
            from ..probes import fit_probe

            fp = fit_probe(store, PHONE_COLUMN, f"cumulative:{store.n_layers}", seed=seed, device=str(device),
                           max_train_frames=max_frames, lookup=False, **extra)
            return PhoneProbe(fp.predict_codes, f"probes.fit_probe ({label})", 0, len(fp.classes),
                              f"probes:{seed}:{max_frames}:{extra}")
        except Exception as e:  # any failure of the shared probe: fall back, and say why
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
    fb = _fit_sklearn(store, train_rows, max_frames, seed)
    if fb is not None:
        fb.source = f"scikit-learn logistic regression on the other utterances (probes.fit_probe could not fit: {why})"
    return fb


def _fit_sklearn(store, train_rows: Sequence[int], max_frames: int, seed: int) -> PhoneProbe | None:
    from sklearn.linear_model import LogisticRegression

    u = store.utterances
    rows = [np.arange(int(u["frame_offset"].iloc[r]), int(u["frame_offset"].iloc[r]) + int(u["n_frames"].iloc[r]))
            for r in train_rows]
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    labels = store.frames[PHONE_COLUMN].to_numpy().astype(str)[rows]
    keep = _valid(labels)
    rows, labels = rows[keep], labels[keep]
    if len(rows) > max_frames:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_frames, replace=False))
        rows, labels = rows[pick], labels[pick]
    if len(np.unique(labels)) < 2:
        return None
    x = cumulative_features(store.tables, np.asarray(store.codes[rows], dtype=np.int64))
    mean, scale = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(max_iter=200)
    model.fit((x - mean) / scale, labels)

    def predict(codes_tl, tables):
        return model.predict((cumulative_features(tables, codes_tl) - mean) / scale)

    key = f"sklearn:{seed}:{max_frames}:{zlib.crc32(np.asarray(sorted(train_rows), np.int64).tobytes())}"
    return PhoneProbe(predict, "scikit-learn logistic regression (fallback)", len(rows), len(model.classes_), key)

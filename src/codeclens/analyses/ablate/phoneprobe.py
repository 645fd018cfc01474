"""The phone probe used to score content in decoded audio.

Content retention after an edit is measured by re-encoding the decoded audio
with the same codec and asking a phone classifier on ``cumulative:L`` (all
layers summed: the codec's quantized representation) which phone each frame
is. The probe never sees a measured utterance's speaker: it comes from the probes
analysis (:func:`codeclens.analyses.probes.fit_probe`, on the speaker-disjoint
split) when that split's train/val speakers are all unmeasured, and otherwise
from a scikit-learn logistic regression on the other speakers' utterances. Both
sit behind :func:`fit_phone_probe`.
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


def majority_rate(labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent valid label (NaN without labels)."""
    labels = np.asarray(labels).astype(str)
    labels = labels[_valid(labels)]
    if len(labels) == 0:
        return float("nan")
    return float(np.unique(labels, return_counts=True)[1].max() / len(labels))


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
    train_speakers: int = 0
    """Speakers it was trained on (none of them measured)."""

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


FIT_SPLITS = ("train", "val")
"""Rows of the speaker-disjoint split the shared probe learns from (val picks its L2)."""


def fit_phone_probe(store, measured_rows: Sequence[int], max_frames: int = 20000, seed: int = 0,
                    device: str = "auto") -> tuple[PhoneProbe | None, str]:
    """The content probe for ``store``, trained only on speakers none of ``measured_rows`` has,
    and a sentence saying what it was trained on (or why there is none).

    The shared probe (:func:`codeclens.analyses.probes.fit_probe` on the speaker-disjoint split)
    is used when its train/val speakers are disjoint from the measured ones; otherwise a
    scikit-learn logistic regression is trained on the utterances of the other speakers."""
    from .donors import speakers

    if not has_phone_labels(store):
        return None, "no phone labels in the store, so no phone accuracy (extract with a phone labeller)"
    spk = speakers(store)
    measured = set(spk[list(measured_rows)])
    u = store.utterances
    why = ""
    fit_spk = set(spk[u["split_spk"].isin(FIT_SPLITS).to_numpy()]) if "split_spk" in u.columns else set()
    if fit_spk and not fit_spk & measured:
        # The shared probe picks its L2 on the val split; a store too small for one gets a fixed L2.
        for extra, label in (({}, "speaker-disjoint split"), ({"l2": (1e-3,)}, "speaker-disjoint split, fixed L2 1e-3: no val split")):
            try:
                from ..probes import fit_probe

                fp = fit_probe(store, PHONE_COLUMN, f"cumulative:{store.n_layers}", seed=seed, device=str(device),
                               max_train_frames=max_frames, lookup=False, split="spk", **extra)
                probe = PhoneProbe(fp.predict_codes, f"probes.fit_probe ({label})", 0, len(fp.classes),
                                   f"probes:spk:{seed}:{max_frames}:{extra}", len(fit_spk))
                return probe, _said(probe, measured)
            except Exception as e:  # any failure of the shared probe: fall back, and say why
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        why = "its split shares speakers with the measured utterances" if fit_spk else "no speaker-disjoint split"
    train_rows = [i for i in range(store.n_utterances) if spk[i] not in measured]
    if not train_rows:
        return None, (f"every speaker of the store is among the {len(measured)} measured, so no content probe can be "
                      "trained on other speakers: no phone accuracy (measure fewer utterances)")
    fb = _fit_sklearn(store, train_rows, max_frames, seed)
    if fb is None:
        return None, "fewer than two phone classes among the other speakers' frames, no phone probe"
    fb.source = f"scikit-learn logistic regression on the other speakers' utterances (probes.fit_probe not used: {why})"
    fb.train_speakers = len(set(spk[train_rows]))
    return fb, _said(fb, measured)


def _said(probe: PhoneProbe, measured: set) -> str:
    return (f"phone accuracy from {probe.source}, trained on {probe.train_speakers} speakers disjoint from the "
            f"{len(measured)} measured speakers")


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
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    model = LogisticRegression(max_iter=200)
    with warnings.catch_warnings(record=True) as caught:  # said in the probe's description, not on the console
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit((x - mean) / scale, labels)
    unconverged = any(issubclass(w.category, ConvergenceWarning) for w in caught)

    def predict(codes_tl, tables):
        return model.predict((cumulative_features(tables, codes_tl) - mean) / scale)

    key = f"sklearn:{seed}:{max_frames}:{zlib.crc32(np.asarray(sorted(train_rows), np.int64).tobytes())}"
    source = "scikit-learn logistic regression (fallback" + (", stopped at 200 iterations)" if unconverged else ")")
    return PhoneProbe(predict, source, len(rows), len(model.classes_), key)

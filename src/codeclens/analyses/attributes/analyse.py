"""Attributes read from codec tokens: the analysis direction of the attribute model.

Every attribute stream (and the identity) is hidden, the codec's tokens are visible,
and the decoder's predictions are scored against the store's labels on test utterances:

- pitch: average absolute error in Hz on frames voiced in the labels, from the best
  *voiced* class (so it measures pitch, not voicing; voicing accuracy is its own row),
  beside the error of the training mean F0;
- content: frame accuracy beside the majority class of the training frames;
- loudness: mean absolute error in dB beside the training mean.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from . import streams as S
from .model import CODEC
from .training import Checkpoint, predict


def attribute_scores(ck: Checkpoint, store, train_rows: Sequence[int], test_utts: Sequence[S.Utt], device) -> pd.DataFrame:
    """One row per (attribute, metric): model value, baseline value, frames scored."""
    sc = ck.streams
    hidden = [a for a in sc.attributes]
    preds = predict(ck, test_utts, hidden, device)
    u = store.utterances
    off = u["frame_offset"].to_numpy()
    test_rows = np.concatenate([np.arange(off[t.row], off[t.row] + len(t.codes)) for t in test_utts])
    train_mask = np.isin(store.frame_utt, np.asarray(train_rows))
    rows = []

    def row(attr, metric, unit, model, base, n, baseline_name, better):
        rows.append({"attribute": attr, "metric": metric, "unit": unit, "model": float(model), "baseline": float(base),
                     "baseline_kind": baseline_name, "better": better, "n_frames": int(n)})

    if "pitch" in sc.attributes:
        f0 = store.frames["f0_hz"].to_numpy().astype(np.float64)
        voiced = store.frames["voiced"].to_numpy().astype(bool) & np.isfinite(f0)
        pv = np.concatenate([p["pitch:voiced"] for p in preds])
        pc = np.concatenate([p["pitch"] for p in preds])
        v = voiced[test_rows]
        truth = np.minimum(f0[test_rows][v], sc.pitch_max_hz)
        est = S.pitch_hz(pv, sc)[v]
        mean_f0 = float(np.mean(f0[train_mask & voiced])) if (train_mask & voiced).any() else float("nan")
        row("pitch", "AAE (voiced frames)", "Hz", np.mean(np.abs(est - truth)), np.mean(np.abs(mean_f0 - truth)),
            v.sum(), "training mean F0", "lower")
        maj = float(np.mean(voiced[train_mask])) >= 0.5
        row("pitch", "voicing accuracy", "fraction", np.mean((pc >= 1) == v), np.mean(v == maj), len(v),
            "majority voicing", "higher")
    if "content" in sc.attributes:
        truth = np.concatenate([t.frames["content"] for t in test_utts])
        est = np.concatenate([p["content"] for p in preds])
        train_c = S.frame_streams(store, sc, ck.vocab)["content"][train_mask]
        train_c = train_c[train_c >= 0]
        maj = int(np.bincount(train_c).argmax()) if len(train_c) else -2
        k = truth >= 0
        row("content", f"accuracy ({ck.vocab.content_source}s, {len(ck.vocab.content_classes)} classes)", "fraction",
            np.mean(est[k] == truth[k]), np.mean(truth[k] == maj), k.sum(), "majority class", "higher")
    if "loudness" in sc.attributes:
        db = store.frames["loudness"].to_numpy().astype(np.float64)
        k = np.isfinite(db[test_rows])
        truth = np.clip(db[test_rows][k], sc.loudness_min_db, sc.loudness_max_db)
        est = S.loudness_db(np.concatenate([p["loudness"] for p in preds])[k], sc)
        tm = train_mask & np.isfinite(db)
        mean_db = float(np.mean(np.clip(db[tm], sc.loudness_min_db, sc.loudness_max_db))) if tm.any() else float("nan")
        row("loudness", "MAE", "dB", np.mean(np.abs(est - truth)), np.mean(np.abs(mean_db - truth)), k.sum(),
            "training mean", "lower")
    return pd.DataFrame(rows)


def codec_token_accuracy(ck: Checkpoint, test_utts: Sequence[S.Utt], device) -> pd.DataFrame:
    """Generation direction, scored on tokens: per RVQ layer, the fraction of frames whose code the
    model regenerates from the attributes alone, beside the layer's most frequent code."""
    preds = predict(ck, test_utts, [CODEC], device)
    truth = np.concatenate([t.codes for t in test_utts])
    est = np.concatenate([p[CODEC] for p in preds])
    rows = []
    for l in range(truth.shape[1]):
        maj = np.bincount(truth[:, l]).argmax()
        rows.append({"layer": l + 1, "accuracy": float(np.mean(est[:, l] == truth[:, l])),
                     "baseline": float(np.mean(truth[:, l] == maj)), "n_frames": int(len(truth))})
    return pd.DataFrame(rows)

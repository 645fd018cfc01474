"""Paired, speaker-clustered intervals for macro-F1 and ΔF1 of many classifiers on one test set.

Every classifier (z, z_pos, z_mag of every SAE seed and classifier seed, the baselines, the
reference on u) predicts the same test rows. One bootstrap replicate draws test *speakers*
with replacement (the unit that generalises on a speaker-disjoint split) and, for averages
over seeds, the SAE seeds with replacement; every classifier is scored on the same draw, so
differences (ΔF1 = F1 − F1_ref, z_pos − z_mag) are paired. Macro-F1 is always over the fixed
class set of the task (a replicate that misses a class scores it 0, as the full test set would
when a class is never predicted), so no replicate silently changes the statistic.
"""

from __future__ import annotations

import numpy as np


def speaker_counts(y_true: np.ndarray, y_pred: np.ndarray, speaker: np.ndarray, classes, speakers) -> np.ndarray:
    """``[n_speakers, n_classes, 3]`` true positives, false positives, false negatives per speaker."""
    ci = {c: i for i, c in enumerate(classes)}
    si = {s: i for i, s in enumerate(speakers)}
    t = np.array([ci.get(v, -1) for v in y_true])
    p = np.array([ci.get(v, -1) for v in y_pred])
    s = np.array([si[v] for v in speaker])
    out = np.zeros((len(speakers), len(classes), 3))
    for c in range(len(classes)):
        np.add.at(out[:, c, 0], s[(t == c) & (p == c)], 1)
        np.add.at(out[:, c, 1], s[(t != c) & (p == c)], 1)
        np.add.at(out[:, c, 2], s[(t == c) & (p != c)], 1)
    return out


def macro_f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 from ``[..., n_classes, 3]`` counts (F1 of a class with no support and no
    prediction is 0, as scikit-learn's ``zero_division=0``)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1e-300), 0.0)
    return f1.mean(-1)


def speaker_weights(n_speakers: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_speakers]`` multiplicities of a speaker bootstrap."""
    rng = np.random.default_rng([seed, 13])
    idx = rng.integers(0, n_speakers, (n_boot, n_speakers))
    w = np.zeros((n_boot, n_speakers))
    np.add.at(w, (np.repeat(np.arange(n_boot), n_speakers), idx.ravel()), 1)
    return w


def replicate_f1(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[n_boot]`` macro-F1 of one classifier on each speaker-bootstrap replicate."""
    return macro_f1_from_counts(np.einsum("bs,sck->bck", weights, counts))


def seed_mean_replicates(per_seed: np.ndarray, seed: int) -> np.ndarray:
    """``per_seed [n_seeds, n_boot]`` -> ``[n_boot]``: each replicate averages a bootstrap draw
    of the seeds (with one seed there is no seed variance to draw)."""
    n_seeds, n_boot = per_seed.shape
    if n_seeds == 1:
        return per_seed[0]
    pick = np.random.default_rng([seed, 17]).integers(0, n_seeds, (n_boot, n_seeds))
    return per_seed[pick, np.arange(n_boot)[:, None]].mean(1)


def interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    s = np.asarray(samples, float)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))

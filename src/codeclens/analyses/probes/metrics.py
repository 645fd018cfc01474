"""Probe metrics as pure functions, with bootstrap CIs that resample utterances.

Frames of one utterance are not independent, so confidence intervals resample
whole utterances: every metric is computed from per-utterance sufficient
statistics (per-class TP/FP/FN counts, or sums of errors), and a bootstrap
replicate is just a weighted sum of those rows.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CENTS_FLOOR_HZ = 1.0  # predictions below this are clipped before taking log2 for cents


# -- classification ----------------------------------------------------------
def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Macro-F1 over classes present in truth or prediction (the scikit-learn convention).

    Works on the last axis, so ``[B, C]`` count arrays give ``[B]`` scores.
    """
    denom = 2 * tp + fp + fn
    present = denom > 0
    f1 = np.where(present, 2 * tp / np.maximum(denom, 1e-300), 0.0)
    n_present = present.sum(-1)
    return np.where(n_present > 0, f1.sum(-1) / np.maximum(n_present, 1), np.nan)


def class_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, false positives, false negatives."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = np.bincount(y_true[y_true == y_pred], minlength=n_classes).astype(np.float64)
    fp = np.bincount(y_pred, minlength=n_classes).astype(np.float64) - tp
    fn = np.bincount(y_true, minlength=n_classes).astype(np.float64) - tp
    return tp, fp, fn


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if not len(y_true):
        return float("nan")
    c = int(max(y_true.max(), y_pred.max()) + 1) if n_classes is None else n_classes
    return float(_f1_from_counts(*class_counts(y_true, y_pred, c)))


def majority_chance(y_train: np.ndarray, y_test: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 of always predicting the majority train label."""
    maj = int(np.bincount(y_train, minlength=n_classes).argmax())
    pred = np.full(len(y_test), maj)
    return {"accuracy": accuracy(y_test, pred), "macro_f1": macro_f1(y_test, pred, n_classes)}


def uniform_chance(y_test: np.ndarray, n_train_classes: int, n_classes: int) -> dict[str, float]:
    """Expected accuracy and macro-F1 of guessing uniformly among the train classes.

    For class c with test prevalence pi_c, a uniform guesser has precision pi_c and
    recall 1/K (c among the K guessable classes), so F1_c = 2 pi_c / (1 + K pi_c).
    """
    k = max(n_train_classes, 1)
    prev = np.bincount(y_test, minlength=n_classes) / max(len(y_test), 1)
    f1 = np.zeros(n_classes)
    guessable = np.arange(n_classes) < k
    f1[guessable] = 2 * prev[guessable] / (1 + k * prev[guessable])
    present = (prev > 0) | guessable
    return {"accuracy": 1.0 / k, "macro_f1": float(f1[present].mean())}


@dataclasses.dataclass(frozen=True)
class ClassStats:
    """Per-utterance classification counts: rows are utterances."""

    tp: np.ndarray
    """[U, C] true positives."""
    fp: np.ndarray
    """[U, C] false positives."""
    fn: np.ndarray
    """[U, C] false negatives."""
    correct: np.ndarray
    """[U] correctly classified rows."""
    n: np.ndarray
    """[U] rows."""


def class_stats(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_groups: int, n_classes: int) -> ClassStats:
    """Group (utterance) level TP/FP/FN, so bootstrap replicates are matrix products."""
    y_true, y_pred, groups = (np.asarray(a, dtype=np.int64) for a in (y_true, y_pred, groups))
    hit = y_true == y_pred
    size = n_groups * n_classes
    tp = np.bincount(groups[hit] * n_classes + y_true[hit], minlength=size).reshape(n_groups, n_classes)
    pred_n = np.bincount(groups * n_classes + y_pred, minlength=size).reshape(n_groups, n_classes)
    true_n = np.bincount(groups * n_classes + y_true, minlength=size).reshape(n_groups, n_classes)
    return ClassStats(
        tp.astype(np.float64), (pred_n - tp).astype(np.float64), (true_n - tp).astype(np.float64),
        np.bincount(groups[hit], minlength=n_groups).astype(np.float64),
        np.bincount(groups, minlength=n_groups).astype(np.float64),
    )


def class_metrics(s: ClassStats, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 from stats; ``weights [B, U]`` gives B bootstrap replicates."""
    if weights is None:
        return {
            "accuracy": np.asarray(s.correct.sum() / max(s.n.sum(), 1)),
            "macro_f1": np.asarray(_f1_from_counts(s.tp.sum(0), s.fp.sum(0), s.fn.sum(0))),
        }
    n = weights @ s.n
    return {
        "accuracy": np.where(n > 0, (weights @ s.correct) / np.maximum(n, 1), np.nan),
        "macro_f1": _f1_from_counts(weights @ s.tp, weights @ s.fp, weights @ s.fn),
    }


# -- regression --------------------------------------------------------------
def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    ss_tot = np.sum((y_true - y_true.mean()) ** 2)
    return float(1 - np.sum((y_true - y_pred) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64))))


def cents_error(y_true_hz: np.ndarray, y_pred_hz: np.ndarray) -> np.ndarray:
    """|1200 log2(pred / true)|; predictions are clipped at 1 Hz (a linear probe can go negative)."""
    pred = np.maximum(np.asarray(y_pred_hz, np.float64), CENTS_FLOOR_HZ)
    return np.abs(1200.0 * np.log2(pred / np.asarray(y_true_hz, np.float64)))


@dataclasses.dataclass(frozen=True)
class RegStats:
    """Per-utterance regression sums: n, sum y, sum y^2, SSE, sum |err|, sum |cents|."""

    n: np.ndarray
    sy: np.ndarray
    syy: np.ndarray
    sse: np.ndarray
    sae: np.ndarray
    sac: np.ndarray


def reg_stats(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_groups: int, cents: bool) -> RegStats:
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    b = lambda v: np.bincount(groups, weights=v, minlength=n_groups)  # noqa: E731
    err = y_pred - y_true
    sac = b(cents_error(y_true, y_pred)) if cents else np.zeros(n_groups)
    return RegStats(b(np.ones_like(y_true)), b(y_true), b(y_true**2), b(err**2), b(np.abs(err)), sac)


def reg_metrics(s: RegStats, weights: np.ndarray | None = None, cents: bool = False) -> dict[str, np.ndarray]:
    """R^2 (against the test mean), MAE and (for F0) MAE in cents; ``weights [B, U]`` for replicates."""
    w = np.ones((1, len(s.n))) if weights is None else weights
    n, sy, syy, sse = w @ s.n, w @ s.sy, w @ s.syy, w @ s.sse
    ss_tot = syy - sy**2 / np.maximum(n, 1)
    out = {
        "r2": np.where(ss_tot > 0, 1 - sse / np.maximum(ss_tot, 1e-300), np.nan),
        "mae": (w @ s.sae) / np.maximum(n, 1),
    }
    if cents:
        out["mae_cents"] = (w @ s.sac) / np.maximum(n, 1)
    if weights is None:
        out = {k: np.asarray(v[0]) for k, v in out.items()}
    return out


# -- bootstrap ---------------------------------------------------------------
def bootstrap_weights(n_groups: int, n_boot: int, seed: int) -> np.ndarray:
    """``[B, U]`` multiplicities of each utterance in B resamples (with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_groups, size=(n_boot, n_groups))
    w = np.zeros((n_boot, n_groups))
    np.add.at(w, (np.repeat(np.arange(n_boot), n_groups), idx.ravel()), 1.0)
    return w


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(s, [a, 1 - a])
    return float(lo), float(hi)


# -- open-set (held-out classes, e.g. speakers) -------------------------------
def _unit(emb: np.ndarray) -> np.ndarray:
    e = np.asarray(emb, np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def nearest_centroid_loo(emb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Identify each row among the classes present, by cosine to class centroids,
    its own row left out of its class centroid. Rows whose class has no other
    row cannot be identified: they get -1 (they still act as distractors)."""
    e = _unit(emb)
    y = np.asarray(y)
    classes, yi = np.unique(y, return_inverse=True)
    yi = yi.reshape(-1)
    S = np.zeros((len(classes), e.shape[1]))
    np.add.at(S, yi, e)
    cnt = np.bincount(yi, minlength=len(classes))
    norms = np.maximum(np.linalg.norm(S, axis=1), 1e-12)
    sims = (e @ S.T) / norms[None, :]
    own = S[yi] - e
    own_norm = np.linalg.norm(own, axis=1)
    sims[np.arange(len(e)), yi] = np.where(own_norm > 1e-12, (e * own).sum(1) / np.maximum(own_norm, 1e-12), -np.inf)
    pred = classes[sims.argmax(1)]
    return np.where(cnt[yi] > 1, pred, -1)


def equal_error_rate(emb: np.ndarray, y: np.ndarray, max_rows: int = 3000, seed: int = 0) -> float:
    """EER of same-vs-different class decisions by cosine similarity over all row pairs."""
    e, y = _unit(emb), np.asarray(y)
    if len(e) > max_rows:
        pick = np.random.default_rng(seed).choice(len(e), max_rows, replace=False)
        e, y = e[pick], y[pick]
    iu = np.triu_indices(len(e), 1)
    scores = (e @ e.T)[iu]
    same = (y[:, None] == y[None, :])[iu]
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(same[order]) / n_pos  # accepting the top-i pairs
    fp = np.cumsum(~same[order]) / n_neg
    frr = 1 - tp
    i = int(np.argmin(np.abs(frr - fp)))
    return float((frr[i] + fp[i]) / 2)

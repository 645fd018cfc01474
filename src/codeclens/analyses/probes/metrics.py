"""Probe metrics as pure functions, with bootstrap CIs that resample the unit that generalises.

Frames of one utterance (and utterances of one speaker) are not independent, so
intervals resample whole *units*: speakers when the split is speaker-disjoint,
utterances (within each speaker) otherwise. Every metric is computed from
per-unit sufficient statistics (per-class TP/FP/FN counts, or sums of errors)
made once, so a bootstrap replicate is a weighted sum of unit rows and a
jackknife replicate is the total less one row: no per-frame work per replicate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CENTS_FLOOR_HZ = 1.0  # predictions below this are clipped before taking log2 for cents


# -- classification ----------------------------------------------------------
def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
    """Macro-F1 over classes present in truth or prediction (the scikit-learn convention).

    Works on the last axis, so ``[B, C]`` count arrays give ``[B]`` scores.
    ``fixed`` (a replicate of a full sample) is the full sample's class set as two
    masks ``[2, C]``: (classes with true rows, classes only predicted). A replicate
    averages over that fixed set; a true class whose units were all left out of the
    replicate is skipped rather than scored 0 (scoring it 0 is what biased
    resampled macro-F1 downwards), and predicted-only classes always score 0.
    """
    denom = 2 * tp + fp + fn
    if fixed is None:
        present = denom > 0
    else:
        has_true, pred_only = fixed
        present = (has_true & ((tp + fn) > 0)) | pred_only
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
    return uniform_chance_counts(np.bincount(y_test, minlength=n_classes), n_train_classes)


def uniform_chance_counts(test_counts: np.ndarray, n_train_classes: int) -> dict[str, float]:
    """:func:`uniform_chance` from the test rows per class."""
    n_classes = len(test_counts)
    k = max(n_train_classes, 1)
    prev = test_counts / max(int(test_counts.sum()), 1)
    f1 = np.zeros(n_classes)
    guessable = np.arange(n_classes) < k
    f1[guessable] = 2 * prev[guessable] / (1 + k * prev[guessable])
    present = (prev > 0) | guessable
    return {"accuracy": 1.0 / k, "macro_f1": float(f1[present].mean())}


def chance_counts(train_counts: np.ndarray, test_counts: np.ndarray, n_train_classes: int) -> dict[str, tuple[float, float]]:
    """metric -> (majority train class, uniform guessing among the train classes) from the rows per class
    of train and test (the same values as :func:`majority_chance` / :func:`uniform_chance` on the rows)."""
    test_counts = np.asarray(test_counts, np.int64)
    maj = int(np.asarray(train_counts).argmax())
    tp = np.zeros(len(test_counts))
    tp[maj] = test_counts[maj]
    fp = -tp
    fp[maj] += test_counts.sum()
    n = int(test_counts.sum())
    majority = {"accuracy": test_counts[maj] / n if n else float("nan"),
                "macro_f1": float(_f1_from_counts(tp, fp, test_counts - tp)) if n else float("nan")}
    uni = uniform_chance_counts(test_counts, n_train_classes)
    return {k: (float(majority[k]), uni[k]) for k in majority}


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


def _class_set(s: ClassStats) -> np.ndarray:
    tp, fp, fn = s.tp.sum(0), s.fp.sum(0), s.fn.sum(0)
    has_true = (tp + fn) > 0
    return np.stack([has_true, ~has_true & (fp > 0)])


def class_metrics(s: ClassStats, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Accuracy and macro-F1 from stats; ``weights [B, U]`` gives B bootstrap replicates
    (macro-F1 over the full sample's class set in every replicate)."""
    if weights is None:
        return {
            "accuracy": np.asarray(s.correct.sum() / max(s.n.sum(), 1)),
            "macro_f1": np.asarray(_f1_from_counts(s.tp.sum(0), s.fp.sum(0), s.fn.sum(0))),
        }
    n = weights @ s.n
    return {
        "accuracy": np.where(n > 0, (weights @ s.correct) / np.maximum(n, 1), np.nan),
        "macro_f1": _f1_from_counts(_wsum(weights, s.tp), _wsum(weights, s.fp), _wsum(weights, s.fn), _class_set(s)),
    }


SPARSE_BELOW = 0.05
"""Density under which a ``[U, C]`` count matrix is multiplied as a sparse matrix (e.g. a speaker task with
utterance units: one true class per unit, so TP and FN hold U non-zeros out of U x C)."""


def _wsum(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``weights [B, U] @ x [U, C]``; sparse when x is mostly zeros (B x non-zeros, not B x U x C)."""
    nz = np.count_nonzero(x)
    if x.ndim == 2 and x.size and nz < SPARSE_BELOW * x.size:
        from scipy.sparse import csr_matrix

        return np.asarray(csr_matrix(x).T.dot(weights.T).T)
    return weights @ x


JACKKNIFE_BLOCK = 1 << 20
"""Elements (units x classes) of each leave-one-out block of :func:`class_jackknife`."""


def class_jackknife(s: ClassStats, block: int | None = None) -> dict[str, np.ndarray]:
    """Leave-one-unit-out replicates ``[U]`` (the total less one unit's row).

    Computed a block of units at a time: each replicate is its own row, so the blocks give the
    numbers of one pass over all units, while the temporaries (the totals less each row, the F1
    terms) are ``[block, C]`` rather than ``[U, C]``: with test utterances as units and speakers
    as classes those were several copies of a table that grows with both."""
    n = s.n.sum() - s.n
    U, C = s.tp.shape
    tot = (s.tp.sum(0), s.fp.sum(0), s.fn.sum(0))
    fixed = _class_set(s)
    step = max(1, (JACKKNIFE_BLOCK if block is None else block) // max(C, 1))
    f1 = np.empty(U, np.float64)
    for a in range(0, U, step):
        b = min(a + step, U)
        f1[a:b] = _f1_from_counts(tot[0] - s.tp[a:b], tot[1] - s.fp[a:b], tot[2] - s.fn[a:b], fixed)
    return {
        "accuracy": np.where(n > 0, (s.correct.sum() - s.correct) / np.maximum(n, 1), np.nan),
        "macro_f1": f1,
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
    return RegStats(*reg_truth_sums(y_true, groups, n_groups), *reg_error_sums(y_true, y_pred, groups, n_groups, cents))


def reg_truth_sums(y_true: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """``[3, G]`` rows, sum y, sum y^2 per group (float64 ``y_true``): the part of :func:`reg_stats` that
    does not depend on the predictions, shared by every predictor of the same rows."""
    b = lambda v: np.bincount(groups, weights=v, minlength=n_groups)  # noqa: E731
    return np.stack([b(np.ones_like(y_true)), b(y_true), b(y_true**2)])


def reg_error_sums(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_groups: int,
                   cents: bool) -> np.ndarray:
    """``[3, G]`` SSE, sum |error|, sum |cents error| per group (float64 arrays): the rest of :func:`reg_stats`."""
    b = lambda v: np.bincount(groups, weights=v, minlength=n_groups)  # noqa: E731
    err = y_pred - y_true
    sac = b(cents_error(y_true, y_pred)) if cents else np.zeros(n_groups)
    return np.stack([b(err**2), b(np.abs(err)), sac])


def _reg_from_sums(n, sy, syy, sse, sae, sac, cents: bool) -> dict[str, np.ndarray]:
    ss_tot = syy - sy**2 / np.maximum(n, 1)
    out = {
        "r2": np.where(ss_tot > 0, 1 - sse / np.maximum(ss_tot, 1e-300), np.nan),
        "mae": sae / np.maximum(n, 1),
    }
    if cents:
        out["mae_cents"] = sac / np.maximum(n, 1)
    return out


_REG_FIELDS = ("n", "sy", "syy", "sse", "sae", "sac")


def reg_metrics(s: RegStats, weights: np.ndarray | None = None, cents: bool = False) -> dict[str, np.ndarray]:
    """R^2 (against the test mean), MAE and (for F0) MAE in cents; ``weights [B, U]`` for replicates."""
    w = np.ones((1, len(s.n))) if weights is None else weights
    out = _reg_from_sums(*(w @ getattr(s, f) for f in _REG_FIELDS), cents=cents)
    if weights is None:
        out = {k: np.asarray(v[0]) for k, v in out.items()}
    return out


def reg_jackknife(s: RegStats, cents: bool = False) -> dict[str, np.ndarray]:
    """Leave-one-unit-out replicates ``[U]``."""
    return _reg_from_sums(*(getattr(s, f).sum() - getattr(s, f) for f in _REG_FIELDS), cents=cents)


# -- bootstrap ---------------------------------------------------------------
LOWER_IS_BETTER = ("mae", "mae_cents", "eer")


def bootstrap_weights(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """``[B, U]`` unit weights of B Bayesian-bootstrap replicates (Rubin 1981): Dirichlet(1, ..., 1)
    weights scaled to sum to U.

    Like the multinomial bootstrap it resamples the units (same first-order
    behaviour), but every unit keeps a positive weight. With the multinomial
    bootstrap about a third of the units drop out of each replicate; when a unit
    is a class's only test utterance (a closed-set speaker task with one test
    utterance per speaker), the class drops out with it and macro-F1 is then over
    a different class set in every replicate, biased away from the estimate so far
    that no interval could hold it. Here the class set is the same in all replicates.
    """
    rng = np.random.default_rng(seed)
    g = rng.standard_exponential((n_boot, n_units))
    return g * (n_units / g.sum(1, keepdims=True))


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo, hi = np.quantile(s, [a, 1 - a])
    return float(lo), float(hi)


def bca_ci(estimate: float, samples: np.ndarray, jackknife: np.ndarray | None, level: float = 0.95) -> tuple[float, float]:
    """Bias-corrected and accelerated bootstrap interval (Efron 1987).

    The bias correction z0 comes from the share of replicates below the estimate
    (a statistic such as macro-F1 whose replicates are biased gets its interval
    moved back around the estimate); the acceleration from the unit jackknife.
    A degenerate replicate distribution (e.g. every replicate at 1.0) gives the
    estimate itself as the bound on that side, so the interval always holds it.
    """
    from scipy.special import ndtr, ndtri

    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not len(s) or not np.isfinite(estimate):
        return float("nan"), float("nan")
    B = len(s)
    frac = (np.sum(s < estimate) + 0.5 * np.sum(s == estimate)) / B
    z0 = float(ndtri(np.clip(frac, 0.5 / B, 1 - 0.5 / B)))
    a = 0.0
    if jackknife is not None:
        j = np.asarray(jackknife, np.float64)
        j = j[np.isfinite(j)]
        if len(j) > 2:
            d = j.mean() - j
            den = 6.0 * float(np.sum(d * d)) ** 1.5
            a = float(np.sum(d**3) / den) if den > 0 else 0.0
    q = []
    for z in (ndtri((1 - level) / 2), ndtri((1 + level) / 2)):
        t = z0 + (z0 + z) / max(1 - a * (z0 + z), 1e-12)
        q.append(float(ndtr(t)))
    lo, hi = np.quantile(s, q)
    return float(min(lo, estimate)), float(max(hi, estimate))


def p_above(samples: np.ndarray, bar: float, lower_is_better: bool = False) -> float:
    """One-sided bootstrap p-value of "the score beats ``bar``" (H0: it does not).

    The share of replicates (of the resampled unit) at or on the wrong side of
    the bar, with the usual +1 so that p is never 0 from finitely many replicates;
    when no replicate is on the wrong side, the normal tail of the replicates (at
    most that share).
    """
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if not len(s) or not np.isfinite(bar):
        return float("nan")
    worse = np.sum(s >= bar) if lower_is_better else np.sum(s <= bar)
    p = float((worse + 1) / (len(s) + 1))
    sd = float(np.std(s, ddof=1)) if len(s) > 1 else 0.0
    if worse == 0 and sd > 0:
        from scipy.special import ndtr

        # No replicate on the wrong side: the count only says p < 1/(B+1), a floor that Holm over a
        # layer sweep can never get under 5% with few replicates. Extrapolate the tail with a
        # normal approximation of the replicate distribution, never above the count's bound.
        z = (float(np.mean(s)) - bar) / sd * (-1.0 if lower_is_better else 1.0)
        p = min(p, float(ndtr(-z)))
    return p


def chance_bar(metric: str, majority: float, uniform: float) -> float:
    """The chance level a score must beat: the better of the majority (train-mean) and
    uniform-guess baselines; for R^2 at least 0 (a constant prediction can reach 0)."""
    vals = [v for v in (majority, uniform) if np.isfinite(v)]
    if metric == "r2":
        vals.append(0.0)
    if not vals:
        return float("nan")
    return float(min(vals) if metric in LOWER_IS_BETTER else max(vals))


# -- open-set (held-out classes, e.g. speakers) -------------------------------
def _unit(emb: np.ndarray) -> np.ndarray:
    e = np.asarray(emb, np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def nearest_centroid_loo(emb: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Identify each row among the classes present, by cosine to class centroids.

    The row's whole utterance (``groups``; without it, the row alone) is left out
    of its class centroid: frames of one utterance share channel and content, so
    leaving only the frame out lets utterance identity pass for speaker identity.
    Rows whose class has no other utterance cannot be identified: they get -1
    (they still act as distractors through their class centroid)."""
    e = _unit(emb)
    y = np.asarray(y)
    classes, yi = np.unique(y, return_inverse=True)
    yi = yi.reshape(-1)
    g = np.arange(len(e)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    S = np.zeros((len(classes), e.shape[1]))
    np.add.at(S, yi, e)
    Sg = np.zeros((int(g.max()) + 1 if len(g) else 0, e.shape[1]))
    np.add.at(Sg, g, e)
    norms = np.maximum(np.linalg.norm(S, axis=1), 1e-12)
    sims = (e @ S.T) / norms[None, :]
    own = S[yi] - Sg[g]
    own_norm = np.linalg.norm(own, axis=1)
    ok = own_norm > 1e-12
    # Distinct utterances per class (a class with one utterance cannot be identified).
    n_g = int(g.max()) + 1 if len(g) else 1
    pairs = np.unique(yi.astype(np.int64) * n_g + g)
    n_utts = np.bincount(pairs // n_g, minlength=len(classes))
    sims[np.arange(len(e)), yi] = np.where(ok, (e * own).sum(1) / np.maximum(own_norm, 1e-12), -np.inf)
    pred = classes[sims.argmax(1)]
    return np.where((n_utts[yi] > 1) & ok, pred, -1)


def equal_error_rate(emb: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, max_rows: int = 3000,
                     seed: int = 0) -> float:
    """EER of same-vs-different class decisions by cosine similarity over row pairs,
    pairs within one utterance (``groups``) excluded: they share more than the speaker."""
    e, y = _unit(emb), np.asarray(y)
    g = np.arange(len(e)) if groups is None else np.asarray(groups)
    if len(e) > max_rows:
        pick = np.random.default_rng(seed).choice(len(e), max_rows, replace=False)
        e, y, g = e[pick], y[pick], g[pick]
    iu = np.triu_indices(len(e), 1)
    keep = g[iu[0]] != g[iu[1]]
    scores = (e @ e.T)[iu][keep]
    same = (y[iu[0]] == y[iu[1]])[keep]
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(same[order]) / n_pos  # accepting the top-i pairs
    fp = np.cumsum(~same[order]) / n_neg
    frr = 1 - tp
    i = int(np.argmin(np.abs(frr - fp)))
    return float((frr[i] + fp[i]) / 2)

"""Information-theoretic statistics of discrete codes and labels (pure numpy functions).

Everything here works on a code x label co-occurrence count matrix
``counts[k, c]`` (how often code ``k`` of one RVQ layer fell on a frame whose
label is ``c``), so each statistic is exact for the counted frames and costs
O(K x C), not O(frames). Entropies and mutual information are in nats unless
a function says otherwise; divide by ``LN2`` for bits.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

LN2 = float(np.log(2.0))


# -- labels and counts ---------------------------------------------------------
MISSING_ID = -1
"""Integer label meaning "no label" (unaligned frames, failed labelling): missing, never a class."""


def _missing_scalar(x) -> bool:
    if x is None:
        return True
    if isinstance(x, str):
        return x.strip() == ""
    try:
        return bool(x != x)  # NaN and NA-like values
    except (TypeError, ValueError):
        return True


def _no_label_scalar(x) -> bool:
    """The integer "no label" id -1 (also as a float), never a bool or a string."""
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))
            and x == MISSING_ID)


def missing_label(x) -> bool:
    """One label value is missing: None, NaN, NA, an empty string or the "no label" id -1."""
    return _missing_scalar(x) or _no_label_scalar(x)


def is_missing(values: np.ndarray, no_label: bool = False) -> np.ndarray:
    """Boolean mask of missing labels: None, NaN, pandas NA and empty strings
    (and, with ``no_label``, the integer id -1).

    Labels repeat a lot (a few dozen phones over millions of frames), so each
    distinct value is checked once.
    """
    codes, uniques = pd.factorize(pd.Series(np.asarray(values, dtype=object)), use_na_sentinel=True)
    bad = np.array([missing_label(u) if no_label else _missing_scalar(u) for u in uniques] + [True], dtype=bool)
    return bad[codes]  # the NA sentinel -1 picks the trailing True


def is_real_valued(values: np.ndarray, max_classes: int = 20) -> bool:
    """True for floats with more than ``max_classes`` distinct values that are not all whole
    numbers: a measurement (F0, loudness), not a label. Integer ids stored as floats
    (content units upcast by missing values) stay labels."""
    values = np.asarray(values)
    if values.dtype.kind != "f":
        return False
    finite = values[np.isfinite(values)]
    return len(np.unique(finite)) > max_classes and not np.array_equal(finite, np.round(finite))


def encode_labels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keep_mask, label_ids, classes)``: integer ids of the non-missing labels.

    Missing: None, NaN, empty strings, and the integer ``-1`` (also as a float,
    when ids were upcast by NaN). ``classes[label_ids]`` gives back the original
    values; classes are sorted (as strings when the values are mixed) so ids are
    reproducible.
    """
    values = np.asarray(values)
    if values.dtype.kind == "b":
        keep = np.ones(len(values), dtype=bool)
    elif values.dtype.kind in "iu":
        keep = values != MISSING_ID
    elif values.dtype.kind == "f":
        keep = np.isfinite(values) & (values != MISSING_ID)
    else:
        keep = ~is_missing(values, no_label=True)
    kept = values[keep]
    if values.dtype.kind == "O":
        kept = kept.astype(str)
    classes, ids = np.unique(kept, return_inverse=True)
    return keep, ids.astype(np.int64), classes


def cooccurrence(codes: np.ndarray, labels: np.ndarray, n_codes: int, n_labels: int) -> np.ndarray:
    """``[n_codes, n_labels]`` int64 counts of (code, label) pairs."""
    codes = np.asarray(codes, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if codes.shape != labels.shape:
        raise ValueError(f"codes {codes.shape} and labels {labels.shape} differ in shape")
    if len(codes) and (codes.min() < 0 or codes.max() >= n_codes):
        raise ValueError(f"codes outside [0, {n_codes})")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels outside [0, {n_labels})")
    flat = np.bincount(codes * n_labels + labels, minlength=n_codes * n_labels)
    return flat.reshape(n_codes, n_labels).astype(np.int64)


# -- entropies -----------------------------------------------------------------
def entropy(counts: np.ndarray) -> float:
    """Plug-in (maximum-likelihood) entropy of a count vector/array, in nats."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    n = c.sum()
    if n <= 0:
        return 0.0
    p = c[c > 0] / n
    return float(-(p * np.log(p)).sum())


def miller_madow_entropy(counts: np.ndarray) -> float:
    """Entropy with the Miller-Madow bias correction ``+ (m - 1) / 2N`` (m = occupied bins)."""
    c = np.asarray(counts).ravel()
    n = float(c.sum())
    if n <= 0:
        return 0.0
    m = int((c > 0).sum())
    return entropy(c) + (m - 1) / (2.0 * n)


def mutual_information(counts: np.ndarray, miller_madow: bool = False) -> float:
    """Plug-in MI (nats) of a 2-D joint count (or probability) table.

    With ``miller_madow`` each of H(X), H(Y), H(X,Y) is bias-corrected, which
    subtracts ``(m_xy - m_x - m_y + 1) / 2N`` from the plug-in value.
    """
    j = np.asarray(counts, dtype=np.float64)
    if j.ndim != 2:
        raise ValueError("joint table must be 2-D")
    h = miller_madow_entropy if miller_madow else entropy
    if miller_madow and not np.allclose(j, np.round(j)):
        raise ValueError("the Miller-Madow correction needs integer counts, not probabilities")
    return h(j.sum(axis=1)) + h(j.sum(axis=0)) - h(j)


def conditional_entropy(counts: np.ndarray) -> float:
    """H(label | code) in nats, for ``counts[code, label]``."""
    j = np.asarray(counts, dtype=np.float64)
    return entropy(j) - entropy(j.sum(axis=1))


def pnmi(counts: np.ndarray) -> float:
    """Phone-normalised MI (HuBERT, Hsu et al. 2021): I(label; code) / H(label), in [0, 1]."""
    j = np.asarray(counts, dtype=np.float64)
    hy = entropy(j.sum(axis=0))
    if hy <= 0:
        return float("nan")
    return mutual_information(j) / hy


# -- association ----------------------------------------------------------------
def ranked_association(
    counts: np.ndarray, weighted: bool = True, max_rank: int | None = None, min_count: int = 1
) -> np.ndarray:
    """Mean sorted label distribution per code, in % (Sadok et al. 2025, Fig. 2).

    For every code with at least ``min_count`` frames, p(label | code) is sorted
    in decreasing order; the curves are averaged over those codes, weighted by
    each code's frame count or uniformly. Entry r is the mean share (in %) of a
    code's frames that fall on its (r+1)-th most associated label; the curve sums
    to 100. A code seen once has a top-1 share of 100 % whatever it encodes, so
    ``min_count`` keeps rare codes from inflating the unweighted curve; when no
    code has that many frames the curve is NaN.
    """
    j = np.asarray(counts, dtype=np.float64)
    n_k = j.sum(axis=1)
    if not (n_k > 0).any():
        raise ValueError("no counts")
    used = n_k >= max(min_count, 1)
    if not used.any():
        r = j.shape[1] if max_rank is None else min(max_rank, j.shape[1])
        return np.full(r, np.nan)
    cond = np.sort(j[used] / n_k[used, None], axis=1)[:, ::-1]
    w = n_k[used] if weighted else np.ones(int(used.sum()))
    curve = 100.0 * (w[:, None] * cond).sum(axis=0) / w.sum()
    return curve if max_rank is None else curve[:max_rank]


def top1_association(counts: np.ndarray, weighted: bool = False, min_count: int = 1) -> float:
    """Mean (over codes with >= ``min_count`` frames) share of a code's frames on its most associated label, in %.

    Unweighted by default: every counted code counts once, as in Sadok et al.'s
    per-code average. ``weighted=True`` weights codes by frequency, which is
    the label purity below (times 100) when ``min_count`` is 1.
    """
    return float(ranked_association(counts, weighted=weighted, max_rank=1, min_count=min_count)[0])


def label_purity(counts: np.ndarray) -> float:
    """Phone purity (HuBERT): accuracy of predicting the label by each code's majority label."""
    j = np.asarray(counts, dtype=np.float64)
    n = j.sum()
    return float(j.max(axis=1).sum() / n) if n > 0 else float("nan")


def code_purity(counts: np.ndarray) -> float:
    """Cluster purity (HuBERT): accuracy of predicting the code by each label's majority code."""
    j = np.asarray(counts, dtype=np.float64)
    n = j.sum()
    return float(j.max(axis=0).sum() / n) if n > 0 else float("nan")


# -- codebook usage ---------------------------------------------------------------
def perplexity(code_counts: np.ndarray) -> float:
    """exp(entropy of code usage): K for uniform usage of K codes, 1 for a single code."""
    return float(np.exp(entropy(code_counts)))


def dead_fraction(code_counts: np.ndarray) -> float:
    """Fraction of the codebook never used."""
    c = np.asarray(code_counts).ravel()
    return float((c == 0).sum() / len(c)) if len(c) else float("nan")


# -- shuffled baseline ---------------------------------------------------------
def null_tables(counts: np.ndarray, n_tables: int = 10, seed: int = 0) -> Iterator[np.ndarray]:
    """Co-occurrence tables of the same frames after a uniformly random permutation of the labels.

    Permuting labels across frames keeps both marginals and destroys their
    dependence; the table it produces is multivariate hypergeometric given the
    margins, so it is drawn from the margins directly (one draw per label, or per
    code when there are fewer codes) without touching a frame: the cost is
    O(codes x labels) per table whatever the corpus size. Seeded: reproducible.
    """
    j = np.asarray(counts, dtype=np.int64)
    if j.ndim != 2:
        raise ValueError("joint table must be 2-D")
    rng = np.random.default_rng(seed)
    r_idx, c_idx = np.flatnonzero(j.sum(axis=1)), np.flatnonzero(j.sum(axis=0))
    rows, cols = j.sum(axis=1)[r_idx], j.sum(axis=0)[c_idx]
    flip = len(rows) < len(cols)  # loop over the shorter margin, draw over the longer one
    if flip:
        rows, cols = cols, rows
    for _ in range(n_tables):
        sub = np.zeros((len(rows), len(cols)), dtype=np.int64)
        left = rows.copy()
        for k, m in enumerate(cols[:-1]):
            x = rng.multivariate_hypergeometric(left, int(m))
            sub[:, k] = x
            left -= x
        if len(cols):
            sub[:, -1] = left
        full = np.zeros_like(j)
        full[np.ix_(r_idx, c_idx)] = sub.T if flip else sub
        yield full


def shuffled_mi(
    codes: np.ndarray,
    labels: np.ndarray,
    n_codes: int,
    n_labels: int,
    n_shuffles: int = 10,
    seed: int = 0,
    miller_madow: bool = True,
) -> np.ndarray:
    """MI (nats) after permuting the labels across frames, ``n_shuffles`` times.

    The permutation keeps both marginals and destroys their dependence, so the
    result shows what the estimator reports on no information at this sample
    size and table shape: plug-in MI sits well above zero when codes x labels
    is large compared to the number of frames; Miller-Madow removes most of that.
    """
    tables = shuffled_cooccurrences(codes, labels, n_codes, n_labels, n_shuffles, seed)
    return np.array([mutual_information(c, miller_madow) for c in tables], dtype=np.float64)


def shuffled_cooccurrences(
    codes: np.ndarray, labels: np.ndarray, n_codes: int, n_labels: int, n_shuffles: int = 10, seed: int = 0
) -> Iterator[np.ndarray]:
    """Co-occurrence tables after permuting the labels, one per shuffle (seeded, so reproducible)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int64)
    for _ in range(n_shuffles):
        yield cooccurrence(codes, rng.permutation(labels), n_codes, n_labels)

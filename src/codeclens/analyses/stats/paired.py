"""Paired statistics for interventions measured on the same utterances.

Used by ``ablate`` (and meant for ``causal``): every edit is measured on the
same utterances as the unedited decode, so effects are per-utterance paired
differences, and uncertainty comes from resampling the unit that generalises:

- :func:`cluster_bootstrap` -- mean with a percentile interval from a bootstrap
  that resamples *clusters* (speakers by default; an utterance is its own cluster
  when there is no speaker column) with replacement, keeping every utterance of a
  drawn cluster. Undefined (NaN) values are dropped and counted, never imputed.
  Fewer than two defined clusters give no interval (NaN bounds): an interval over
  one speaker or one utterance is not an interval.
- :func:`sign_flip_pvalue` -- two-sided test of "mean paired difference is 0" by
  flipping the sign of whole clusters (exact over all 2^C flips up to
  ``EXACT_MAX`` clusters, Monte Carlo beyond). With C clusters the smallest
  attainable p is 2^(1-C), so few speakers cannot give a small p.
- :func:`holm` -- Holm step-down adjustment of a family of p-values.
- :func:`paired_test` -- all of the above for ``b - a`` on paired arrays.

Pure functions on numpy arrays; no pandas, no I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Sequence

import numpy as np

EXACT_MAX = 12
"""Up to this many clusters the sign-flip test enumerates every flip (4096)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over utterances with its cluster-bootstrap interval."""

    mean: float
    lo: float
    """Lower bound (NaN when fewer than two defined clusters)."""
    hi: float
    n: int
    """Defined (finite) values."""
    n_undefined: int
    """NaN values left out."""
    n_clusters: int
    """Clusters with at least one defined value."""

    @property
    def undefined_rate(self) -> float:
        tot = self.n + self.n_undefined
        return self.n_undefined / tot if tot else float("nan")


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """``b - a`` per utterance: mean difference, interval, sign-flip p (uncorrected)."""

    diff: Estimate
    p: float


def _codes(clusters: Sequence | None, n: int) -> np.ndarray:
    if clusters is None:
        return np.arange(n)
    c = np.asarray(clusters)
    if len(c) != n:
        raise ValueError(f"{len(c)} cluster labels for {n} values")
    return np.unique(c.astype(str), return_inverse=True)[1]


def _cluster_sums(values: np.ndarray, clusters: Sequence | None) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(per-cluster sums, per-cluster counts) over finite values; counts of defined and undefined."""
    x = np.asarray(values, dtype=np.float64)
    g = _codes(clusters, len(x))
    ok = np.isfinite(x)
    g, xs = g[ok], x[ok]
    _, g = np.unique(g, return_inverse=True)
    k = int(g.max()) + 1 if len(g) else 0
    return np.bincount(g, xs, k), np.bincount(g, minlength=k).astype(np.float64), int(ok.sum()), int((~ok).sum())


def cluster_bootstrap(values: Sequence[float], clusters: Sequence | None = None, n_boot: int = 1000,
                      seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of the finite ``values`` and a percentile interval resampling ``clusters``."""
    s, c, n, nu = _cluster_sums(values, clusters)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, nu, 0)
    m = float(s.sum() / c.sum())
    k = len(s)
    if k < 2 or n_boot < 1:
        return Estimate(m, float("nan"), float("nan"), n, nu, k)
    idx = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    means = s[idx].sum(1) / c[idx].sum(1)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    # Float round-off must not put the mean of a constant column outside its own interval.
    return Estimate(m, float(min(lo, m)), float(max(hi, m)), n, nu, k)


def sign_flip_pvalue(diffs: Sequence[float], clusters: Sequence | None = None, n_perm: int = 10000,
                     seed: int = 0) -> float:
    """Two-sided p of mean(diffs) = 0, flipping the signs of whole clusters (NaN without data)."""
    s, c, n, _ = _cluster_sums(diffs, clusters)
    if n == 0:
        return float("nan")
    obs = abs(s.sum()) / c.sum()
    k = len(s)
    tol = 1e-12 * max(1.0, float(np.abs(s).sum()))
    if k <= EXACT_MAX:
        signs = _all_signs(k)
        stats = np.abs(signs @ s) / c.sum()
        return float(np.mean(stats >= obs - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_perm, k))
    stats = np.abs(signs @ s) / c.sum()
    return float((1 + np.sum(stats >= obs - tol)) / (1 + n_perm))


@functools.lru_cache(maxsize=EXACT_MAX + 1)
def _all_signs(k: int) -> np.ndarray:
    return np.array(list(itertools.product((1.0, -1.0), repeat=k)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (same order; NaN entries stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """``b - a`` per unit; NaN where either is undefined (a pair needs both)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b.shape}")
    return b - a


def paired_test(a: Sequence[float], b: Sequence[float], clusters: Sequence | None = None, n_boot: int = 1000,
                seed: int = 0) -> PairedTest:
    """Mean of ``b - a`` with a cluster-bootstrap interval and a cluster sign-flip p."""
    d = paired_difference(a, b)
    return PairedTest(cluster_bootstrap(d, clusters, n_boot, seed), sign_flip_pvalue(d, clusters, n_boot, seed))

"""Shapley values and pairwise interaction indices of RVQ layers over layer masks.

A *game* gives a value ``v(S)`` for every set ``S`` of present layers (a bit mask:
bit ``k`` set = layer ``k`` present). Values may be arrays (one entry per
utterance, or per measure), so one pass over the 2^L masks attributes every
measure of every utterance at once and intervals can be taken over utterances
afterwards.

- :func:`exact_shapley`: all 2^L coalitions, φ_k = Σ_S w(|S|) [v(S ∪ k) − v(S)],
  w(s) = s! (L−s−1)! / L!. Exactly 0 for a layer the game ignores; Σ φ_k =
  v(all) − v(∅) (efficiency), both to rounding.
- :func:`sampled_shapley`: mean marginal contribution over random permutations,
  with its standard error; for codecs with more layers than the exact sum affords.
- :func:`interaction_indices`: the Shapley interaction index of each pair,
  I_kj = Σ_{S ⊆ N∖{k,j}} |S|! (L−|S|−2)! / (L−1)! · [v(S∪kj) − v(S∪k) − v(S∪j) + v(S)]:
  0 for additive layers, the joint surplus for layers that only work together.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

EXACT_MAX_LAYERS = 12
"""Beyond this the 2^L decodes of an exact attribution are not worth it: sample permutations."""


def full_mask(n: int) -> int:
    return (1 << n) - 1


def mask_layers(mask: int, n: int) -> list[int]:
    """0-based layers present in ``mask``."""
    return [k for k in range(n) if mask >> k & 1]


def _weights(n: int) -> np.ndarray:
    return np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])


def _table(values: Mapping[int, np.ndarray] | Callable[[int], np.ndarray], n: int) -> np.ndarray:
    """``[2^n, ...]`` array of v(S) by mask."""
    get = values if callable(values) else values.__getitem__
    rows = [np.asarray(get(m), dtype=np.float64) for m in range(1 << n)]
    return np.stack(rows)


def exact_shapley(values: Mapping[int, np.ndarray] | Callable[[int], np.ndarray], n: int) -> np.ndarray:
    """``[n, ...]`` Shapley values from v over all 2^n masks (a mapping or a function of the mask)."""
    if not 1 <= n <= EXACT_MAX_LAYERS:
        raise ValueError(f"exact Shapley values need 1..{EXACT_MAX_LAYERS} layers, got {n}")
    v = _table(values, n)
    w = _weights(n)
    sizes = np.array([bin(m).count("1") for m in range(1 << n)])
    phi = np.zeros((n,) + v.shape[1:])
    for k in range(n):
        bit = 1 << k
        without = np.array([m for m in range(1 << n) if not m & bit])
        ww = w[sizes[without]].reshape((-1,) + (1,) * (v.ndim - 1))
        phi[k] = np.sum(ww * (v[without | bit] - v[without]), axis=0)
    return phi


def interaction_indices(values: Mapping[int, np.ndarray] | Callable[[int], np.ndarray], n: int) -> np.ndarray:
    """``[n, n, ...]`` Shapley interaction index of every pair (diagonal 0)."""
    if n < 2:
        v = _table(values, n)
        return np.zeros((n, n) + v.shape[1:])
    v = _table(values, n)
    sizes = np.array([bin(m).count("1") for m in range(1 << n)])
    w = np.array([math.factorial(s) * math.factorial(n - s - 2) / math.factorial(n - 1) for s in range(n - 1)])
    out = np.zeros((n, n) + v.shape[1:])
    for k in range(n):
        for j in range(k + 1, n):
            bk, bj = 1 << k, 1 << j
            rest = np.array([m for m in range(1 << n) if not m & (bk | bj)])
            ww = w[sizes[rest]].reshape((-1,) + (1,) * (v.ndim - 1))
            d = v[rest | bk | bj] - v[rest | bk] - v[rest | bj] + v[rest]
            out[k, j] = out[j, k] = np.sum(ww * d, axis=0)
    return out


@dataclasses.dataclass(frozen=True)
class SampledShapley:
    phi: np.ndarray
    """``[n, ...]`` mean marginal contributions."""
    se: np.ndarray
    """Their standard errors over permutations (the stated error of the estimate)."""
    n_permutations: int
    masks_evaluated: int
    """Distinct coalitions the game was asked for (decodes needed)."""


def sampled_shapley(value: Callable[[int], np.ndarray], n: int, n_permutations: int = 64,
                    seed: int = 0) -> SampledShapley:
    """Permutation-sampling estimate; ``value`` is called once per distinct mask (memoised).
    Antithetic pairs (a permutation and its reverse) halve the variance for near-additive games."""
    if n_permutations < 2:
        raise ValueError("n_permutations must be >= 2")
    rng = np.random.default_rng(seed)
    memo: dict[int, np.ndarray] = {}

    def v(m: int) -> np.ndarray:
        if m not in memo:
            memo[m] = np.asarray(value(m), dtype=np.float64)
        return memo[m]

    contribs = []
    half = (n_permutations + 1) // 2
    for _ in range(half):
        perm = rng.permutation(n)
        for order in (perm, perm[::-1]):
            c = np.zeros((n,) + v(0).shape)
            m = 0
            prev = v(0)
            for k in order:
                m |= 1 << int(k)
                cur = v(m)
                c[k] = cur - prev
                prev = cur
            contribs.append(c)
    # an antithetic pair is one sample of the estimator
    pairs = np.stack([(contribs[2 * i] + contribs[2 * i + 1]) / 2 for i in range(half)])
    phi = pairs.mean(axis=0)
    se = pairs.std(axis=0, ddof=1) / np.sqrt(half) if half > 1 else np.full_like(phi, np.nan)
    return SampledShapley(phi, se, 2 * half, len(memo))

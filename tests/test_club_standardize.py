"""The MI bracket's standardization: the same float32 numbers as upcasting everything to float64 first
(the old computation), without the float64 copies of the samples."""

from __future__ import annotations

import tracemalloc

import numpy as np

from codeclens.analyses import club
from codeclens.analyses.club import BracketConfig, mi_bracket


def _old(train, *others):
    """The computation before: every array upcast to float64, standardized, cast back."""
    train = np.asarray(train, np.float64)
    mu, sd = train.mean(axis=0, keepdims=True), train.std(axis=0, keepdims=True)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return [((np.asarray(a, np.float64) - mu) / sd).astype(np.float32) for a in (train, *others)]


def _peak(fn, *args):
    tracemalloc.start()
    try:
        out = fn(*args)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_standardize_is_the_float64_computation_without_its_copies():
    rng = np.random.default_rng(0)
    D = 256
    scale, shift = rng.uniform(0.01, 80, D), rng.normal(size=D) * 30
    tr = (rng.normal(size=(20000, D)) * scale + shift).astype(np.float32)
    te = (rng.normal(size=(10000, D)) * scale + shift).astype(np.float32)
    tr[:, 3] = 7.0  # a constant column keeps sd 1
    want, old_peak = _peak(_old, tr, te)
    got, new_peak = _peak(club._standardize, tr, te)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and np.array_equal(g, w)
    out_bytes = tr.size * 4 + te.size * 4
    # Before: float64 copies of both samples and two float64 temporaries (~4x the float32 output here);
    # now: the output and a few float64 temporaries of STANDARDIZE_ROWS rows.
    assert new_peak < out_bytes + 3 * club.STANDARDIZE_ROWS * D * 8 + (2 << 20), (new_peak, out_bytes)
    assert new_peak < 0.4 * old_peak, (new_peak, old_peak)
    # float64 and short inputs are standardized the same way.
    for g, w in zip(club._standardize(tr[:50].astype(np.float64), te[:7]), _old(tr[:50], te[:7])):
        assert np.array_equal(g, w)


def test_bracket_unchanged_on_a_planted_discrete_target():
    """A 4-class label carried by 2 of 16 dimensions: the bracket brackets it (> 0.5 bits lower bound)
    and is bit-identical whether x arrives as float32 or float64 (the old path upcast both)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 3000)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x[:, 0] += 3 * (y % 2)
    x[:, 1] += 3 * (y // 2)
    cfg = BracketConfig(steps=150, hidden=32, batch_size=256, seed=0)
    a = mi_bracket(x[:2000], y[:2000], x[2000:], y[2000:], True, cfg, "cpu")
    b = mi_bracket(x[:2000].astype(np.float64), y[:2000], x[2000:].astype(np.float64), y[2000:], True, cfg, "cpu")
    assert a.lower > 0.5 / np.log2(np.e) and a.lower <= a.upper
    assert (a.lower, a.upper, a.log_likelihood) == (b.lower, b.upper, b.log_likelihood)

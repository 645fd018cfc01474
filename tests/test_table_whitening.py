"""Count-table problems that share a layer's vectors and train rows share one whitening.

A task's probe and its code control relabel the same train rows, and f0_st keeps f0's voiced rows,
so their whitenings are the same computation: made once per layer, the numbers must be those of
making it for every problem (bit for bit), and the whitening must be made once per layer and row set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.analyses.probes import torch_backend as TB
from codeclens.analyses.probes.data import weighted_whitener
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("wh") / "s", n_utt=80, n_speakers=16, frames=(30, 60),
                               n_layers=3, codebook_size=32, dim=8, n_phones=6, noise=0.3, seed=2))


def _run(store, monkeypatch, kept: int):
    monkeypatch.setattr(TB, "WHITENERS_KEPT", kept)
    TB._WHITENERS.clear()
    calls = []
    real = weighted_whitener

    def spy(x, w):
        calls.append((id(x), np.asarray(w, np.float64).sum()))
        return real(x, w)

    monkeypatch.setattr(TB, "weighted_whitener", spy)
    cfg = ProbeConfig(task=("phone", "f0"), l2=(1e-3,), ridge_l2=(1e-2, 1.0), bootstrap=20, cv="off")
    return run_probes([store], cfg), calls


def test_one_whitening_per_layer_and_row_set_same_numbers(store, monkeypatch):
    shared, calls = _run(store, monkeypatch, TB.WHITENERS_KEPT)
    alone, calls_alone = _run(store, monkeypatch, 0)
    L = store.n_layers
    # phone: probe + control per layer; f0 and f0_st: probe + control each, on the same voiced rows.
    assert len(calls_alone) == 2 * L + 4 * L
    assert len(calls) == L + L
    assert (shared["probe"] == "control").any() and set(shared["task"]) == {"phone", "f0", "f0_st"}
    pd.testing.assert_frame_equal(shared, alone)


def test_other_rows_are_not_served_the_cached_whitening(store, monkeypatch):
    """Same vectors, other train counts: a whitening of its own (the key holds the counts)."""
    TB._WHITENERS.clear()
    v = np.random.default_rng(0).normal(size=(20, 4))
    a = TB.table_whitener(v, np.arange(1, 21))
    b = TB.table_whitener(v, np.arange(1, 21)[::-1].copy())
    assert a is TB.table_whitener(v, np.arange(1, 21).astype(np.float64))
    assert b is not a and not np.allclose(a.mean, b.mean)
    assert np.array_equal(b.proj, weighted_whitener(v, np.arange(1, 21)[::-1].copy()).proj)

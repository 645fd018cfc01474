"""The streamed count-table path of layer:k probes (analyses/probes/tables.py) against the general path.

Known answers: on planted stores (phone in layer 1, speaker in layer 2) the table path must give the
general path's probes.csv rows (same fits, same bootstrap weights, so values, intervals, p-values and
chance levels to rounding), the carrier layers must win, and the chunk size must not change anything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.analyses.probes import tables as T
from codeclens.analyses.probes.controls import control_table, control_table_counts
from codeclens.analyses.probes.metrics import chance_counts, majority_chance, uniform_chance
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store

NUM = ["value", "ci_low", "ci_high", "chance_majority", "chance_uniform", "chance", "p_value", "l2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("tables") / "s", n_utt=120, n_speakers=24, frames=(30, 70),
                               n_layers=3, codebook_size=48, dim=8, n_phones=8, noise=0.3, seed=4))


def _both(store, monkeypatch, **kw):
    cfg = ProbeConfig(**{"l2": (1e-4, 1e-2), "bootstrap": 200, "cv": "off", **kw})
    used = []
    real = T.run_store

    def spy(*a, **k):
        out = real(*a, **k)
        used.append(out is not None)
        return out

    monkeypatch.setattr(T, "run_store", spy)
    fast = run_probes([store], cfg)
    assert used and all(used), "the table path did not run"
    monkeypatch.setattr(T, "eligible", lambda *a: False)
    slow = run_probes([store], cfg)
    return fast, slow


def _assert_same(fast: pd.DataFrame, slow: pd.DataFrame, atol: float = 1e-9):
    assert len(fast) == len(slow) > 0
    other = [c for c in fast.columns if c not in NUM]
    pd.testing.assert_frame_equal(fast[other], slow[other])
    for c in NUM:
        np.testing.assert_allclose(fast[c].to_numpy(float), slow[c].to_numpy(float), atol=atol, rtol=0, err_msg=c)


@pytest.mark.parametrize("task", ["phone", "speaker"])
def test_table_path_equals_general_path(store, monkeypatch, one_torch_thread, task):
    """Every row (linear, lookup, control, selectivity; speaker: one label per utterance unit, phone:
    a [speaker, code, phone] test table) equals the per-row path's."""
    fast, slow = _both(store, monkeypatch, task=(task,))
    assert set(fast["probe"]) == {"linear", "lookup", "control", "selectivity"}
    _assert_same(fast, slow)
    # The planted answer: the carrier layer is far above chance, the others are not.
    carrier = {"phone": 1, "speaker": 2}[task]
    lin = fast[(fast.probe == "linear") & (fast.metric == "accuracy")].set_index("layer")
    assert lin["value"].idxmax() == carrier
    assert lin.loc[carrier, "value"] > lin.loc[carrier, "chance"] + 0.3 and lin.loc[carrier, "p_value"] < 0.01
    assert all(lin.loc[k, "value"] < lin.loc[k, "chance"] + 0.1 for k in lin.index if k != carrier)


def test_table_path_other_options(store, monkeypatch, one_torch_thread):
    """codes:k, no bootstrap, no control, phone on utterance units (split utt: a dense test table)."""
    fast, slow = _both(store, monkeypatch, task=("phone",), repr="codes:1,layer:3", bootstrap=0, control="none",
                       split="utt")
    assert set(fast["unit"]) == {"utterance"} and "control" not in set(fast["probe"])
    _assert_same(fast, slow)


def test_chunk_size_does_not_change_results(store, one_torch_thread):
    cfg = ProbeConfig(task=("phone",), l2=(1e-3,), bootstrap=50)
    names = {id(store): store.name}
    a = pd.DataFrame(T.run_store(store, "phone", cfg, 0, names, chunk=97))
    b = pd.DataFrame(T.run_store(store, "phone", cfg, 0, names, chunk=10**9))
    pd.testing.assert_frame_equal(a, b)
    ca, cb = T.count_task(store, "phone", cfg, chunk=97), T.count_task(store, "phone", cfg, chunk=10**9)
    for f in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(ca, f), getattr(cb, f))


def test_counts_equal_per_row_tables(store):
    """The streamed tables == bincounts of the per-row task data and codes."""
    from codeclens.analyses.framestream import codes_at
    from codeclens.analyses.probes.data import gather_task
    from codeclens.analyses.probes.run import resampling

    cfg = ProbeConfig(task=("phone",), bootstrap=0)
    td = gather_task(store, "phone", cfg)
    c = T.count_task(store, "phone", cfg, chunk=101)
    assert c.classes == td.classes and c.n_train_classes == td.n_train_classes
    rs = resampling(store, td, cfg)
    assert c.n_units == rs.n_units and c.unit == rs.unit == "speaker"
    Call = len(td.classes)
    for j, layer in enumerate(c.layers):
        K = store.codebook_sizes[layer]
        for split in ("train", "val"):
            code = codes_at(store, td.rows[split], [layer])[:, 0].astype(np.int64)
            want = np.bincount(code * Call + td.y[split], minlength=K * Call).reshape(K, Call)
            np.testing.assert_array_equal(getattr(c, split)[j, :K], want)
        code = codes_at(store, td.rows["test"], [layer])[:, 0].astype(np.int64)
        key = (rs.units * K + code) * Call + td.y["test"]
        want = np.bincount(key, minlength=rs.n_units * K * Call).reshape(rs.n_units, K, Call)
        np.testing.assert_array_equal(c.test[j][c.keep][:, :K][..., c.take], want)


def test_control_table_from_counts_equals_rows():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n_types, n_cls = int(rng.integers(5, 60)), int(rng.integers(2, 9))
        y = rng.integers(0, n_cls, 500).astype(np.int32)
        types = {"train": rng.integers(0, n_types - 3, 500), "test": rng.integers(0, n_types, 50)}
        want = control_table(types, y, seed=7)
        freq = np.bincount(types["train"], minlength=len(want))
        np.testing.assert_array_equal(control_table_counts(freq, np.bincount(y, minlength=n_cls), seed=7), want)


def test_chance_from_counts_equals_rows():
    rng = np.random.default_rng(1)
    ytr, yte = rng.integers(0, 5, 300), rng.integers(0, 7, 100)
    got = chance_counts(np.bincount(ytr, minlength=7), np.bincount(yte, minlength=7), 5)
    maj, uni = majority_chance(ytr, yte, 7), uniform_chance(yte, 5, 7)
    for m in ("accuracy", "macro_f1"):
        assert got[m] == (maj[m], uni[m])


def test_sparse_replicates_equal_dense():
    from codeclens.analyses.probes.metrics import _wsum

    rng = np.random.default_rng(2)
    w = rng.random((30, 50))
    x = np.zeros((50, 40))
    x[np.arange(50), rng.integers(0, 40, 50)] = rng.integers(1, 9, 50)
    np.testing.assert_allclose(_wsum(w, x), w @ x, rtol=1e-12)


@pytest.mark.parametrize("task", ["f0", "f0_st"])
def test_regression_table_path_equals_general_path(store, monkeypatch, one_torch_thread, task):
    """F0 (MAE in cents too) and f0_st (exact speaker medians in two passes): every row, the control
    (labels at exact train ranks) and the target-range columns equal the per-row path's to rounding."""
    fast, slow = _both(store, monkeypatch, task=(task,), f0_semitones=False)
    assert set(fast["probe"]) == {"linear", "lookup", "control", "selectivity"}
    _assert_same(fast, slow, atol=1e-7)
    if task == "f0":
        lin = fast[(fast.probe == "linear") & (fast.metric == "r2")].set_index("layer")
        assert lin["value"].idxmax() == 3 and lin.loc[3, "value"] > 0.3


def test_regression_chunk_size_does_not_change_results(store, one_torch_thread):
    """f0_st in chunks of 97 frames (many chunks, cutting utterances) == one chunk (float sums: to rounding)."""
    from codeclens.analyses.probes import regtables

    cfg = ProbeConfig(task=("f0_st",), bootstrap=50)
    names = {id(store): store.name}
    a = pd.DataFrame(regtables.run_store(store, "f0_st", cfg, 0, names, chunk=97))
    b = pd.DataFrame(regtables.run_store(store, "f0_st", cfg, 0, names, chunk=10**9))
    assert len(a) > 0
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, atol=1e-12)


def test_order_statistics_are_exact():
    """Two-pass order statistics per group == sorting all values (signed values, zeros of both signs,
    tiny magnitudes in the shared bin, ties), and count_below == a comparison of all values."""
    from codeclens.analyses.probes.orderstats import OrderStats

    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 5, 4000), rng.random(3000) * 300 + 60, [0.0, -0.0, 1e-8, -1e-9, 3.0, 3.0],
                        rng.normal(0, 1e-6, 50)]).astype(np.float32)
    g = rng.integers(0, 3, len(v))
    for shift in (4, 12):
        st = OrderStats(3, shift)
        for a in range(0, len(v), 777):
            st.add(v[a : a + 777], g[a : a + 777])
        grp = np.repeat(np.arange(3), 60)
        rk = np.concatenate([rng.integers(0, (g == k).sum(), 60) for k in range(3)])
        st.plan(grp, rk)
        for a in range(0, len(v), 777):
            st.collect(v[a : a + 777], g[a : a + 777])
        want = np.array([np.sort(v[g == k])[r] for k, r in zip(grp, rk)])
        np.testing.assert_array_equal(st.values(), want)
    one = OrderStats(1, 8)
    one.add(v)
    x = float(np.sort(v)[1234]) + 1e-9
    one.plan(np.zeros(1, np.int64), np.array([1234]), extra=one.binner(np.array([x], np.float32)))
    one.collect(v)
    assert one.count_below(x) == int((v < x).sum()) and one.count_below(x, strict=False) == int((v <= x).sum())


def test_f0_st_reuses_the_f0_passes_for_its_speaker_medians(store, monkeypatch, one_torch_thread):
    """f0 then f0_st in one run: f0_st's speaker medians come from the F0 task's two passes (no passes of
    their own) and its rows are bit for bit those of f0_st run alone (its own two median passes)."""
    from codeclens.analyses.probes import regtables

    alone = run_probes([store], ProbeConfig(task=("f0_st",), l2=(1e-4, 1e-2), bootstrap=100, f0_semitones=False))
    calls = []
    real = regtables.speaker_medians
    monkeypatch.setattr(regtables, "speaker_medians", lambda *a: calls.append(1) or real(*a))
    both = run_probes([store], ProbeConfig(task=("f0",), l2=(1e-4, 1e-2), bootstrap=100))
    assert not calls, "f0_st read the frames again for its medians"
    assert not regtables._MEDIANS.get(store), "the shared medians were not taken by f0_st"
    st = both[both.task == "f0_st"].reset_index(drop=True)
    assert len(st) == len(alone) > 0
    pd.testing.assert_frame_equal(st, alone, check_exact=True)


def test_shared_truth_sums_equal_per_predictor_stats():
    """The evaluation pass sums each chunk's truth (n, sum y, sum y^2 per unit) once for all predictors:
    bit for bit the per-predictor :func:`reg_stats` sums it replaced."""
    from codeclens.analyses.probes import metrics as Mx
    from codeclens.analyses.probes import regtables

    rng = np.random.default_rng(3)
    acc, ref = regtables._RegAcc(7), np.zeros((6, 7))
    for _ in range(5):  # chunks
        y = rng.uniform(80, 300, 400)
        pred = y + rng.normal(0, 20, 400)
        u = rng.integers(0, 7, 400)
        acc.add(y, pred, u, True, Mx.reg_truth_sums(y, u, 7))
        st = Mx.reg_stats(y, pred, u, 7, True)
        ref += np.stack([st.n, st.sy, st.syy, st.sse, st.sae, st.sac])
    assert np.array_equal(acc.s, ref)


def test_distinct_vectors_made_once_per_store_and_layer(store):
    """Every task of a run asks for the same layers' distinct vectors: one row sort per layer, the same
    arrays as sorting again."""
    from codeclens.store import Repr

    a = T.distinct_vectors(store, Repr("layer", 2))
    assert T.distinct_vectors(store, Repr("layer", 2))[0] is a[0]
    ref = T._distinct_vectors(store, Repr("layer", 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, ref))
    v, remap = a
    np.testing.assert_array_equal(v[remap], np.asarray(store.tables[1], np.float64))

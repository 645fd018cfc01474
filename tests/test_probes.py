"""Probes on stores with known answers: planted layers, scikit-learn parity, exact ridge, controls, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import FittedProbe, ProbeConfig, fit_probe, run_probes
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.errors import CodeclensError
from codeclens.store import Store
from codeclens.store.arrays import write_store

FAST = dict(bootstrap=200, control="none")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Layer 1 carries phone, 2 speaker, 3 F0; layer 4 is all-zero vectors; latent = sum of layers."""
    return planted_store(tmp_path_factory.mktemp("planted") / "s", n_utt=60, latent="sum", zero_layers=(4,), seed=1,
                         name="planted")


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """Harder version (30% of carrier codes random) so parity is not decided at 100%."""
    return planted_store(tmp_path_factory.mktemp("noisy") / "s", n_utt=60, noise=0.3, spread=1.0, latent="sum", seed=2,
                         name="noisy")


def _one(df, **kw):
    d = df
    for k, v in kw.items():
        d = d[d[k] == v]
    assert len(d) == 1, (kw, len(d))
    return d.iloc[0]


def test_planted_layer_ranks_first_and_others_at_chance(planted):
    df = run_probes([planted], ProbeConfig(task=("phone", "speaker", "f0"), repr="layer:*", control="none", seed=3))
    for task, carrier, metric in (("phone", 1, "accuracy"), ("speaker", 2, "accuracy"), ("f0", 3, "r2")):
        d = df[(df.task == task) & (df.probe == "linear") & (df.metric == metric)].set_index("layer")
        assert d["value"].idxmax() == carrier, (task, d["value"].to_dict())
        assert d.loc[carrier, "ci_low"] > d.drop(index=carrier)["ci_high"].max()
        if task == "phone":
            # Layers 2-4 carry nothing about phones: at the majority baseline within the CI.
            for k in (2, 3, 4):
                row = d.loc[k]
                assert row["ci_low"] <= row["chance_majority"] + 0.01, (k, row.to_dict())
    # Every reported linear probe sits at or below what the codes allow on train data (lookup bound),
    # and the lookup rows exist for every layer.
    look = df[(df.probe == "lookup") & (df.metric == "accuracy") & (df.task == "phone")]
    assert sorted(look["layer"]) == [1, 2, 3, 4]
    assert _one(df, task="phone", probe="lookup", metric="accuracy", layer=1)["value"] > 0.8
    f0 = df[(df.task == "f0") & (df.probe == "linear")]
    assert set(f0["metric"]) == {"r2", "mae", "mae_cents"}
    # MAE in Hz and cents agree in scale: 100 cents ~ 6% of F0 (100-250 Hz here).
    m = _one(f0, layer=3, metric="mae")["value"]
    c = _one(f0, layer=3, metric="mae_cents")["value"]
    assert 0.2 < c / (1200 * np.log2(1 + m / 175.0)) < 5


def _split_rows(store: Store, split_col: str):
    split = store.utterances[split_col].to_numpy()[store.frame_utt]
    return {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}


@pytest.mark.parametrize("repr_", ["layer:1", "cumulative:2", "latent"])
def test_logistic_parity_with_sklearn(noisy, repr_):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    s = Store(noisy)
    l2 = 1e-3
    df = run_probes([s], ProbeConfig(task=("phone",), repr=repr_, l2=(l2,), max_iter=500, split="utt", **FAST))
    ours = _one(df, probe="linear", metric="macro_f1")["value"]
    rows = _split_rows(s, "split_utt")
    phone = s.frames["phone"].to_numpy()
    sc = StandardScaler().fit(s.materialize(repr_, rows["train"]))
    X = {k: sc.transform(s.materialize(repr_, r)) for k, r in rows.items()}
    ref = LogisticRegression(C=1.0 / (2 * l2 * len(rows["train"])), max_iter=2000).fit(X["train"], phone[rows["train"]])
    theirs = f1_score(phone[rows["test"]], ref.predict(X["test"]), average="macro")
    assert 0.2 < theirs < 0.99  # a real test: neither trivial nor hopeless
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    # The built-in sklearn backend is the same reference.
    sk = run_probes([s], ProbeConfig(task=("phone",), repr=repr_, l2=(l2,), backend="sklearn", max_iter=2000,
                                     split="utt", **FAST))
    assert abs(_one(sk, probe="linear", metric="macro_f1")["value"] - theirs) < 1e-6


@pytest.mark.parametrize("repr_", ["layer:3", "latent"])
def test_ridge_parity_with_sklearn(noisy, repr_):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.preprocessing import StandardScaler

    s = Store(noisy)
    l2 = 1e-3
    df = run_probes([s], ProbeConfig(task=("f0",), repr=repr_, ridge_l2=(l2,), split="utt", f0_semitones=False, **FAST))
    ours = _one(df, probe="linear", metric="r2")["value"]
    rows = _split_rows(s, "split_utt")
    voiced = s.frames["voiced"].to_numpy()
    rows = {k: r[voiced[r]] for k, r in rows.items()}
    y = s.frames["f0_hz"].to_numpy()
    sc = StandardScaler().fit(s.materialize(repr_, rows["train"]))
    X = {k: sc.transform(s.materialize(repr_, r)) for k, r in rows.items()}
    ref = Ridge(alpha=l2 * len(rows["train"])).fit(X["train"], y[rows["train"]])
    theirs = r2_score(y[rows["test"]], ref.predict(X["test"]))
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


def test_exact_code_table_regression_equals_lstsq(noisy):
    """The per-code sums give exactly the least-squares fit on the expanded frames."""
    s = Store(noisy)
    probe = fit_probe(s, "f0", "layer:3", ridge_l2=(0.0,), split="utt")
    rows = _split_rows(s, "split_utt")
    voiced = s.frames["voiced"].to_numpy()
    tr, te = rows["train"][voiced[rows["train"]]], rows["test"][voiced[rows["test"]]]
    y = s.frames["f0_hz"].to_numpy()
    X = np.c_[s.materialize("layer:3", tr).astype(np.float64), np.ones(len(tr))]
    coef, *_ = np.linalg.lstsq(X, y[tr], rcond=None)
    Xt = s.materialize("layer:3", te).astype(np.float64)
    np.testing.assert_allclose(probe.predict(Xt), np.c_[Xt, np.ones(len(te))] @ coef, rtol=1e-6, atol=1e-6)


def test_code_table_logistic_equals_frame_fit(noisy):
    """layer:k through the count table == the same probe fitted on every frame (codes:k vs one-hot frames)."""
    s = Store(noisy)
    cfg = ProbeConfig(task=("phone",), l2=(1e-3,), max_iter=500, **FAST)
    lookup = fit_probe(s, "phone", "layer:1", cfg)
    # cumulative:1 is the same vectors as layer:1 but goes through the frame path: same optimum.
    cum = fit_probe(s, "phone", "cumulative:1", cfg)
    x = s.materialize("layer:1", np.arange(2000))
    agree = np.mean(lookup.predict(x) == cum.predict(x))
    assert agree > 0.99, agree
    assert abs(lookup.test_scores["macro_f1"] - cum.test_scores["macro_f1"]) < 0.01


def test_streaming_equals_in_memory(noisy):
    cfg = ProbeConfig(task=("phone",), repr="cumulative:2", l2=(1e-3, 1e-2), **FAST)
    a = run_probes([noisy], cfg)
    b = run_probes([noisy], dataclasses.replace(cfg, memory_mb=1))  # over budget: streamed in chunks
    pd.testing.assert_series_equal(a["value"], b["value"], atol=1e-4, rtol=0)


def test_control_selectivity_near_zero_without_information(planted):
    df = run_probes([planted], ProbeConfig(task=("phone",), repr="layer:4,latent", control="code", bootstrap=200))
    sel = _one(df, representation="layer:4", probe="selectivity", metric="accuracy")
    assert abs(sel["value"]) < 0.02, sel.to_dict()
    assert sel["ci_low"] <= 0 <= sel["ci_high"] or abs(sel["value"]) < 1e-9
    # The latent's code-tuple control is degenerate (4 layers of 32 codes: test tuples unseen in train).
    assert set(df[df.representation == "latent"]["probe"]) == {"linear"}


def test_type_control_on_noise_latent(tmp_path):
    p = planted_store(tmp_path / "n", n_utt=40, latent="noise", seed=4)
    df = run_probes([p], ProbeConfig(task=("speaker",), repr="latent", control="type", bootstrap=200))
    sel = _one(df, probe="selectivity", metric="accuracy")
    assert abs(sel["value"]) < 0.06, sel.to_dict()


def test_multi_store_batched_and_balanced(planted, noisy):
    df = run_probes([planted, noisy], ProbeConfig(task=("phone",), repr="layer:1-2", balance=True, **FAST))
    acc = df[(df.probe == "linear") & (df.metric == "accuracy")].set_index(["store", "layer"])["value"]
    assert len(acc) == 4
    assert acc["planted", 1] > acc["noisy", 1] > acc["planted", 2]  # phone on layer 1, less so when noisy


def test_fit_probe_predict_save_load(planted, tmp_path):
    s = Store(planted)
    probe = fit_probe(s, "phone", "layer:1", control="none", split="utt")
    rows = _split_rows(s, "split_utt")["test"]
    truth = s.frames["phone"].to_numpy()[rows]
    pred = probe.predict_codes(np.asarray(s.codes[rows]), s.tables)
    assert np.mean(pred == truth) == pytest.approx(probe.test_scores["accuracy"], abs=1e-9)
    assert probe.test_scores["accuracy"] > 0.8
    again = FittedProbe.load(probe.save(tmp_path / "phone.npz"))
    np.testing.assert_array_equal(again.predict_codes(np.asarray(s.codes[rows]), s.tables), pred)
    assert again.score(s.materialize("layer:1", rows), truth)["accuracy"] == pytest.approx(np.mean(pred == truth))


def test_utterance_level_accent(planted):
    df = run_probes([planted], ProbeConfig(task=("speaker",), repr="layer:2,layer:4", level="utterance",
                                           l2=(1e-2,), **FAST))
    acc = df[(df.probe == "linear") & (df.metric == "accuracy")].set_index("representation")["value"]
    assert acc["mean(layer:2)"] > 0.9 and acc["mean(layer:4)"] < 0.5


def test_l1_runs_and_sparsifies(noisy):
    dense = fit_probe(noisy, "phone", "latent", l2=(1e-4,), control="none")
    sparse = fit_probe(noisy, "phone", "latent", l2=(1e-4,), l1=0.02, control="none")
    assert np.mean(np.abs(sparse.W) < 1e-9) > 0.3 > np.mean(np.abs(dense.W) < 1e-9)
    assert sparse.test_scores["accuracy"] > 0.3


def _tiny(tmp_path, **frame_cols):
    n = 40
    codes = np.random.default_rng(0).integers(0, 4, size=(n * 4, 2))
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(n)], "speaker": [f"s{i % 4}" for i in range(n)],
                         "accent": [f"a{i % 2}" for i in range(n)], "n_frames": [4] * n})
    frames = pd.DataFrame(frame_cols) if frame_cols else None
    return write_store(tmp_path / "tiny", codes, [np.eye(4, 3, dtype=np.float32)] * 2, utts, frames)


def test_errors_are_clear(tmp_path):
    p = _tiny(tmp_path, phone=np.array(["a"] * 160))
    with pytest.raises(CodeclensError, match="one class"):
        run_probes([p], ProbeConfig(task=("phone",)))
    with pytest.raises(CodeclensError, match="no label column 'tone'"):
        run_probes([p], ProbeConfig(task=("tone",)))
    with pytest.raises(CodeclensError, match="no latent"):
        run_probes([p], ProbeConfig(task=("speaker",), repr="latent"))
    with pytest.raises(CodeclensError, match="--split spk"):
        run_probes([p], ProbeConfig(task=("accent",), split="utt"))
    u = pd.read_parquet(p / "utterances.parquet")
    u["split_utt"] = "train"
    u.to_parquet(p / "utterances.parquet", index=False)
    with pytest.raises(CodeclensError, match="no usable test rows"):
        run_probes([p], ProbeConfig(task=("speaker",)))


def test_open_set_speaker_on_held_out_speakers(tmp_path):
    """Speaker-disjoint speaker probing: identify held-out speakers with the probe's class scores."""
    p = planted_store(tmp_path / "o", n_utt=400, n_speakers=40, frames=(20, 40), codebook_size=128, seed=5)
    df = run_probes([p], ProbeConfig(task=("speaker",), repr="layer:2,layer:4", level="utterance", split="spk",
                                     bootstrap=200))
    assert set(df["probe"]) == {"linear"}  # no control for open-set
    acc = df[df.metric == "accuracy"].set_index("representation")
    eer = df[df.metric == "eer"].set_index("representation")["value"]
    assert acc.loc["mean(layer:2)", "value"] > 0.9 and eer["mean(layer:2)"] < 0.1
    noise = acc.loc["mean(layer:4)"]
    assert noise["ci_low"] <= noise["chance_uniform"] <= noise["ci_high"] or noise["value"] < 0.3
    assert eer["mean(layer:4)"] > 0.35

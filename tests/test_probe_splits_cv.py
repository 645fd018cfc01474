"""Splits, speaker-fold cross-validation, F0 targets, controls, chance wording and the probe cache,
each on data with a known answer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig, run_probes, summary
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.cli import main
from codeclens.errors import CodeclensError
from codeclens.labels.splits import add_splits
from codeclens.store import Store
from codeclens.store.arrays import write_store


def _utts(n_utt=300, n_spk=30, start=0):
    i = np.arange(start, start + n_utt)
    return pd.DataFrame({"id": [f"u{k:05d}" for k in i], "speaker": [f"s{k % n_spk:03d}" for k in i],
                         "accent": [f"a{k % 3}" for k in i], "n_frames": 10})


# -- item 3: stable, shareable splits --------------------------------------------
def test_removing_or_adding_utterances_moves_no_other_utterance():
    base = add_splits(_utts())
    rng = np.random.default_rng(0)
    fewer = add_splits(_utts().drop(index=rng.choice(300, 40, replace=False)).reset_index(drop=True))
    more = add_splits(pd.concat([_utts(), _utts(20, 31, start=300)], ignore_index=True).sample(frac=1, random_state=1))
    for other in (fewer, more):
        m = base.merge(other, on="id", suffixes=("", "_2"))
        assert len(m) >= 260
        assert (m.split_utt == m.split_utt_2).all() and (m.split_spk == m.split_spk_2).all()
    # speaker-disjoint, all three splits used, fractions near 70/10/20
    assert base.groupby("speaker")["split_spk"].nunique().max() == 1
    big = add_splits(_utts(20000, 4000))
    share = big["split_utt"].value_counts(normalize=True)
    assert abs(share["train"] - 0.7) < 0.02 and abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.2) < 0.02
    assert not add_splits(_utts(), seed=1)["split_utt"].equals(base["split_utt"])  # seeded


def test_predefined_split_column_is_honoured(tmp_path):
    u = _utts()
    spk_num = u["speaker"].str[1:].astype(int)
    u["split"] = np.where(spk_num < 20, "train", np.where(spk_num < 24, "validation", "test"))
    s = add_splits(u)
    assert (s["split_spk"] == u["split"].replace({"validation": "val"})).all()  # speaker-disjoint: split_spk
    assert s["split_utt"].nunique() == 3 and not (s["split_utt"] == s["split_spk"]).all()
    u["split"] = np.where(np.arange(len(u)) % 7 == 0, "TEST", "Train")  # not speaker-disjoint: split_utt
    s = add_splits(u)
    assert (s["split_utt"] == np.where(np.arange(len(u)) % 7 == 0, "test", "train")).all()
    # Through the store writer: a corpus split column survives into the store's split_spk.
    u = _utts(60, 12)
    u["split"] = np.where(u["speaker"].str[1:].astype(int) < 8, "train", np.where(u["speaker"] < "s010", "dev", "test"))
    st = Store(write_store(tmp_path / "own", np.zeros((600, 1), np.int64), [np.eye(2, dtype=np.float32)], u, None))
    assert (st.utterances["split_spk"].to_numpy() == u["split"].replace({"dev": "val"}).to_numpy()).all()
    u["split"] = "holdout"
    with pytest.raises(CodeclensError, match="unknown value"):
        add_splits(u)


# -- item 11: speaker-fold cross-validation -------------------------------------
def test_few_speakers_use_speaker_fold_cv_and_test_every_speaker(tmp_path):
    p = planted_store(tmp_path / "cv", n_utt=48, n_speakers=12, seed=3)
    df = run_probes([p], ProbeConfig(task=("f0", "phone"), repr="layer:1,layer:3", bootstrap=200))
    s = Store(p)
    assert set(df["split"]) == {"cv_spk"} and set(df["unit"]) == {"speaker"}
    assert set(df["n_test_units"]) == {12}  # every speaker tested once, pooled
    voiced = int(s.frames["voiced"].sum())
    f0 = df[(df.task == "f0") & (df.probe == "linear") & (df.metric == "r2")].set_index("representation")
    assert f0.loc["layer:3", "n_test"] == voiced
    assert f0.loc["layer:3", "value"] > 0.5 and f0.loc["layer:3", "p_value"] < 0.05  # the F0 carrier
    ph = df[(df.task == "phone") & (df.probe == "linear") & (df.metric == "macro_f1")].set_index("representation")
    assert ph.loc["layer:1", "value"] > 0.8 and ph.loc["layer:3", "p_value"] > 0.05
    # Controls are pooled over the folds too. Layer 3's codes are random for phone, but its 32 vectors let a
    # linear probe read any function of the code, the control included: the task does not beat its control.
    sel = df[(df.task == "phone") & (df.probe == "selectivity") & (df.metric == "accuracy")].set_index("representation")
    assert sel.loc["layer:3", "value"] < 0 and sel.loc["layer:3", "p_value"] > 0.05
    assert sel.loc["layer:1", "split"] == "cv_spk"


def test_enough_test_speakers_keep_the_split(tmp_path):
    p = planted_store(tmp_path / "many", n_utt=120, n_speakers=60, frames=(10, 20), seed=4)
    df = run_probes([p], ProbeConfig(task=("phone",), repr="layer:1", bootstrap=0, control="none", l2=(1e-3,)))
    assert set(df["split"]) == {"split_spk"}


# -- item 6: speaker-normalised F0, and warnings on target ranges ----------------
def _pitch_store(path, n_spk=12, n_utt=4, T=60, seed=0, splits=None):
    """Layer 1 codes the contour (semitones re the speaker's median), layer 2 the speaker; F0 = median * 2^(st/12)."""
    rng = np.random.default_rng(seed)
    U = n_spk * n_utt
    spk = np.arange(U) % n_spk
    med = np.linspace(90, 260, n_spk)
    N = U * T
    st = 4 * np.sin(2 * np.pi * np.tile(np.arange(T), U) / 23 + np.repeat(rng.uniform(0, 6, U), T))
    frame_spk = np.repeat(spk, T)
    K = 32
    c1 = np.clip(((st + 4) / 8 * K).astype(int), 0, K - 1)
    c2 = frame_spk * (K // n_spk) + rng.integers(0, K // n_spk, size=N)
    t1 = np.outer(np.linspace(-1, 1, K), rng.normal(size=8)) + 0.05 * rng.normal(size=(K, 8))
    t2 = rng.normal(size=(K, 8))
    f0 = med[frame_spk] * 2 ** (st / 12)
    utts = pd.DataFrame({"id": [f"u{i:03d}" for i in range(U)], "speaker": [f"s{s:02d}" for s in spk], "n_frames": T})
    if splits is not None:
        utts["split_spk"] = [splits(s) for s in spk]
        utts["split_utt"] = "train"
    frames = pd.DataFrame({"f0_hz": f0, "voiced": np.ones(N, bool)})
    return write_store(path, np.stack([c1, c2], 1), [t1.astype(np.float32), t2.astype(np.float32)], utts, frames,
                       seed=seed)


def test_semitone_target_separates_contour_from_speaker(tmp_path):
    p = _pitch_store(tmp_path / "p")
    df = run_probes([p], ProbeConfig(task=("f0",), repr="layer:1,layer:2", bootstrap=200, control="none"))
    assert {"f0", "f0_st"} <= set(df["task"])  # semitones reported by default beside Hz
    r2 = df[(df.probe == "linear") & (df.metric == "r2")].set_index(["task", "representation"])
    assert r2.loc[("f0_st", "layer:1"), "value"] > 0.9  # the contour, whatever the speaker
    assert r2.loc[("f0_st", "layer:2"), "value"] < 0.05 and r2.loc[("f0_st", "layer:2"), "p_value"] > 0.05
    only_hz = run_probes([p], ProbeConfig(task=("f0",), repr="layer:1", bootstrap=0, control="none",
                                          f0_semitones=False))
    assert set(only_hz["task"]) == {"f0"}


def test_test_speakers_outside_training_range_warn(tmp_path):
    # The two lowest-pitched speakers are the whole test set: F0 in Hz extrapolates.
    p = _pitch_store(tmp_path / "w", splits=lambda s: "test" if s < 2 else ("val" if s < 4 else "train"))
    df = run_probes([p], ProbeConfig(task=("f0",), repr="layer:1", bootstrap=100, control="none", cv="off",
                                     f0_semitones=False))
    row = df[(df.probe == "linear") & (df.metric == "r2")].iloc[0]
    assert row["test_outside_train"] > 0.3 and row["test_covers_train"] < 0.5
    text = summary(df)
    assert "outside the training range" in text and "cover only" in text


# -- item 7: the ridge grid acts -------------------------------------------------
def test_ridge_validation_chooses_shrinkage_on_a_small_noisy_store(tmp_path):
    rng = np.random.default_rng(0)
    U, T, D = 40, 8, 48
    N = U * T
    lat = rng.normal(size=(N, D))
    y = 100 + 5 * lat[:, 0] + 20 * rng.normal(size=N)  # weak signal, many noise directions, few rows
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(U)], "speaker": [f"s{i % 20}" for i in range(U)], "n_frames": T})
    p = write_store(tmp_path / "r", rng.integers(0, 4, size=(N, 1)), [rng.normal(size=(4, 4)).astype(np.float32)],
                    utts, pd.DataFrame({"y": y}), latent=lat)
    wide = run_probes([p], ProbeConfig(task=("y",), repr="latent", bootstrap=0, control="none", split="utt"))
    old = run_probes([p], ProbeConfig(task=("y",), repr="latent", bootstrap=0, control="none", split="utt",
                                      ridge_l2=(1e-5, 1e-4, 1e-3, 1e-2)))
    w = wide[wide.metric == "r2"].iloc[0]
    o = old[old.metric == "r2"].iloc[0]
    assert w["l2"] >= 0.1, w["l2"]  # validation picks real shrinkage
    assert w["value"] > o["value"]


# -- item 10: chance and the tests against it -------------------------------------
def test_no_layer_above_chance_is_said(tmp_path):
    p = planted_store(tmp_path / "c", n_utt=60, n_speakers=12, carriers={"speaker": 2}, seed=6)
    df = run_probes([p], ProbeConfig(task=("phone",), repr="layer:1-4", bootstrap=200, control="none"))
    f1 = df[(df.probe == "linear") & (df.metric == "macro_f1")]
    assert np.allclose(f1["chance"], np.maximum(f1["chance_majority"], f1["chance_uniform"]))
    assert (f1["chance_uniform"] > f1["chance_majority"]).all()  # uniform is the higher bar for macro-F1 here
    assert "no representation decodes phone above chance" in summary(df)
    df2 = run_probes([p], ProbeConfig(task=("speaker",), repr="layer:1-2", bootstrap=200, control="none"))
    assert "speaker is best decoded from layer:2" in summary(df2)


# -- item 8: the cache follows the store's content ---------------------------------
def test_probe_cache_is_keyed_on_store_content(tmp_path):
    p = planted_store(tmp_path / "k", n_utt=40, n_speakers=10, seed=7)
    out = tmp_path / "run"
    args = ["probe", "--store", str(p), "--out", str(out), "--task", "phone", "--repr", "layer:1",
            "--bootstrap", "0", "--control", "none", "--quiet"]
    assert main(args) == 0
    first = pd.read_csv(out / "probes.csv")
    acc = lambda d: d[(d.metric == "accuracy") & (d.probe == "linear")]["value"].iloc[0]  # noqa: E731
    assert acc(first) > 0.8
    (cached,) = (out / "tasks").glob("phone-*.csv")
    stamp = cached.stat().st_mtime_ns
    assert main(args) == 0  # same content: resumed from tasks/, not refitted
    assert cached.stat().st_mtime_ns == stamp and len(list((out / "tasks").glob("phone-*.csv"))) == 1
    # Relabel as `codeclens label` would: rewrite the frame table (phones shuffled across frames).
    fr = pd.read_parquet(p / "frames.parquet")
    fr["phone"] = np.random.default_rng(0).permutation(fr["phone"].to_numpy())
    fr.to_parquet(p / "frames.parquet", index=False)
    assert main(args) == 0
    assert acc(pd.read_csv(out / "probes.csv")) < 0.5  # refitted, not served from tasks/
    assert len(list((out / "tasks").glob("phone-*.csv"))) == 2
    json.loads((out / "config.json").read_text())

"""Probe statistics with known answers: open-set ID leaves whole utterances out, bootstrap intervals
hold their estimate and cover the truth, scores are tested against chance on the resampled unit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.analyses.probes import metrics as M
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store.arrays import write_store


# -- item 1: open-set identification measures speakers, not utterances ---------
def test_nearest_centroid_leaves_whole_utterance_out():
    """Embeddings random per utterance, constant within it: identifying the speaker is chance."""
    rng = np.random.default_rng(0)
    n_spk, n_utt, n_fr = 10, 6, 20
    utt = np.repeat(np.arange(n_spk * n_utt), n_fr)
    spk = utt // n_utt
    emb = rng.normal(size=(n_spk * n_utt, 16))[utt]
    frame_loo = np.mean(M.nearest_centroid_loo(emb, spk) == spk)
    utt_loo = np.mean(M.nearest_centroid_loo(emb, spk, utt) == spk)
    assert frame_loo > 0.4  # the old leave-one-frame-out: utterance identity passes for speaker
    assert utt_loo < 0.1 + 3 * np.sqrt(0.1 * 0.9 / n_spk / n_utt)  # chance 1/10 (per utterance)
    assert 0.4 < M.equal_error_rate(emb, spk, utt) < 0.6


def _utterance_constant_store(path, n_spk=40, n_utt=5, seed=0):
    """Layer 1: one random code per utterance (utterance identity only); layer 2: the speaker's code group."""
    rng = np.random.default_rng(seed)
    U = n_spk * n_utt
    nf = rng.integers(15, 25, size=U)
    spk = np.arange(U) % n_spk
    K = 8 * n_spk
    c1 = np.repeat(rng.integers(0, K, size=U), nf)
    c2 = np.repeat(spk * (K // n_spk), nf) + rng.integers(0, K // n_spk, size=int(nf.sum()))
    tables = [rng.normal(size=(K, 12)).astype(np.float32) for _ in range(2)]
    cent = rng.normal(size=(n_spk, 12))
    tables[1] = (cent[np.arange(K) // (K // n_spk)] + 0.3 * rng.normal(size=(K, 12))).astype(np.float32)
    utts = pd.DataFrame({"id": [f"u{i:04d}" for i in range(U)], "speaker": [f"s{s:02d}" for s in spk], "n_frames": nf})
    return write_store(path, np.stack([c1, c2], 1), tables, utts, None, seed=seed)


def test_open_set_frame_level_utterance_identity_scores_chance(tmp_path):
    p = _utterance_constant_store(tmp_path / "u")
    df = run_probes([p], ProbeConfig(task=("speaker",), split="spk", bootstrap=200, l2=(1e-3,)))
    lin = df[df.probe == "linear"].set_index(["representation", "metric"])
    acc1 = lin.loc[("layer:1", "accuracy")]
    assert acc1["unit"] == "speaker"
    # At chance: the interval holds the uniform chance and the one-sided test does not reject.
    assert acc1["ci_low"] <= acc1["chance"] + 0.02 and acc1["p_value"] > 0.05
    assert 0.35 < lin.loc[("layer:1", "eer"), "value"] < 0.65
    acc2 = lin.loc[("layer:2", "accuracy")]
    assert acc2["value"] > 0.8 and acc2["p_value"] < 0.05


# -- item 2: intervals that hold their estimate and cover the truth -------------
def test_bca_interval_holds_estimate_on_many_speakers(tmp_path):
    """200 speakers with few utterances each: the old percentile interval over utterances excluded the estimate."""
    p = planted_store(tmp_path / "m", n_utt=600, n_speakers=200, frames=(10, 20), codebook_size=256, noise=0.5,
                      spread=1.5, carriers={"speaker": 1, "phone": 2}, seed=3)
    df = run_probes([p], ProbeConfig(task=("speaker",), repr="layer:1,layer:3", bootstrap=300, control="none",
                                     l2=(1e-3,)))
    d = df[np.isfinite(df.ci_low)]
    assert len(d) >= 4 and set(d["unit"]) == {"utterance"}
    assert ((d.ci_low <= d.value + 1e-12) & (d.value <= d.ci_high + 1e-12)).all(), d[["metric", "value", "ci_low", "ci_high"]]
    f1 = d[(d.metric == "macro_f1") & (d.representation == "layer:1")].iloc[0]
    assert f1.ci_high - f1.ci_low > 0.005


def _speaker_tables(rng, n_spk, n_classes=8, n_frames=60):
    """Per-speaker classification counts: speaker-specific accuracy and class prevalences."""
    acc = rng.beta(6, 3, size=n_spk)
    prev = rng.dirichlet(np.full(n_classes, 2.0), size=n_spk)
    y, pred, unit = [], [], []
    for s in range(n_spk):
        t = rng.choice(n_classes, size=n_frames, p=prev[s])
        ok = rng.random(n_frames) < acc[s]
        wrong = (t + rng.integers(1, n_classes, size=n_frames)) % n_classes
        y.append(t), pred.append(np.where(ok, t, wrong)), unit.append(np.full(n_frames, s))
    return np.concatenate(y), np.concatenate(pred), np.concatenate(unit)


def test_bootstrap_coverage_near_95_percent():
    """Draw 40 test speakers from a population many times: the speaker-bootstrap BCa interval of
    macro-F1 (and accuracy) covers the population value about 95% of the time."""
    rng = np.random.default_rng(0)
    C = 8
    y, pred, _ = _speaker_tables(rng, 20000, C)
    truth = {"macro_f1": M.macro_f1(y, pred, C), "accuracy": M.accuracy(y, pred)}
    hits = {k: 0 for k in truth}
    n_sim, n_spk = 200, 40
    for i in range(n_sim):
        y, pred, unit = _speaker_tables(rng, n_spk, C)
        st = M.class_stats(y, pred, unit, n_spk, C)
        est, reps, jack = M.class_metrics(st), M.class_metrics(st, M.bootstrap_weights(n_spk, 400, i)), M.class_jackknife(st)
        for k in truth:
            lo, hi = M.bca_ci(float(est[k]), reps[k], jack[k])
            assert lo <= est[k] <= hi
            hits[k] += lo <= truth[k] <= hi
    for k, h in hits.items():
        assert 0.88 <= h / n_sim <= 0.99, (k, h / n_sim)


def test_regression_coverage_near_95_percent():
    """R^2 with speaker offsets in the error: speaker-bootstrap coverage near 95%."""
    rng = np.random.default_rng(1)

    def draw(n_spk, n=40):
        off = rng.normal(0, 0.5, size=n_spk)
        unit = np.repeat(np.arange(n_spk), n)
        y = rng.normal(size=n_spk * n) + rng.normal(0, 1, size=n_spk)[unit]
        return y, y + off[unit] + rng.normal(0, 0.7, size=len(y)), unit

    y, p, u = draw(20000, 10)
    truth = M.r2_score(y, p)
    hits, n_sim = 0, 200
    for i in range(n_sim):
        y, p, u = draw(60)
        st = M.reg_stats(y, p, u, 60, False)
        est = float(M.reg_metrics(st)["r2"])
        lo, hi = M.bca_ci(est, M.reg_metrics(st, M.bootstrap_weights(60, 400, i))["r2"], M.reg_jackknife(st)["r2"])
        assert lo <= est <= hi
        hits += lo <= truth <= hi
    assert 0.86 <= hits / n_sim <= 0.99, hits / n_sim  # bootstrap intervals run a little narrow at 60 units


def test_fixed_class_set_skips_classes_left_out():
    """A class whose units are all left out is skipped, not scored 0 (which biased macro-F1 down)."""
    y = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 1])  # class 2's only row (unit 2) predicted as 1
    st = M.class_stats(y, pred, np.array([0, 0, 1, 1, 2]), 3, 3)
    w = np.array([[1.0, 1.0, 0.0]])  # unit 2 left out: classes 0 and 1 perfect
    assert M.class_metrics(st, w)["macro_f1"][0] == pytest.approx(1.0)


def test_p_above_has_no_replicate_floor_when_far_above_the_bar():
    """100 replicates far above chance must survive Holm over a 12-layer sweep (the count alone
    gives p >= 1/101, and 12/101 > 0.05); replicates straddling the bar keep the count."""
    from codeclens.analyses.probes.metrics import p_above

    rng = np.random.default_rng(0)
    far = 0.2 + 0.01 * rng.normal(size=100)
    assert p_above(far, 0.02) < 0.05 / 12
    assert p_above(-far, -0.02, lower_is_better=True) < 0.05 / 12
    near = 0.02 + 0.01 * rng.normal(size=100)
    assert abs(p_above(near, 0.02) - (np.sum(near <= 0.02) + 1) / 101) < 1e-12


def test_class_jackknife_in_blocks_is_leave_one_out_exactly():
    """The blocked jackknife equals leave-one-unit-out macro-F1 computed from scratch for every unit
    (the known answer: drop the unit's rows, score the rest over the full sample's class set), bit
    for bit whatever the block, and its temporaries are a block's, not the whole [U, C] table's."""
    import tracemalloc

    rng = np.random.default_rng(3)
    U, C = 300, 40
    y = rng.integers(0, C, 6000)
    unit = rng.integers(0, U, 6000)
    pred = np.where(rng.random(6000) < 0.5, y, rng.integers(0, C, 6000))
    st = M.class_stats(y, pred, unit, U, C)
    whole = M.class_jackknife(st, block=U * C)
    fixed = M._class_set(st)
    for u in (0, 7, 299):
        keep = unit != u
        tp, fp, fn = M.class_counts(y[keep], pred[keep], C)
        assert np.isclose(whole["macro_f1"][u], M._f1_from_counts(tp, fp, fn, fixed), rtol=0, atol=1e-12)
        assert whole["accuracy"][u] == M.accuracy(y[keep], pred[keep])
    for block in (1, C, 7 * C + 3, 10**9):
        got = M.class_jackknife(st, block=block)
        assert np.array_equal(got["macro_f1"], whole["macro_f1"]) and np.array_equal(got["accuracy"], whole["accuracy"])

    big = M.ClassStats(*(np.ones((4000, 500)) for _ in range(3)), np.ones(4000), np.full(4000, 3.0))
    tracemalloc.start()
    M.class_jackknife(big, block=50_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.25 * big.tp.nbytes  # one-shot: several copies of the 16 MB table

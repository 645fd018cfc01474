"""Known answers for the SAE study's statistics, grouping, matching, selection and schedule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from codeclens.analyses.sae import stats
from codeclens.analyses.sae.classify import macro_f1
from codeclens.analyses.sae.published import paper_codec, paper_group, published_match
from codeclens.analyses.sae.study import select_configuration


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_grouping():
    us = ["US", "American", "Canadian", "canada", "en-us", "en-us-nyc", "North America"]
    uk = ["UK", "England", "Scottish", "Welsh", "en-gb", "en-gb-scotland", "en-gb-x-rp", "British Isles"]
    irish = ["Irish", "Northern Irish", "ireland"]
    other = ["Indian", "Australian", "en-029", "Nigerian", "Spanish"]
    assert {paper_group(v) for v in us} == {"US"}
    assert {paper_group(v) for v in uk} == {"UK"}
    assert {paper_group(v) for v in irish} == {""}  # British Isles, but in neither task
    assert {paper_group(v) for v in other} == {"non-US-UK"}


def test_published_match_needs_task_variant_and_repr():
    rep = "mean(cumulative:8)"
    assert published_match("encodec:24khz@6kbps", ["US", "UK"], "accent", rep, rep) == ("encodec_6kbps", "us_vs_uk", "")
    assert published_match("dac:24khz", ["US", "non-US-UK"], "accent", rep, rep)[1:] == ("us_vs_non_us_uk", "")
    for spec, why in (("dac:16khz", "24 kHz"), ("dac", "24 kHz"), ("encodec:48khz@6kbps", "24 kHz"),
                      ("encodec:24khz@3kbps", "1.5/6/12"), ("mimi?random_init=1", "random-weight"),
                      ("melrvq", "not in the paper")):
        assert why in paper_codec(spec)[1], spec
        assert published_match(spec, ["US", "UK"], "accent", rep, rep)[2]
    assert paper_codec("encodec")[0] == "encodec_6kbps"  # the bare spec is 24 kHz @ 6 kbps
    # all-accent multi-class, another label, a frame-level representation, a contradicting setting
    assert "binary tasks" in published_match("mimi", ["US", "UK", "non-US-UK"], "accent", rep, rep)[2]
    assert "not accent" in published_match("mimi", ["US", "UK"], "dialect", rep, rep)[2]
    assert "representation" in published_match("mimi", ["US", "UK"], "accent", "cumulative:8", rep)[2]
    assert "asks for" in published_match("mimi", ["US", "UK"], "accent", rep, rep, "us_vs_non_us_uk")[2]


def test_speaker_bootstrap_f1_known_answers(rng):
    classes = ["a", "b"]
    y = np.array(["a", "a", "b", "b", "a", "b"])
    pred = np.array(["a", "b", "b", "b", "a", "a"])
    spk = np.array(["s1", "s1", "s2", "s2", "s3", "s3"])
    counts = stats.speaker_counts(y, pred, spk, classes, ["s1", "s2", "s3"])
    assert stats.macro_f1_from_counts(counts.sum(0)) == pytest.approx(macro_f1(y, pred, np.array(classes)))
    # a replicate that draws s2 twice and s3 once: its F1 equals sklearn's on those rows
    w = np.array([[0, 2, 1]])
    rows = np.r_[2, 3, 2, 3, 4, 5]
    assert stats.replicate_f1(counts, w)[0] == pytest.approx(macro_f1(y[rows], pred[rows], np.array(classes)))
    # one class absent from a replicate still counts (fixed class set): F1 of the absent class is 0
    w = np.array([[0, 3, 0]])
    assert stats.replicate_f1(counts, w)[0] == pytest.approx(0.5)
    wts = stats.speaker_weights(7, 500, seed=0)
    assert wts.shape == (500, 7) and (wts.sum(1) == 7).all()


def test_paired_delta_interval_covers_and_excludes(rng):
    """Classifier B = A with 10% of test rows flipped to wrong: the paired ΔF1 interval lies
    below 0 and contains the estimate; an identical classifier gives exactly 0 in every replicate."""
    n_spk, per = 30, 20
    spk = np.repeat([f"s{i}" for i in range(n_spk)], per)
    y = rng.choice(["a", "b"], len(spk))
    a = np.where(rng.random(len(y)) < 0.9, y, np.where(y == "a", "b", "a"))
    b = a.copy()
    flip = rng.random(len(y)) < 0.1
    b[flip & (a == y)] = np.where(y[flip & (a == y)] == "a", "b", "a")
    speakers = sorted(set(spk))
    w = stats.speaker_weights(n_spk, 400, 0)
    ra = stats.replicate_f1(stats.speaker_counts(y, a, spk, ["a", "b"], speakers), w)
    rb = stats.replicate_f1(stats.speaker_counts(y, b, spk, ["a", "b"], speakers), w)
    est = macro_f1(y, b, np.array(["a", "b"])) - macro_f1(y, a, np.array(["a", "b"]))
    lo, hi = stats.interval(rb - ra)
    assert lo <= est <= hi < 0
    assert np.all(ra - ra == 0)


def test_seed_resampling_is_shared_between_series(rng):
    per_seed = rng.random((3, 50))
    a = stats.seed_mean_replicates(per_seed, 0)
    b = stats.seed_mean_replicates(per_seed + 1.0, 0)
    np.testing.assert_allclose(b - a, 1.0)  # the same seed draw in both: a paired difference
    assert stats.seed_mean_replicates(per_seed[:1], 0) is not None


def test_selection_uses_validation_never_test():
    res = pd.DataFrame([
        {"feature": "z", "q": 2.0, "s": 0.5, "f1_val": 0.70, "f1": 0.95},  # best on test
        {"feature": "z", "q": 5.0, "s": 0.5, "f1_val": 0.80, "f1": 0.60},  # best on validation
        {"feature": "position", "q": 2.0, "s": 0.1, "f1_val": 0.99, "f1": 0.99},  # not z
    ])
    best = select_configuration(res)
    assert (best["q"], best["s"]) == (5.0, 0.5)
    assert select_configuration(res.assign(f1_val=np.nan)) is None


def test_auto_schedule_fits_small_data(rng):
    """On 160 rows the paper's schedule (lr 1e-5, batch 1024, 200 epochs = 200 steps) leaves the SAE
    near its initialisation; the automatic one (smaller batches, more steps, a larger rate on
    normalised inputs) reconstructs better, and never runs more epochs than the paper."""
    from codeclens.analyses.sae import metrics
    from codeclens.analyses.sae.config import SAEStudyConfig
    from codeclens.analyses.sae.study import encode_np
    from codeclens.analyses.sae.sweep import ArraySource, SAEConfig, TrainConfig, train_sweep

    d, n = 16, 160
    atoms = rng.standard_normal((32, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)

    def draw(m):
        s = np.zeros((m, 32))
        for i in range(m):
            s[i, rng.choice(32, 2, replace=False)] = rng.uniform(1, 3, 2)
        return (s @ atoms + 3).astype(np.float32)

    x, xt = draw(n), draw(200)
    cfg = SAEStudyConfig(q=(2.0,), s=(0.125,))
    train, epochs, long_epochs = cfg.schedule(n)
    assert train.batch_size == 16 and epochs <= 200 and long_epochs <= 500 and train.normalize
    assert train.lr == pytest.approx(1.0 / (epochs * 10))
    fvu = {}
    for name, tr, ep in (("auto", train, epochs), ("paper", TrainConfig(lr=1e-5, batch_size=1024), 200),
                         ("init", TrainConfig(lr=1e-12, batch_size=1024), 1)):
        [m] = train_sweep([SAEConfig(2.0, 0.125, ep)], ArraySource(x), tr, progress=False)
        fvu[name] = metrics.fvu(xt, encode_np(m.sae, xt, torch.device("cpu"))[1])
    assert fvu["auto"] < 0.8 * fvu["paper"]
    assert fvu["paper"] > 0.9 * fvu["init"]  # the paper's schedule barely moves on this little data
    # explicit values win; the paper's large-data schedule is unchanged on large data
    tr, e, le = SAEStudyConfig(lr=1e-5, batch_size=1024, epochs=200, long_epochs=500).schedule(n)
    assert (tr.lr, tr.batch_size, e, le, tr.normalize) == (1e-5, 1024, 200, 500, False)
    tr, e, le = SAEStudyConfig().schedule(200_000)
    assert tr.batch_size == 1024 and e == 6 and le == 13

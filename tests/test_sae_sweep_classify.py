"""Concurrent sweep == training alone; ΔF1 with z / position / magnitude on planted answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from codeclens.analyses.sae.classify import (
    ClassifierConfig, delta_f1, fit_score, magnitude_features, position_features,
)
from codeclens.analyses.sae.sweep import ArraySource, SAEConfig, TrainConfig, paper_grid, train_sweep


pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_grid():
    g = paper_grid()
    assert len(g) == 16
    long = {(c.q, c.s) for c in g if c.epochs == 500}
    assert long == {(2.0, 0.10), (2.0, 0.05), (5.0, 0.10), (5.0, 0.05)}
    assert all(c.epochs == 200 for c in g if (c.q, c.s) not in long)
    assert [c.shape(128).k for c in g[:4]] == [64, 32, 13, 7]
    assert g[-1].shape(1024).d_z == 20480


def test_concurrent_sweep_equals_training_each_alone(rng):
    x = rng.standard_normal((300, 10)).astype(np.float32)
    mon = rng.standard_normal((50, 10)).astype(np.float32)
    cfgs = [SAEConfig(2, 0.5, 3), SAEConfig(3, 0.1, 5), SAEConfig(2, 0.2, 2)]
    train = TrainConfig(lr=1e-3, batch_size=64, aux_k=4, dead_samples=100)
    together = train_sweep(cfgs, ArraySource(x), train, seed=7, monitor=mon, progress=False)
    for c, m in zip(cfgs, together):
        [alone] = train_sweep([c], ArraySource(x), train, seed=7, monitor=mon, progress=False)
        assert m.steps == alone.steps == c.epochs * 5
        for (n, a), (_, b) in zip(m.sae.named_parameters(), alone.sae.named_parameters()):
            assert torch.equal(a, b), n
        assert [h["train_mse"] for h in m.history] == [h["train_mse"] for h in alone.history]
    # and the configurations did learn something different from their init / each other
    other = train_sweep([cfgs[0]], ArraySource(x), train, seed=8, progress=False)[0]
    assert not torch.equal(other.sae.W_dec, together[0].sae.W_dec)
    # the same holds with input normalisation
    norm = TrainConfig(lr=1e-3, batch_size=64, normalize=True)
    a = train_sweep(cfgs, ArraySource(x), norm, seed=7, progress=False)[1]
    [b] = train_sweep([cfgs[1]], ArraySource(x), norm, seed=7, progress=False)
    assert float(a.sae.scale) != 1.0 and torch.equal(a.sae.W_enc, b.sae.W_enc)


def test_normalize_makes_training_scale_free(rng):
    """With normalize, data multiplied by 1000 (and shifted) trains the same SAE: same codes
    up to the factor, same positions; without it Adam's fixed step size makes them differ."""
    x = rng.standard_normal((256, 8)).astype(np.float32)
    big = 1000 * x + 50
    cfg = [SAEConfig(2, 0.25, 5)]
    outs = {}
    for norm in (True, False):
        tr = TrainConfig(lr=1e-2, batch_size=32, normalize=norm)
        m1 = train_sweep(cfg, ArraySource(x), tr, seed=0, progress=False)[0]
        m2 = train_sweep(cfg, ArraySource(big), tr, seed=0, progress=False)[0]
        with torch.no_grad():
            z1, z2 = m1.sae.encode(torch.as_tensor(x)), m2.sae.encode(torch.as_tensor(big))
        outs[norm] = (z1, z2, m1, m2)
    z1, z2, m1, m2 = outs[True]
    assert torch.allclose(m1.sae.W_dec, m2.sae.W_dec, atol=1e-3)
    assert ((z1 > 0) == (z2 > 0)).float().mean() > 0.99
    z1, z2, m1, m2 = outs[False]
    assert not torch.allclose(m1.sae.W_dec, m2.sae.W_dec, atol=1e-2)


def test_position_and_magnitude_features():
    z = np.array([[0, 3.0, 0, 1.0, 2.0], [5.0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(position_features(z), [[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(magnitude_features(z, 3), [[3, 2, 1], [5, 0, 0]])


def _planted(rng, n, k=3, d_z=12):
    """Class 0 fires latents 0..k-1, class 1 fires k..2k-1 (position carries the class), with
    magnitudes from one distribution for both; plus a copy where both classes fire the same
    random latents but class 1 is 3x stronger (magnitude carries the class)."""
    y = np.array(["US", "UK"])[rng.integers(0, 2, n)]
    zp = np.zeros((n, d_z), np.float32)
    zm = np.zeros((n, d_z), np.float32)
    for i, lab in enumerate(y):
        mags = rng.uniform(1, 2, k)
        cols = np.arange(k) + (k if lab == "UK" else 0)
        zp[i, cols] = mags
        zm[i, rng.choice(d_z, k, replace=False)] = mags * (3.0 if lab == "UK" else 1.0)
    return zp, zm, y


def test_delta_f1_known_answers(rng):
    cfg = ClassifierConfig(max_iter=500)
    zp_tr, zm_tr, y_tr = _planted(rng, 200)
    zp_te, zm_te, y_te = _planted(rng, 100)
    # Position-coded: z and z_pos are perfect, z_mag holds no class information.
    r = delta_f1(zp_tr, y_tr, zp_te, y_te, 3, f1_ref=1.0, cfg=cfg)
    assert r.f1["z"] == 1.0 and r.f1["position"] == 1.0
    assert r.delta["position"] == 0.0 and r.f1["magnitude"] < 0.75
    # only the planted latents 0..5 can carry weight (the others are constant zero)
    used = set(np.flatnonzero(r.weights["z"]))
    assert used and used <= set(range(6))
    # Magnitude-coded: z_mag is perfect, positions are random.
    r = delta_f1(zm_tr, y_tr, zm_te, y_te, 3, f1_ref=0.9, cfg=cfg)
    assert r.f1["magnitude"] == 1.0 and r.delta["magnitude"] == pytest.approx(0.1)
    assert r.f1["position"] < 0.8
    # Constant features: the classifier can only predict one class. With 70 / 30 test
    # labels and the training majority "US", macro-F1 = (2·0.7/1.7 + 0) / 2.
    y_test = np.array(["US"] * 70 + ["UK"] * 30)
    y_train = np.array(["US"] * 60 + ["UK"] * 40)
    z0 = np.zeros((100, 6), np.float32)
    r = delta_f1(z0, y_train, z0, y_test, 2, f1_ref=0.95, cfg=cfg)
    expect = (2 * 0.7 / 1.7) / 2
    for f in ("z", "position", "magnitude"):
        assert r.f1[f] == pytest.approx(expect)
        assert r.delta[f] == pytest.approx(expect - 0.95)


def test_fit_score_matches_sklearn_pipeline(rng):
    x = rng.standard_normal((120, 5))
    y = np.where(x[:, 0] + 0.5 * rng.standard_normal(120) > 0, "a", "b")
    cfg = ClassifierConfig(C=0.5, max_iter=1000)
    ours = fit_score(x[:80], y[:80], x[80:], y[80:], cfg)
    sc = StandardScaler().fit(x[:80])
    clf = LogisticRegression(l1_ratio=1.0, solver="saga", C=0.5, max_iter=1000, random_state=0)
    clf.fit(sc.transform(x[:80]), y[:80])
    ref = f1_score(y[80:], clf.predict(sc.transform(x[80:])), average="macro")
    assert ours == pytest.approx(ref)
    assert ours > 0.7

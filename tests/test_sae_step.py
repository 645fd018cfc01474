"""The fast SAE training step equals the computation it replaced.

Reference (written out here as it was before): pre-activations (x/c - b_pre) W_encᵀ, AuxK as a
top-k over *all* latents with the live ones masked to -inf and a dense [batch, d_z] decode,
fired latents from the dense z, and torch's per-element Adam. The step under test computes
the pre-activations as (x/c) W_encᵀ - W_enc b_pre, AuxK over the dead latents' columns only,
fired latents from the top-k indices, and a fused (or multi-tensor) Adam. Same losses,
gradients, dead-latent counters and parameters to float tolerance, with AuxK active.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from codeclens.analyses.sae.model import TopKSAE, adam, auxk_loss, mse
from codeclens.analyses.sae.sweep import Member, SAEConfig, TrainConfig


def _old_auxk(sae, pre, residual, dead, aux_k):
    n_dead = int(dead.sum())
    if n_dead == 0 or aux_k <= 0:
        return pre.new_zeros(())
    masked = pre.masked_fill(~dead, float("-inf"))
    z_aux = TopKSAE._topk(masked, min(aux_k, n_dead))
    z_aux = torch.nan_to_num(z_aux, nan=0.0, neginf=0.0)
    e_hat = z_aux @ sae.W_dec.t()
    denom = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (e_hat - residual).pow(2).sum(-1).mean() / denom


def _old_step(m, opt, x):
    """The old training step on member ``m`` with optimiser ``opt``: (loss, gradients before the update)."""
    sae = m.sae
    pre = sae.pre_activations(x)
    z = sae._topk(pre, sae.k)
    u_hat = sae.decode(z)
    c = float(sae.scale)
    loss = mse(u_hat, x)
    total = loss / (c * c)
    fired = (z > 0).any(0)
    if m.aux_k > 0:
        dead = m.since_fired >= m.dead_after
        resid = (x - u_hat).detach() / c
        total = total + m.train.aux_coef * _old_auxk(sae, pre, resid, dead, m.aux_k)
    m.since_fired += x.shape[0]
    m.since_fired[fired] = 0
    opt.zero_grad(set_to_none=True)
    total.backward()
    sae.project_decoder_grad()
    grads = [p.grad.clone() for p in sae.parameters()]
    opt.step()
    sae.normalize_decoder()
    return float(loss.detach()), grads


def _member(q=4.0, s=0.25, d=12, seed=3, dead_samples=48, scale=1.7):
    rng = np.random.default_rng(seed)
    b_pre = rng.normal(size=d).astype(np.float32)
    train = TrainConfig(lr=3e-3, batch_size=32, dead_samples=dead_samples)
    return Member(SAEConfig(q, s, 1), d, b_pre, seed, train, 512, torch.device("cpu"), scale=scale)


def _batches(n, d, b=32, seed=0):
    rng = np.random.default_rng(seed)
    # a few directions carry most variance, so some latents stop firing and AuxK has work to do
    basis = rng.normal(size=(3, d))
    return [torch.as_tensor((rng.normal(size=(b, 3)) @ basis * 2 + 0.1 * rng.normal(size=(b, d))).astype(np.float32))
            for _ in range(n)]


def test_step_equals_old_computation_with_auxk():
    new = _member()
    old = copy.deepcopy(new)
    opt_old = torch.optim.Adam(old.sae.parameters(), lr=old.train.lr, eps=old.train.eps, foreach=False, fused=False)
    saw_dead = 0
    for i, x in enumerate(_batches(60, 12)):
        saw_dead = max(saw_dead, int((old.since_fired >= old.dead_after).sum()))
        loss_o, grads_old = _old_step(old, opt_old, x)

        # the new step, with its gradients captured just before the optimiser
        captured = {}
        orig = new.opt.step

        def spy(*a, **k):
            captured["g"] = [p.grad.clone() for p in new.sae.parameters()]
            return orig(*a, **k)

        new.opt.step = spy
        loss_n = new.step(x)
        new.opt.step = orig
        assert loss_n == pytest.approx(loss_o, rel=1e-5, abs=1e-6)
        for go, gn in zip(grads_old, captured["g"]):
            assert torch.allclose(go, gn, rtol=1e-4, atol=1e-6), i
        assert torch.equal(old.since_fired, new.since_fired), i
        for po, pn in zip(old.sae.parameters(), new.sae.parameters()):
            assert torch.allclose(po, pn, rtol=1e-4, atol=1e-5), i
    # AuxK was exercised: some latents were dead (and not all) during the run
    assert 0 < saw_dead < new.sae.shape.d_z


def test_auxk_over_dead_columns_equals_masked_all():
    rng = np.random.default_rng(1)
    sae = TopKSAE(_member(q=6, s=0.2, d=10).sae.shape, seed=5)
    x = torch.as_tensor(rng.normal(size=(40, 10)).astype(np.float32))
    resid = torch.as_tensor(rng.normal(size=(40, 10)).astype(np.float32))
    for n_dead, aux_k in ((0, 5), (3, 5), (17, 5), (60, 5), (20, 0)):
        dead = torch.zeros(60, dtype=torch.bool)
        dead[torch.as_tensor(rng.permutation(60)[:n_dead], dtype=torch.long)] = True
        losses, grads = [], []
        for f in (_old_auxk, auxk_loss):
            sae.zero_grad(set_to_none=True)
            pre = sae.pre_activations(x)
            loss = f(sae, pre, resid, dead, aux_k)
            losses.append(float(loss.detach()))
            if loss.requires_grad:
                loss.backward()
            grads.append([None if p.grad is None else p.grad.clone() for p in sae.parameters()])
        assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-7), (n_dead, aux_k)
        for go, gn in zip(*grads):
            if go is None or gn is None:
                assert (go is None or not go.any()) and (gn is None or not gn.any())
            else:
                assert torch.allclose(go, gn, rtol=1e-4, atol=1e-6), (n_dead, aux_k)


def test_adam_matches_per_element_adam():
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(7, 5))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ref = torch.optim.Adam([p1], lr=1e-2, eps=1e-8, foreach=False, fused=False)
    fast = adam([p2], 1e-2, 1e-8)
    assert fast.defaults.get("fused") or fast.defaults.get("foreach")
    for i in range(50):
        g = torch.randn(7, 5) * (1 + i % 3)
        for p, o in ((p1, ref), (p2, fast)):
            o.zero_grad()
            p.grad = g.clone()
            o.step()
    assert torch.allclose(p1, p2, rtol=1e-5, atol=1e-6)


def test_classifier_without_constant_columns_equals_with_them():
    """L1Model drops columns constant on its training rows; the same model as fitting on all
    columns: same predictions, same coefficients on the kept columns, exact 0 on the dropped ones."""
    from sklearn.preprocessing import StandardScaler

    from codeclens.analyses.sae.classify import ClassifierConfig, L1Model, l1_logistic

    rng = np.random.default_rng(4)
    n, d = 120, 40
    x = np.zeros((n, d), np.float32)
    live = rng.choice(d, 12, replace=False)
    x[:, live] = np.maximum(rng.normal(size=(n, 12)), 0)
    x[:, 3 if 3 not in live else 4] = 2.5  # a constant non-zero column too
    y = np.where(x[:, live[:3]].sum(1) + 0.3 * rng.normal(size=n) > 1.0, "a", "b").astype(object)
    x_test = np.maximum(rng.normal(size=(200, d)), 0).astype(np.float32)  # fires on "dead" columns too
    for seed in (0, 1):
        cfg = ClassifierConfig(C=0.5, max_iter=2000, seed=seed)
        m = L1Model(x, y, cfg)
        assert len(m.keep) == 12
        sc = StandardScaler().fit(x)
        ref = l1_logistic(cfg.C, cfg.max_iter, cfg.tol, cfg.seed).fit(sc.transform(x), y)
        assert np.array_equal(m.predict(x_test), ref.predict(sc.transform(x_test)))
        w_ref = np.abs(ref.coef_).max(0)
        assert np.allclose(m.weights, w_ref, rtol=1e-6, atol=1e-9)
        assert not w_ref[np.setdiff1d(np.arange(d), live)].any()
    # all columns constant: intercept only, whatever saga makes of it, as the fit on all columns
    xc = np.ones((30, 5), np.float32)
    yc = np.array(["a"] * 20 + ["b"] * 10, dtype=object)
    m = L1Model(xc, yc)
    ref = l1_logistic(1.0, 3000, 1e-4, 0).fit(StandardScaler().fit_transform(xc), yc)
    assert np.allclose(m.clf.intercept_, ref.intercept_)
    assert np.array_equal(m.predict(x_test[:4, :5]), ref.predict(x_test[:4, :5] - 1))


def test_normalize_decoder_equals_column_norm():
    sae = TopKSAE(_member(q=20, s=0.05, d=16).sae.shape, seed=2)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(sae.W_dec.shape[1]) * 5 + 0.1)
    ref = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=0, keepdim=True)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.detach(), ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(sae.W_dec.detach().norm(dim=0), torch.ones(sae.W_dec.shape[1]), atol=1e-6)

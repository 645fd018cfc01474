"""TopK SAE: sparsity, unit-norm decoder, geometric median, dictionary recovery (known answers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codeclens.analyses.sae.metrics import dead_fraction, fvu, grouped_density, l0, latent_density
from codeclens.analyses.sae.model import SAEShape, TopKSAE, geometric_median, k_of, latent_size
from codeclens.analyses.sae.sweep import ArraySource, Member, SAEConfig, TrainConfig, train_sweep


pytestmark = pytest.mark.usefixtures("one_thread")  # the test machine is shared: avoid spin-wait contention


def sparse_dictionary_data(seed=0, n=4000, d=32, m=64, k=3):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((d, m))
    D /= np.linalg.norm(D, axis=0)
    S = np.zeros((n, m))
    for i in range(n):
        S[i, rng.choice(m, k, replace=False)] = rng.uniform(0.5, 1.5, k)
    return (S @ D.T).astype(np.float32), D


def test_k_and_latent_size():
    assert k_of(0.1, 128) == 13 and k_of(0.05, 1024) == 52 and k_of(0.5, 128) == 64
    assert k_of(0.1, 30) == 3  # 0.1*30 is 3.0000000000000004 in floating point
    assert latent_size(20, 1024) == 20480 and latent_size(2, 128) == 256
    with pytest.raises(ValueError, match="k must be"):
        SAEShape(8, 4, 5)


def test_codes_have_at_most_k_nonzeros_and_are_the_top_k(rng):
    sae = TopKSAE(SAEShape(16, 64, 5), seed=1)
    x = torch.as_tensor(rng.standard_normal((200, 16)), dtype=torch.float32)
    z = sae.encode(x)
    assert ((z != 0).sum(1) <= 5).all() and (z >= 0).all()
    pre = sae.pre_activations(x)
    # Every kept value is one of the 5 largest pre-activations, unchanged.
    kth = pre.topk(5, dim=1).values[:, -1:]
    nz = z != 0
    assert torch.equal(z[nz], pre[nz]) and (pre[nz] >= kth.expand_as(pre)[nz]).all()
    u_hat = sae.decode(z)
    assert torch.allclose(u_hat, z @ sae.W_dec.t() + sae.b_pre)


def test_decoder_unit_norm_after_every_step_and_parallel_gradient_removed(rng):
    x = rng.standard_normal((256, 12)).astype(np.float32) * 3 + 1
    m = Member(SAEConfig(4, 0.25, 1), 12, np.zeros(12, np.float32), 0, TrainConfig(lr=1e-2), 256, torch.device("cpu"))
    for i in range(20):
        xb = torch.as_tensor(x[(i * 64) % 256:][:64])
        w_old = m.sae.W_dec.detach().clone()
        m.step(xb)
        norms = m.sae.W_dec.detach().norm(dim=0)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        # the gradient used by the step had no component along the (old) unit columns
        g = m.sae.W_dec.grad
        assert torch.allclose((g * w_old).sum(0), torch.zeros(w_old.shape[1]), atol=1e-5)
        assert not torch.equal(w_old, m.sae.W_dec.detach())
    sae = TopKSAE(SAEShape(6, 10, 3), seed=0)
    sae.W_dec.grad = torch.randn(6, 10)
    sae.project_decoder_grad()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(0), torch.zeros(10), atol=1e-6)


def test_geometric_median_known_answers():
    # On a line the geometric median is the ordinary median, whatever the outlier.
    pts = np.zeros((5, 3))
    pts[:, 0] = [0, 1, 2, 3, 100]
    np.testing.assert_allclose(geometric_median(pts), [2, 0, 0], atol=1e-3)
    # Vertices of a square: the centre.
    sq = np.array([[0, 0], [0, 2], [2, 0], [2, 2]], float)
    np.testing.assert_allclose(geometric_median(sq), [1, 1], atol=1e-5)
    # b_pre starts there
    sae = TopKSAE(SAEShape(2, 4, 1), b_pre=geometric_median(sq))
    np.testing.assert_allclose(sae.b_pre.detach().numpy(), [1, 1], atol=1e-5)


def test_recovers_planted_sparse_dictionary():
    """x = D s with s 3-sparse over 64 unit atoms in R^32: every atom should have a decoder
    column pointing its way (mean best |cosine| >= 0.9)."""
    x, D = sparse_dictionary_data()
    [m] = train_sweep([SAEConfig(4, 3 / 32, 30)], ArraySource(x),
                      TrainConfig(lr=1e-3, eps=1e-8, batch_size=64, aux_k=16), seed=0, progress=False)
    W = m.sae.W_dec.detach().numpy()
    best = np.abs(D.T @ W).max(1)
    assert best.mean() >= 0.9, best.mean()
    with torch.no_grad():
        u_hat, z = m.sae(torch.as_tensor(x))
    assert fvu(x, u_hat.numpy()) < 0.2
    assert l0(z.numpy()) <= 3
    # a random decoder does not match the atoms: the check can fail
    rnd = TopKSAE(SAEShape(32, 128, 3), seed=5).W_dec.detach().numpy()
    assert np.abs(D.T @ rnd).max(1).mean() < 0.75


def test_metrics_known_answers():
    z = np.zeros((4, 8))
    z[:, 0] = 1.0  # latent 0 always on
    z[:2, 1] = 2.0  # latent 1 half the time
    np.testing.assert_allclose(latent_density(z), [1, 0.5, 0, 0, 0, 0, 0, 0])
    assert dead_fraction(z) == 6 / 8
    assert l0(z) == 1.5
    np.testing.assert_allclose(grouped_density(z, 4), [0.75, 0, 0, 0])
    x = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert fvu(x, x) == 0.0
    assert fvu(x, np.repeat(x.mean(0, keepdims=True), 2, 0)) == pytest.approx(1.0)

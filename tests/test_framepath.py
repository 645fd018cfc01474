"""The frame path's hand-written objective (probes/framepath.py) against autograd through the weighted
cross-entropy it replaced, and the fits it drives against the autograd fits."""

from __future__ import annotations

import pytest
import torch

from codeclens.analyses.probes.framepath import frame_objective
from codeclens.analyses.probes.linear import _nll, fit_logistic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(seed=0, P=3, n=257, r=5, C=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(P, n, r, generator=g, dtype=dtype)
    y = (z[..., :C] + torch.randn(P, n, C, generator=g, dtype=dtype)).argmax(-1)
    y[:, -9:] = -1  # padding rows count for nothing
    cw = torch.rand(P, C, generator=g, dtype=dtype) + 0.5
    return g, z, y, cw


def _chunks(z, y, m):
    return [(z[:, a:a + m], y[:, a:a + m]) for a in range(0, z.shape[1], m)]


@pytest.mark.parametrize("idx", [[0, 1, 2, 3, 4, 5], [0, 3, 4], [5]])
def test_frame_objective_equals_autograd(idx):
    """Loss and gradient of a subset of the P x G problems (as after some have finished), summed over chunks,
    equal autograd through linear._nll of the whole rows, to float64 rounding."""
    P, r, C, G = 3, 5, 4, 2
    g, z, y, cw = _problem(P=P, r=r, C=C)
    wsum = (torch.gather(cw, 1, y.clamp(min=0)) * (y >= 0)).sum(1)
    lam = torch.tensor([1e-3, 1e-1], dtype=torch.float64).repeat(P)
    pof = torch.arange(P).repeat_interleave(G)
    idx = torch.tensor(idx)
    x = torch.randn(len(idx), r * C + C, generator=g, dtype=torch.float64, requires_grad=True)
    loss, grad = frame_objective(_chunks(z, y, 60), x.detach(), idx, pof, lam, cw, wsum, r, C)
    p = pof[idx]
    W, b = x[:, : r * C].reshape(len(idx), 1, r, C), x[:, r * C:].reshape(len(idx), 1, C)
    want = _nll(z[p], y[p], W, b, cw[p])[:, 0] / wsum[p] + (lam[idx, None] * x[:, : r * C] ** 2).sum(1)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    only = frame_objective(_chunks(z, y, 60), x.detach(), idx, pof, lam, cw, wsum, r, C, grad=False)
    torch.testing.assert_close(only, loss, rtol=0, atol=0)


def test_float32_objective_equals_autograd_to_float_tolerance():
    P, r, C, G = 2, 6, 5, 3
    g, z, y, cw = _problem(1, P=P, r=r, C=C, dtype=torch.float32)
    wsum = (torch.gather(cw, 1, y.clamp(min=0)) * (y >= 0)).sum(1)
    lam = torch.tensor([1e-4, 1e-3, 1e-2]).repeat(P)
    pof = torch.arange(P).repeat_interleave(G)
    idx = torch.arange(P * G)
    x = torch.randn(P * G, r * C + C, generator=g)
    loss, grad = frame_objective(_chunks(z, y, 100), x, idx, pof, lam, cw, wsum, r, C)
    x64 = x.double().requires_grad_(True)
    W, b = x64[:, : r * C].reshape(-1, 1, r, C), x64[:, r * C:].reshape(-1, 1, C)
    want = (_nll(z.double()[pof], y[pof], W, b, cw.double()[pof])[:, 0] / wsum.double()[pof]
            + (lam.double()[:, None] * x64[:, : r * C] ** 2).sum(1))
    (want_grad,) = torch.autograd.grad(want.sum(), x64)
    torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), want_grad, rtol=1e-4, atol=1e-5)


def test_fit_with_the_hand_gradient_equals_the_autograd_fit():
    """fit_logistic on streamed frame chunks (float32, early stopping on val) with the hand-written objective
    and with autograd (closed_form=False): the same kept weights to float tolerance, every strength."""
    P, r, C = 2, 5, 4
    _, z, y, cw = _problem(2, P=P, n=900, r=r, C=C, dtype=torch.float32)
    train, val = _chunks(z[:, :600], y[:, :600], 128), _chunks(z[:, 600:], y[:, 600:], 128)
    args = (lambda: iter(train), lambda: iter(val), P, r, C, torch.ones(P, C), (1e-4, 1e-2, 1e-1))
    hand = fit_logistic(*args)
    auto = fit_logistic(*args, closed_form=False)
    torch.testing.assert_close(hand.W, auto.W, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(hand.b, auto.b, atol=2e-3, rtol=1e-2)


def test_chunk_from_one_embedding_bag_equals_k_gathers(tmp_path):
    """A cumulative:k chunk made by one embedding_bag over the stacked folded tables equals the sum of the k
    folded tables' rows minus the folded mean, computed in float64 from the raw tables (the k gathers and
    additions it replaced, exactly), to float32 rounding."""
    import numpy as np

    from codeclens.analyses.probes.config import ProbeConfig
    from codeclens.analyses.probes.data import gather_task
    from codeclens.analyses.probes.synthetic import planted_store
    from codeclens.analyses.probes.torch_backend import _RepFeatures
    from codeclens.store import Repr, Store

    store = Store(planted_store(tmp_path / "s", n_utt=60, n_speakers=12, n_layers=4, codebook_size=16, dim=12))
    td = gather_task(store, "phone", ProbeConfig(task=("phone",), cv="off"))
    for k in (1, 3, 4):
        f = _RepFeatures(store, Repr("cumulative", k), td)
        rows = np.sort(np.random.default_rng(k).choice(store.n_frames, 500, replace=False))
        codes = np.asarray(store.codes[rows][:, :k], np.int64)
        proj, mean = f.whitener.proj.astype(np.float64), f.whitener.mean.astype(np.float64)
        want = sum(np.asarray(store.tables[l], np.float64)[codes[:, l]] @ proj for l in range(k)) - mean @ proj
        got = f.z_t(rows).numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))


def test_loss_of_confident_wrong_rows_is_exact():
    """Rows whose label's softmax probability underflows float32 (logit gaps of ~100) still get their exact
    loss (from log_softmax), not inf."""
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # [1, 3, 2]
    y = torch.tensor([[1, 0, 1]])
    W = torch.tensor([[120.0, 0.0], [0.0, 0.5]])  # row 0: logit gap 120 against its label
    x = torch.cat([W.reshape(-1), torch.zeros(2)])[None]
    one = torch.zeros(1, dtype=torch.long)
    loss = frame_objective([(z, y)], x, one, one, torch.zeros(1), torch.ones(1, 2), torch.tensor([3.0]), 2, 2,
                           grad=False)
    lg = torch.einsum("mr,rc->mc", z[0].double(), W.double())
    want = -torch.log_softmax(lg, -1).gather(-1, y[0, :, None]).sum() / 3
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, want[None], rtol=1e-6, atol=0)

"""Count-table logistic fits along the L2 path (linear._fit_table_path) against the old road (every strength
from zero, path=False) and a tightly converged float64 optimum, on planted count tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codeclens.analyses.probes.linear import BatchedLBFGS, _table_objective, fit_logistic, logits_of
from codeclens.analyses.probes.torch_backend import _choose, _f1

pytestmark = pytest.mark.usefixtures("one_torch_thread")
L2 = (1e-5, 1e-4, 1e-3, 1e-2)


def planted(seed: int, U=60, r=6, C=5, n=40, scale=1.5):
    """Vectors Z [1, U, r], train / val count tables drawn from softmax(Z W* + b*)."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(1, U, r, generator=g, dtype=torch.float64)
    W = scale * torch.randn(r, C, generator=g, dtype=torch.float64)
    p = torch.softmax(Z[0] @ W, -1)
    T = torch.stack([torch.bincount(torch.multinomial(p[u], n, True, generator=g), minlength=C) for u in range(U)])
    Tv = torch.stack([torch.bincount(torch.multinomial(p[u], n // 4, True, generator=g), minlength=C) for u in range(U)])
    return Z, T[None].double(), Tv[None].double()


def fit(Z, T, Tv, path: bool, tol=1e-6):
    P, U, r = Z.shape
    C = T.shape[-1]
    return fit_logistic(lambda: iter([(Z, T)]), (lambda: iter([(Z, Tv)])) if Tv is not None else None, P, r, C,
                        torch.ones(P, C, dtype=Z.dtype), L2, tol=tol, path=path)


def val_f1(Z, Tv, f):
    """Val macro-F1 [P, G] of every strength, as _lookup_classify scores it."""
    pred = logits_of(Z, f.W, f.b).argmax(-1)
    P, G, U = pred.shape
    C = Tv.shape[-1]
    hit = Tv[:, None].expand(P, G, U, C).gather(-1, pred[..., None]).squeeze(-1)
    zero = torch.zeros((P, G, C), dtype=torch.float64)
    tp = zero.clone().scatter_add_(2, pred, hit)
    predn = zero.scatter_add_(2, pred, Tv.sum(-1)[:, None, :].expand(P, G, U).contiguous())
    return _f1(tp, predn - tp, Tv.sum(1)[:, None, :] - tp)


def optimum(Z, T, l2: float):
    """Plain L-BFGS on the closed-form objective from zero to a gradient of 1e-10."""
    P, U, r = Z.shape
    C = T.shape[-1]
    a = T.sum(-1)
    f = lambda x, idx: _table_objective((Z, T, a), a.sum(-1), torch.tensor([l2], dtype=Z.dtype), torch.zeros(1, dtype=torch.long), x, idx, r, C)
    opt = BatchedLBFGS(f, torch.zeros(1, r * C + C, dtype=Z.dtype), tol=1e-10, ftol=0.0)
    for _ in range(3000):
        if not opt.step():
            break
    return opt.x[0, : r * C].reshape(r, C), opt.x[0, r * C :]


@pytest.mark.parametrize("seed", [0, 1])
def test_path_reaches_the_float64_optimum_of_every_strength(seed):
    """Without val (no early stop, no stability stop) warm starts end at the optimum a cold fit reaches."""
    Z, T, _ = planted(seed)
    f = fit(Z, T, None, path=True, tol=1e-9)
    for g, l2 in enumerate(L2):
        W, b = optimum(Z, T, l2)
        # Bias and weights up to the softmax's shift invariance in the bias.
        torch.testing.assert_close(f.W[0, g], W, atol=2e-4, rtol=0)
        torch.testing.assert_close(f.b[0, g] - f.b[0, g].mean(), b - b.mean(), atol=2e-4, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_path_chooses_the_same_strength_as_the_old_road(seed):
    """Planted task tables with val: the strength chosen on val macro-F1 and its score are the old road's."""
    Z, T, Tv = planted(seed, n=200)
    old, new = fit(Z, T, Tv, path=False), fit(Z, T, Tv, path=True)
    fo, fn = val_f1(Z, Tv, old), val_f1(Z, Tv, new)
    go, gn = _choose(fo, len(L2)), _choose(fn, len(L2))
    np.testing.assert_array_equal(go, gn)
    assert abs(float(fo[0, go[0]] - fn[0, gn[0]])) < 1e-3
    # The chosen fit predicts as the old one on (almost) every vector.
    po = logits_of(Z, old.W, old.b).argmax(-1)[0, go[0]]
    pn = logits_of(Z, new.W, new.b).argmax(-1)[0, gn[0]]
    assert float((po == pn).double().mean()) >= 0.98


def test_perfect_probe_skips_weaker_strengths_and_keeps_the_choice():
    """A code-control-like table (every vector one label, separable): once a strength predicts every val row
    right, the weaker ones get its solution; the choice (ties to the stronger) is the old road's."""
    g = torch.Generator().manual_seed(3)
    U, r, C = 16, 12, 3  # fewer vectors than dimensions: separable
    Z = torch.randn(1, U, r, generator=g, dtype=torch.float64)
    lab = torch.randint(0, C, (U,), generator=g)
    T = torch.zeros(1, U, C, dtype=torch.float64)
    T[0, torch.arange(U), lab] = 50.0
    Tv = T / 5
    old, new = fit(Z, T, Tv, path=False), fit(Z, T, Tv, path=True)
    fo, fn = val_f1(Z, Tv, old), val_f1(Z, Tv, new)
    perfect = [k for k in range(len(L2)) if float(fn[0, k]) == 1.0]
    assert perfect, fn  # the planted table is separable: some strength memorises it
    strongest = max(perfect, key=lambda k: L2[k])
    for k in range(len(L2)):
        if L2[k] < L2[strongest]:
            torch.testing.assert_close(new.W[0, k], new.W[0, strongest], atol=0, rtol=0)
    assert _choose(fn, len(L2))[0] == strongest == _choose(fo, len(L2))[0]


def test_val_early_stopped_fits_take_the_old_road():
    """Val labels contradicting train: validation stops the weak strengths' fits early, so their kept iterate
    depends on the road; the path refits those strengths from zero and returns what the old road returns."""
    Z, T, Tv = planted(4, n=100)
    Tv = Tv.roll(1, -1)  # val labels shifted by one class: the val loss rises as the fit improves
    old, new = fit(Z, T, Tv, path=False), fit(Z, T, Tv, path=True)
    # The weak strengths overfit and are stopped by validation: the old road's iterate, to rounding. The
    # strong ones converge before validation could stop them: the same predictions on every vector.
    torch.testing.assert_close(new.W[:, :2], old.W[:, :2], atol=1e-6, rtol=0)
    torch.testing.assert_close(new.val_loss[:, :2], old.val_loss[:, :2], atol=1e-9, rtol=0)
    np.testing.assert_array_equal(logits_of(Z, new.W, new.b).argmax(-1), logits_of(Z, old.W, old.b).argmax(-1))


def test_lbfgs_keeps_aux_of_the_accepted_iterate():
    """``aux`` returned by the objective is the one of the iterate L-BFGS accepted (line search included)."""
    Z, T, Tv = planted(6)
    r, C = Z.shape[2], T.shape[2]
    a, av = T.sum(-1), Tv.sum(-1)
    val = (Tv, Tv.sum((1, 2)), av)
    lam, pof = torch.tensor([1e-4, 1e-2], dtype=torch.float64), torch.zeros(2, dtype=torch.long)
    f = lambda x, idx: _table_objective((Z, T, a), a.sum(-1), lam, pof, x, idx, r, C, val)
    opt = BatchedLBFGS(f, torch.zeros(2, r * C + C, dtype=torch.float64))
    for _ in range(7):
        opt.step()
        loss, _, (vl, pred) = f(opt.x, torch.arange(2))
        torch.testing.assert_close(opt.loss, loss)
        torch.testing.assert_close(opt.aux[0], vl)
        torch.testing.assert_close(opt.aux[1], pred)

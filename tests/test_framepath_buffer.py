"""frame_objective with one reused logits buffer and the softmax written over it equals, bit for bit,
the computation it replaced (written out below as it was: a fresh logits tensor and softmax per
chunk), with chunks of unequal sizes, probes with different numbers of active problems, rows whose
label probability underflows, and the loss-only mode."""

from __future__ import annotations

import pytest
import torch

from codeclens.analyses.probes.framepath import _softmax_, frame_objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _old_groups(pof: torch.Tensor, idx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(probe, positions in ``idx`` of its problems) for every probe that has one."""
    p = pof[idx]
    return [(int(q), torch.nonzero(p == q).flatten()) for q in torch.unique(p).tolist()]


def _old_frame_objective(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, idx: torch.Tensor,
                    pof: torch.Tensor, lam: torch.Tensor, cw: torch.Tensor, wsum: torch.Tensor, r: int, C: int,
                    grad: bool = True):
    """frame_objective as it was: a fresh logits tensor and a fresh softmax per chunk."""
    k, nW = len(idx), r * C
    groups = _old_groups(pof, idx)
    # Per probe: its problems' weights side by side, [r, kp * C], and biases [kp * C].
    Ws = [x[pos, :nW].reshape(len(pos), r, C).permute(1, 0, 2).reshape(r, -1) for _, pos in groups]
    bs = [x[pos, nW:].reshape(-1) for _, pos in groups]
    total = torch.zeros(k, dtype=torch.float64, device=x.device)
    gW = [torch.zeros_like(W) for W in Ws] if grad else None
    gb = [torch.zeros_like(b) for b in bs] if grad else None
    for z, y in chunks:
        for j, (p, pos) in enumerate(groups):
            kp, zp, yp = len(pos), z[p], y[p]
            m = zp.shape[0]
            if not m:
                continue
            yc = yp.clamp(min=0).long()
            w = cw[p][yc] * (yp >= 0)  # [m]
            lg = torch.addmm(bs[j], zp, Ws[j]).view(m, kp, C)
            # One fused softmax (several times faster than logsumexp and a separate exp on CPU); the loss
            # needs only each row's -log p of its label. Where that probability underflows (a logit gap
            # beyond ~70, e.g. a long trial step), those rows' losses come from log_softmax instead.
            sm = torch.softmax(lg, -1)
            at = yc.view(m, 1, 1).expand(m, kp, 1)
            py = sm.gather(-1, at).squeeze(-1)  # [m, kp]
            nl = -torch.log(py)
            tiny = py < 1e-30
            if bool(tiny.any()):
                rows = torch.nonzero(tiny.any(1)).flatten()
                nl[rows] = -torch.log_softmax(lg[rows], -1).gather(-1, at[rows]).squeeze(-1)
            # per-row losses summed in float64: the objective's relative decrease is read to 1e-7
            total[pos] += (nl * w[:, None]).double().sum(0)
            if not grad:
                continue
            G = sm.mul_(w.view(m, 1, 1))  # w_i softmax_i
            G.scatter_add_(-1, at, -w.view(m, 1, 1).expand(m, kp, 1))
            G2 = G.view(m, kp * C)
            gW[j].addmm_(zp.t(), G2)
            gb[j] += G2.sum(0)
    n = wsum[pof[idx]].to(x.dtype)
    Wd = x[:, :nW]
    loss = total / n.double() + (lam[idx, None] * Wd * Wd).sum(1).double()
    if not grad:
        return loss
    g = torch.empty_like(x)
    for j, (_, pos) in enumerate(groups):
        kp = len(pos)
        g[pos, :nW] = gW[j].view(r, kp, C).permute(1, 0, 2).reshape(kp, nW)
        g[pos, nW:] = gb[j].view(kp, C)
    g /= n[:, None]
    g[:, :nW].addcmul_(Wd, lam[idx, None], value=2.0)
    return loss, g


def _case(dtype, seed=0, P=3, n=1001, r=7, C=5, G=3):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(P, n, r, generator=g, dtype=dtype)
    y = torch.randint(0, C, (P, n), generator=g)
    y[:, -11:] = -1
    cw = (torch.rand(P, C, generator=g) + 0.5).to(dtype)
    wsum = (torch.gather(cw, 1, y.clamp(min=0)) * (y >= 0)).sum(1)
    lam = torch.tensor([1e-4, 1e-3, 1e-2], dtype=dtype)[:G].repeat(P)
    pof = torch.arange(P).repeat_interleave(G)
    x = torch.randn(P * G, r * C + C, generator=g, dtype=dtype)
    x[:2, :r * C] *= 60  # logit gaps past float32's underflow of the label probability on some rows
    return z, y, cw, wsum, lam, pof, x, r, C


def _chunks(z, y, m):
    return [(z[:, a:a + m], y[:, a:a + m]) for a in range(0, z.shape[1], m)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("idx", [None, [0, 1, 4, 7, 8], [5]])
@pytest.mark.parametrize("m", [97, 1001, 4096])
def test_equals_the_old_objective_bit_for_bit(dtype, idx, m):
    z, y, cw, wsum, lam, pof, x, r, C = _case(dtype)
    idx = torch.arange(len(x)) if idx is None else torch.tensor(idx)
    xs = x[idx]
    for grad in (True, False):
        new = frame_objective(_chunks(z, y, m), xs, idx, pof, lam, cw, wsum, r, C, grad=grad)
        old = _old_frame_objective(_chunks(z, y, m), xs, idx, pof, lam, cw, wsum, r, C, grad=grad)
        for a, b in zip(new if grad else (new,), old if grad else (old,)):
            assert torch.equal(a, b)
    sm = torch.softmax(xs.view(len(xs), -1, C) * 3, -1)
    assert torch.equal(_softmax_((xs.view(len(xs), -1, C) * 3).contiguous()), sm)


def test_case_has_underflowing_rows():
    z, y, cw, wsum, lam, pof, x, r, C = _case(torch.float32)
    lg = torch.einsum("mr,rc->mc", z[0], x[0, :r * C].view(r, C)) + x[0, r * C:]
    py = torch.softmax(lg, -1).gather(-1, y[0].clamp(min=0)[:, None])
    assert bool((py < 1e-30).any())  # the log_softmax branch is exercised


def test_validation_loss_and_logits_equal_the_old_ones():
    """linear._nll without autograd (log-softmax over the logits, bias added in place) and logits_of equal
    the old out-of-place computation bit for bit; with autograd, _nll still differentiates."""
    from codeclens.analyses.probes.linear import _nll, logits_of

    z, y, cw, _, _, _, x, r, C = _case(torch.float32, P=2, G=3)
    W, b = x[:, : r * C].reshape(2, 3, r, C), x[:, r * C:].reshape(2, 3, C)
    old_logits = torch.einsum("pmr,pgrc->pgmc", z, W) + b[:, :, None, :]
    lp = torch.log_softmax(old_logits, -1)
    yc = y.clamp(min=0)
    w = torch.gather(cw, 1, yc) * (y >= 0)
    old = -(lp.gather(-1, yc[:, None, :, None].expand(-1, 3, -1, 1)).squeeze(-1) * w[:, None]).sum(-1)
    with torch.no_grad():
        assert torch.equal(logits_of(z, W, b), old_logits)
        assert torch.equal(_nll(z, y, W, b, cw), old)
    Wg = W.clone().requires_grad_(True)
    loss = _nll(z, y, Wg, b, cw)
    assert torch.equal(loss.detach(), old)
    (g,) = torch.autograd.grad(loss.sum(), Wg)
    assert torch.isfinite(g).all()

"""Loss and gradient of frame-chunk logistic problems by hand (no autograd graph).

A frame fit evaluates many (probe, strength) problems on the same chunks of whitened
frames. Autograd built one graph per chunk and evaluation and copied each chunk once
per problem (``z[pof[idx]]``); here the problems of one probe share its chunk: their
weights are laid side by side (``[r, k_p * C]``), so a chunk costs one matrix product
forward (logits of every active strength at once) and one back (the weight gradient),
and the softmax gradient ``w_i (softmax_i - onehot_i)`` is formed in place in the
logits' memory.

Memory: one logits buffer per evaluation, reused by every chunk and probe, the softmax written over
the logits. A fresh logits tensor and a fresh softmax per chunk (about CHUNK_BYTES each) were
carved from glibc's heap (just under its 32 MB mmap ceiling) at slightly different sizes, chunk after
chunk; the heap fragmented and a 2 M-frame ``cumulative:8`` run's resident set crept by ~0.3 GB during
the speaker task's selection alone.

Objective of problem j (probe p, strength lam_j), as :func:`linear.fit_logistic`:
(1/W_p) sum_i w_i CE_i + lam_j |W_j|^2, with w_i the class weight of row i's label
(0 for padding, label -1) and the bias unpenalised.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


def _groups(pof: torch.Tensor, idx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(probe, positions in ``idx`` of its problems) for every probe that has one."""
    p = pof[idx]
    return [(int(q), torch.nonzero(p == q).flatten()) for q in torch.unique(p).tolist()]


def _room(buf: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    """``buf``, or a larger flat buffer when it holds fewer than ``n`` elements."""
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, dtype=like.dtype, device=like.device)
    return buf


def _softmax_(lg: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension written over ``lg`` (contiguous); the values of torch.softmax
    (tests/test_framepath.py checks they are equal)."""
    if not lg.is_contiguous():
        raise ValueError("the in-place softmax needs contiguous rows")
    return torch.ops.aten._softmax.out(lg, -1, False, out=lg)


def frame_objective(chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, idx: torch.Tensor,
                    pof: torch.Tensor, lam: torch.Tensor, cw: torch.Tensor, wsum: torch.Tensor, r: int, C: int,
                    grad: bool = True, slot: Sequence[int] | None = None):
    """``(loss [k] float64, grad [k, r*C + C])`` of problems ``idx`` at ``x [k, r*C + C]`` (W flattened [r, C],
    then b), summed over ``chunks`` of ``(Z [P, m, r], labels [P, m])``. ``pof``: probe of every problem,
    ``lam``: its L2 strength, ``cw [P, C]``: class weights, ``wsum [P]``: each probe's total row weight.
    ``grad=False``: the loss only (validation). ``slot``: the row of ``Z`` each probe reads (default: its
    own), so probes of one representation (a task and its control) share one copy of its frames."""
    k, nW = len(idx), r * C
    groups = _groups(pof, idx)
    # Per probe: its problems' weights side by side, [r, kp * C], and biases [kp * C].
    Ws = [x[pos, :nW].reshape(len(pos), r, C).permute(1, 0, 2).reshape(r, -1) for _, pos in groups]
    bs = [x[pos, nW:].reshape(-1) for _, pos in groups]
    total = torch.zeros(k, dtype=torch.float64, device=x.device)
    gW = [torch.zeros_like(W) for W in Ws] if grad else None
    gb = [torch.zeros_like(b) for b in bs] if grad else None
    buf = None
    for z, y in chunks:
        for j, (p, pos) in enumerate(groups):
            kp, zp, yp = len(pos), z[p if slot is None else slot[p]], y[p]
            m = zp.shape[0]
            if not m:
                continue
            yc = yp.clamp(min=0).long()
            w = cw[p][yc] * (yp >= 0)  # [m]
            buf = _room(buf, m * kp * C, x)
            lg = torch.addmm(bs[j], zp, Ws[j], out=buf[: m * kp * C].view(m, kp * C)).view(m, kp, C)
            # One fused softmax (several times faster than logsumexp and a separate exp on CPU), written
            # over the logits; the loss needs only each row's -log p of its label. Where that probability
            # underflows (a logit gap beyond ~70, e.g. a long trial step), those rows' losses come from
            # log_softmax of their logits, formed again from their rows.
            sm = _softmax_(lg)
            at = yc.view(m, 1, 1).expand(m, kp, 1)
            py = sm.gather(-1, at).squeeze(-1)  # [m, kp]
            nl = -torch.log(py)
            tiny = py < 1e-30
            if bool(tiny.any()):
                rows = torch.nonzero(tiny.any(1)).flatten()
                lr = torch.addmm(bs[j], zp[rows], Ws[j]).view(len(rows), kp, C)
                nl[rows] = -torch.log_softmax(lr, -1).gather(-1, at[rows]).squeeze(-1)
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

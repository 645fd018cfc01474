"""Batched linear probes in torch on whitened features.

Every probe of a group (stores x representations x controls, padded to one
feature width) and every L2 strength is fitted in one tensor program:
weights are ``[P, G, r, C]`` for P probes and G strengths. Whitened features
make the problems well conditioned, so one shared L-BFGS (or, with L1, a
proximal gradient whose step is known from the whitened second moment)
converges in a few dozen iterations.

A batch source is a callable returning an iterator of ``(Z, target)`` with
``Z [P, m, r]`` and ``target`` either a count table ``[P, m, C]`` (the
code-lookup path: row m is a distinct vector) or labels ``[P, m]`` (frames;
-1 marks padding). Sources may stream chunks from disk; a full pass is one
exact loss/gradient evaluation.

Objective of probe p at strength g: (1/W_p) sum_i w_i CE_i + l2_g |W|^2 (+ l1 |W|_1),
with w_i the class weight of row i (1 without balancing), bias unpenalised.
Ridge: (1/N) sum_i (y_i - z_i.w - b)^2 + l2_g |w|^2, solved exactly from sufficient statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator, Sequence

import torch

Source = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
ROUND = 10  # L-BFGS iterations between validation checks
SMALL_WORK = 2_000_000  # elements per tensor op below which one thread is faster


def _weights(target: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """Per-row weights [P, m] (count-table rows: weighted row sums)."""
    if target.dtype.is_floating_point:
        return (target * cw[:, None, :]).sum(-1)
    mask = target >= 0
    return torch.gather(cw, 1, target.clamp(min=0)) * mask


def _nll(z: torch.Tensor, target: torch.Tensor, W: torch.Tensor, b: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """Summed weighted cross-entropy per (probe, strength): [P, G]."""
    logits = torch.einsum("pmr,pgrc->pgmc", z, W) + b[:, :, None, :]
    logp = torch.log_softmax(logits, -1)
    if target.dtype.is_floating_point:
        return -(logp * (target * cw[:, None, :])[:, None]).sum((2, 3))
    yc = target.clamp(min=0)
    lp = logp.gather(-1, yc[:, None, :, None].expand(-1, logp.shape[1], -1, 1)).squeeze(-1)
    return -(lp * _weights(target, cw)[:, None]).sum(-1)


def _total_weight(src: Source, cw: torch.Tensor) -> torch.Tensor:
    tot = torch.zeros(cw.shape[0], dtype=cw.dtype, device=cw.device)
    for _, t in src():
        tot += _weights(t, cw).sum(-1)
    return tot.clamp(min=1e-12)


def mean_nll(src: Source, W: torch.Tensor, b: torch.Tensor, cw: torch.Tensor, wsum: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        tot = torch.zeros(W.shape[:2], dtype=W.dtype, device=W.device)
        for z, t in src():
            tot += _nll(z, t, W, b, cw)
        return tot / wsum[:, None]


@dataclasses.dataclass
class LogisticFit:
    W: torch.Tensor
    """[P, G, r, C] weights."""
    b: torch.Tensor
    """[P, G, C] biases."""
    val_loss: torch.Tensor | None
    """[P, G] validation loss of the kept iterate."""
    iters: int
    """Iterations run."""


@contextlib.contextmanager
def threads_for(work: int):
    """One intra-op thread for small tensor programs: on a shared CPU, OpenMP
    spinning costs 10-50x more than the arithmetic of a count-table fit."""
    old = torch.get_num_threads()
    if work < SMALL_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class BatchedLBFGS:
    """L-BFGS run independently for B problems at once (own history, own step sizes).

    ``f(x_sub, idx) -> (loss [k], grad [k, n])`` evaluates the problems ``idx``
    only, so finished problems cost nothing. Backtracking (Armijo, quadratic
    interpolation) line search per problem; a problem stops when its gradient is
    below ``tol``, its relative decrease below ``ftol``, or :meth:`freeze` says so.
    """

    def __init__(self, f, x0: torch.Tensor, history: int = 10, tol: float = 1e-6, ftol: float | None = None):
        self.f, self.x, self.m, self.tol = f, x0.clone(), history, tol
        eps = torch.finfo(x0.dtype).eps
        # Relative decrease below which a problem counts as converged, and the slack that keeps
        # rounding noise from failing the sufficient-decrease test near the optimum.
        self.ftol = max(1e-10, 100 * eps) if ftol is None else ftol
        self.slack = 4 * eps
        B = x0.shape[0]
        self.loss, self.g = f(self.x, torch.arange(B, device=x0.device))
        # Ring buffers of curvature pairs: slot (head - count + i) % m is the i-th oldest.
        self.S = torch.zeros((history, B, x0.shape[1]), dtype=x0.dtype, device=x0.device)
        self.Y = torch.zeros_like(self.S)
        self.R = torch.zeros((history, B), dtype=x0.dtype, device=x0.device)
        self.count, self.head = 0, 0
        self.done = self.g.abs().amax(1) < tol
        self.first = True

    def freeze(self, mask: torch.Tensor) -> None:
        self.done = self.done | mask

    def _direction(self, g: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """Two-loop recursion over the ring buffers, oldest pair first.

        Reads one history slot at a time (indexed by ``idx`` only when some problems
        are finished), so no copy of the whole history is made: the history is the
        largest state of a fit ([m, B, n]) and copying it twice per iteration
        dominated the count-table fits.
        """
        slots = [(self.head - self.count + i) % self.m for i in range(self.count)]

        def pair(j):
            S, Y, R = self.S[j], self.Y[j], self.R[j]
            return (S, Y, R) if idx is None else (S[idx], Y[idx], R[idx])

        q = g.clone()
        alphas = []
        for j in reversed(slots):
            S, Y, R = pair(j)
            a = R * (S * q).sum(1)
            q -= a[:, None] * Y
            alphas.append(a)
        if slots:
            S, Y, _ = pair(slots[-1])
            sy, yy = (S * Y).sum(1), (Y * Y).sum(1)
            gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp(min=1e-300), torch.ones_like(sy))
            q *= gamma[:, None]
        for j, a in zip(slots, reversed(alphas)):
            S, Y, R = pair(j)
            bta = R * (Y * q).sum(1)
            q += (a - bta)[:, None] * S
        return -q

    def step(self) -> bool:
        """One iteration for every unfinished problem; False when all are finished."""
        idx = torch.nonzero(~self.done).flatten()
        if not len(idx):
            return False
        x, g, loss = self.x[idx], self.g[idx], self.loss[idx]
        d = self._direction(g, None if len(idx) == len(self.done) else idx)
        slope = (d * g).sum(1)
        bad = slope >= 0  # stale curvature pairs: restart on the gradient
        if bool(bad.any()):
            d = torch.where(bad[:, None], -g, d)
            slope = (d * g).sum(1)
        slope = slope.double()
        if self.first:
            t = torch.clamp(1.0 / g.abs().sum(1).double().clamp(min=1e-12), max=1.0)
            self.first = False
        else:
            t = torch.ones_like(loss)
        pending = torch.ones_like(loss, dtype=torch.bool)
        x_new, loss_new, g_new = x.clone(), loss.clone(), g.clone()
        for _ in range(12):
            sub = torch.nonzero(pending).flatten()
            xt = x[sub] + t[sub].to(x.dtype)[:, None] * d[sub]
            lt, gt = self.f(xt, idx[sub])
            ok = lt <= loss[sub] + 1e-4 * t[sub] * slope[sub] + self.slack * loss[sub].abs()
            acc = sub[ok]
            x_new[acc], loss_new[acc], g_new[acc] = xt[ok], lt[ok], gt[ok]
            pending[acc] = False
            if not bool(pending.any()):
                break
            # Minimiser of the quadratic through (0, f0, slope) and (t, f(t)), kept within [t/10, t/2].
            rej = sub[~ok]
            tr, sr = t[rej], slope[rej]
            curv = (lt[~ok] - loss[rej] - sr * tr).clamp(min=1e-300)
            tq = (-sr * tr * tr / (2 * curv)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
            t[rej] = torch.minimum(torch.maximum(tq, 0.1 * tr), 0.5 * tr)
        s_, y_ = x_new - x, g_new - g
        sy = (s_ * y_).sum(1)
        good = (sy > 1e-12)[:, None]
        # Finished problems get a zero pair (skipped by the recursion: rho = 0, s = y = 0).
        h = self.head
        self.S[h].zero_(), self.Y[h].zero_(), self.R[h].zero_()
        self.S[h, idx] = torch.where(good, s_, torch.zeros_like(s_))
        self.Y[h, idx] = torch.where(good, y_, torch.zeros_like(y_))
        self.R[h, idx] = torch.where(good[:, 0], 1.0 / sy.clamp(min=1e-300), torch.zeros_like(sy))
        self.head, self.count = (h + 1) % self.m, min(self.count + 1, self.m)
        small = (loss - loss_new) <= self.ftol * loss_new.abs().clamp(min=1.0)
        self.x[idx], self.loss[idx], self.g[idx] = x_new, loss_new, g_new
        # A problem whose line search failed has converged numerically.
        self.done[idx] = self.done[idx] | (g_new.abs().amax(1) < self.tol) | pending | small
        return True


def fit_logistic(
    train: Source, val: Source | None, P: int, r: int, C: int, cw: torch.Tensor, l2: Sequence[float],
    l1: float = 0.0, max_iter: int = 300, patience: int = 3, tol: float = 1e-6,
) -> LogisticFit:
    """Fit P x G multinomial logistic regressions; keep each one's best-validation iterate.

    Problem b = p * G + g. Early stopping is per problem: one whose validation loss
    has not improved for ``patience`` rounds stops (and costs nothing afterwards).
    """
    dev, dt = cw.device, cw.dtype
    G = len(l2)
    B, nW = P * G, r * C
    lam = torch.tensor(list(l2), dtype=dt, device=dev).repeat(P)  # [B]
    pof = torch.arange(P, device=dev).repeat_interleave(G)  # problem -> probe
    wsum = _total_weight(train, cw)
    wsum_val = _total_weight(val, cw) if val is not None else None

    def f(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = pof[idx]
        k = len(idx)
        x = x.detach().requires_grad_(True)
        total = torch.zeros(k, dtype=torch.float64, device=dev)
        grad = torch.zeros_like(x)
        for z, t in train():
            W, b = x[:, :nW].reshape(k, 1, r, C), x[:, nW:].reshape(k, 1, C)
            part = _nll(z[p], t[p], W, b, cw[p])[:, 0] / wsum[p]
            (gr,) = torch.autograd.grad(part.sum(), x)
            grad += gr
            total = total + part.detach().double()
        Wd = x.detach()[:, :nW]
        total = total + (lam[idx, None] * Wd * Wd).sum(1).double()
        grad[:, :nW] += 2 * lam[idx, None] * Wd
        return total, grad

    def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :nW].reshape(P, G, r, C), x[:, nW:].reshape(P, G, C)

    x0 = torch.zeros(B, nW + C, dtype=dt, device=dev)
    if l1 > 0:
        opt = _Fista(f, x0, _fista_steps(train, cw, wsum, l2, r).reshape(-1), l1, nW)
    else:
        opt = BatchedLBFGS(f, x0, tol=tol if dt == torch.float64 else max(tol, 1e-5))
    best_x = opt.x.clone()
    best = torch.full((B,), float("inf"), dtype=dt, device=dev)
    stale = torch.zeros(B, dtype=torch.long, device=dev)
    iters, moving = 0, True
    while iters < max_iter and moving:
        for _ in range(ROUND):
            moving = opt.step()
            iters += 1
            if not moving:
                break
        if val is None:
            best_x = opt.x.clone()
            continue
        W, b = unpack(opt.x)
        vl = mean_nll(val, W, b, cw, wsum_val).reshape(-1)
        better = torch.isinf(best) | (vl < best - tol * best.abs().clamp(min=1.0))
        best_x = torch.where(better[:, None], opt.x, best_x)
        best = torch.where(better, vl, best)
        stale = torch.where(better, torch.zeros_like(stale), stale + 1)
        opt.freeze(stale >= patience)
    W, b = unpack(best_x)
    return LogisticFit(W.contiguous(), b.contiguous(), best.view(P, G) if val is not None else None, iters)


def _fista_steps(train: Source, cw: torch.Tensor, wsum: torch.Tensor, l2: Sequence[float], r: int) -> torch.Tensor:
    """1/L per (probe, strength): the softmax Hessian is at most 1/2 times the weighted second moment."""
    P = cw.shape[0]
    M = torch.zeros(P, r + 1, r + 1, dtype=cw.dtype, device=cw.device)
    for z, t in train():
        za = torch.cat([z, torch.ones_like(z[..., :1])], -1)
        M += torch.einsum("pm,pmi,pmj->pij", _weights(t, cw), za, za)
    top = torch.linalg.eigvalsh(M / wsum[:, None, None])[:, -1]
    lam = torch.tensor(list(l2), dtype=cw.dtype, device=cw.device)
    return 1.0 / (0.5 * top[:, None] + 2 * lam[None, :])


class _Fista:
    """Accelerated proximal gradient for the L1 term (soft-thresholding W, not the bias)."""

    def __init__(self, f, x0: torch.Tensor, step: torch.Tensor, l1: float, nW: int):
        self.f, self.x, self.step_size, self.l1, self.nW = f, x0.clone(), step[:, None], l1, nW
        self.y, self.t = x0.clone(), 1.0
        self.done = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
        self.all = torch.arange(x0.shape[0], device=x0.device)

    def freeze(self, mask: torch.Tensor) -> None:
        self.done = self.done | mask

    def step(self) -> bool:
        if bool(self.done.all()):
            return False
        _, g = self.f(self.y, self.all)
        z = self.y - self.step_size * g
        w = z[:, : self.nW]
        z = torch.cat([torch.sign(w) * torch.clamp(w.abs() - self.step_size * self.l1, min=0), z[:, self.nW :]], 1)
        z = torch.where(self.done[:, None], self.x, z)
        t_next = (1 + (1 + 4 * self.t**2) ** 0.5) / 2
        self.y = z + ((self.t - 1) / t_next) * (z - self.x)
        moved = bool((z - self.x).abs().amax() > 1e-10)
        self.x, self.t = z, t_next
        return moved


def logits_of(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[P, G, m, C] logits."""
    return torch.einsum("pmr,pgrc->pgmc", z, W) + b[:, :, None, :]


# -- ridge -------------------------------------------------------------------
@dataclasses.dataclass
class RidgeStats:
    """Weighted sufficient statistics of least squares on whitened features, per probe."""

    n: torch.Tensor
    sz: torch.Tensor
    gzz: torch.Tensor
    sy: torch.Tensor
    szy: torch.Tensor
    syy: torch.Tensor


def ridge_stats(chunks: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> RidgeStats:
    """From chunks ``(Z [P,m,r], n [P,m], s1 [P,m], s2 [P,m])``: per-row counts and sums of y, y^2
    (1, y, y^2 for frames; per-code sums for the lookup path)."""
    acc = None
    for z, n, s1, s2 in chunks:
        z, n, s1, s2 = (t.double() for t in (z, n, s1, s2))
        part = RidgeStats(
            n.sum(-1), torch.einsum("pm,pmr->pr", n, z), torch.einsum("pm,pmi,pmj->pij", n, z, z),
            s1.sum(-1), torch.einsum("pm,pmr->pr", s1, z), s2.sum(-1),
        )
        acc = part if acc is None else RidgeStats(*(getattr(acc, f) + getattr(part, f) for f in
                                                    ("n", "sz", "gzz", "sy", "szy", "syy")))
    assert acc is not None
    return acc


def fit_ridge(st: RidgeStats, l2: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ridge with an unpenalised intercept for every strength: ``w [P,G,r]``, ``b [P,G]``.

    Centering removes the intercept; the centered covariance's eigenbasis then
    gives all strengths at the cost of one decomposition. Null directions (padding,
    constant features) get zero weight, as the minimum-norm least-squares solution does.
    """
    n = st.n.clamp(min=1e-12)
    mz, my = st.sz / n[:, None], st.sy / n
    cov = st.gzz / n[:, None, None] - mz[:, :, None] * mz[:, None, :]
    c = st.szy / n[:, None] - mz * my[:, None]
    evals, V = torch.linalg.eigh((cov + cov.transpose(1, 2)) / 2)
    proj = torch.einsum("pri,pr->pi", V, c)
    lam = torch.tensor(list(l2), dtype=evals.dtype, device=evals.device)
    den = evals[:, None, :] + lam[None, :, None]
    tiny = 1e-10 * evals.abs().amax(-1, keepdim=True).clamp(min=1e-300)
    inv = torch.where(evals[:, None, :] > tiny[:, None, :], 1.0 / den, torch.zeros_like(den))
    w = torch.einsum("pri,pgi->pgr", V, inv * proj[:, None, :])
    b = my[:, None] - torch.einsum("pgr,pr->pg", w, mz)
    return w, b


def ridge_sse(st: RidgeStats, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors [P, G] of (w, b) on the rows summarised by ``st``."""
    quad = torch.einsum("pgi,pij,pgj->pg", w, st.gzz, w)
    lin = torch.einsum("pgr,pr->pg", w, st.szy) + b * st.sy[:, None]
    cross = 2 * b * torch.einsum("pgr,pr->pg", w, st.sz)
    return st.syy[:, None] - 2 * lin + quad + cross + st.n[:, None] * b * b

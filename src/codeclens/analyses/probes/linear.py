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

from .framepath import frame_objective

Source = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
ROUND = 10  # L-BFGS iterations between validation checks
STABLE = 5  # count-table fits: iterations without a change of any vector's predicted class after which a problem stops
SMALL_WORK = 2_000_000  # elements per tensor op below which one thread is faster


def _weights(target: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """Per-row weights [P, m] (count-table rows: weighted row sums)."""
    if target.dtype.is_floating_point:
        return (target * cw[:, None, :]).sum(-1)
    mask = target >= 0
    return torch.gather(cw, 1, target.clamp(min=0)) * mask


def _nll(z: torch.Tensor, target: torch.Tensor, W: torch.Tensor, b: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """Summed weighted cross-entropy per (probe, strength): [P, G]. Without autograd (validation) the
    log-softmax is written over the logits: one [P, G, m, C] tensor per chunk instead of three."""
    logits = logits_of(z, W, b)
    if torch.is_grad_enabled():
        logp = torch.log_softmax(logits, -1)
    else:
        logits = logits.contiguous()  # einsum may return a permuted view; the in-place kernel needs rows
        logp = torch.ops.aten._log_softmax.out(logits, -1, False, out=logits)
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
    """Iterations run (of the longest-running probe)."""
    evals: torch.Tensor | None = None
    """[P] loss-and-gradient evaluations of each probe over the train source: the evaluations that
    included any of its strengths, as many as the probe alone would have needed (frame fits; None for
    count-table paths)."""
    steps: torch.Tensor | None = None
    """[P] iterations of each probe (frame fits), what it alone would have run."""
    calls: int = 0
    """Evaluations of the whole program (each one pass over the train source for the probes it evaluates)."""


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


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous tensor at a 64-byte aligned address (a copy when it is not one already).

    MKL (torch's BLAS on x86) picks a kernel's code path, and with it the order of its sums, by the
    operands' alignment (its "conditional numerical reproducibility" is off by default). A problem's
    slice of a batched tensor sits at an offset that a problem alone does not have, so every BLAS
    operand of a per-problem product goes through here: on AVX-512 machines the products of a
    layer's fit otherwise rounded differently beside other layers than alone."""
    if t.is_contiguous() and t.data_ptr() % 64 == 0:
        return t
    return torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products [B] of two [B, n] tensors, without a [B, n] temporary.

    One ``torch.dot`` per row: the batched product ``[B, 1, n] x [B, n, 1]`` of one bmm (used
    before) ran 30-60x slower per row for B > 1 on CPU (measured: B = 4, n = 25 800, 239 vs 27 us),
    which made every batched L-BFGS step pay for it. Each row is one kernel call on that row alone,
    so its value does not depend on the rows beside it (nor on B).
    """
    if not len(a):
        return a.new_zeros(0)
    return torch.stack([torch.dot(_aligned(x), _aligned(y)) for x, y in zip(a, b)])


class BatchedLBFGS:
    """L-BFGS run independently for B problems at once (own history, own step sizes).

    ``f(x_sub, idx) -> (loss [k], grad [k, n])`` evaluates the problems ``idx``
    only, so finished problems cost nothing. ``f`` may return a third item, a tuple of
    per-problem tensors ``[k, ...]`` computed at the same point (e.g. validation
    scores): they are kept for the accepted iterates in :attr:`aux`.
    Backtracking (Armijo, quadratic interpolation) line search per problem; a problem stops when its gradient is
    below ``tol``, its relative decrease below ``ftol``, or :meth:`freeze` says so.

    The curvature history ([m, A, n], the largest state of a fit) holds the A active
    problems only, compacted when problems finish, so the two-loop recursion reads
    contiguous slots and never gathers (gathering the history per slot and iteration
    once cost more than the loss evaluations of a count-table fit).

    ``owner [B]``: the probe each problem belongs to (default: its own). :attr:`evals` counts, per
    owner, the evaluations that included any of its problems and :attr:`steps`, per problem, the
    iterations it was active in: what each probe costs is then what it would cost fitted alone,
    whatever else shares the program.
    """

    def __init__(self, f, x0: torch.Tensor, history: int = 10, tol: float = 1e-6,
                 ftol: float | torch.Tensor | None = None, owner: torch.Tensor | None = None):
        self.f, self.x, self.m, self.tol = f, x0.clone(), history, tol
        eps = torch.finfo(x0.dtype).eps
        # Relative decrease below which a problem counts as converged, and the slack that keeps
        # rounding noise from failing the sufficient-decrease test near the optimum.
        self.ftol = max(1e-10, 100 * eps) if ftol is None else ftol
        self.slack = 4 * eps
        B = x0.shape[0]
        self.act = torch.arange(B, device=x0.device)
        self.owner = self.act if owner is None else owner
        self.evals = torch.zeros(int(self.owner.max()) + 1 if B else 0, dtype=torch.long, device=x0.device)
        self.steps = torch.zeros(B, dtype=torch.long, device=x0.device)
        self.calls = 0
        self.loss, self.g, self.aux = self._f(self.x, self.act)
        # Ring buffers of curvature pairs of the active problems: slot (head - count + i) % m is the i-th oldest.
        self.S = torch.zeros((history, B, x0.shape[1]), dtype=x0.dtype, device=x0.device)
        self.Y = torch.zeros_like(self.S)
        self.R = torch.zeros((history, B), dtype=x0.dtype, device=x0.device)
        self.count, self.head = 0, 0
        self.done = self.g.abs().amax(1) < tol
        self.first = True

    def _f(self, x: torch.Tensor, idx: torch.Tensor):
        # Repeated owners write the same value once: an evaluation counts once per probe.
        self.evals[self.owner[idx]] += 1
        self.calls += 1
        out = self.f(x, idx)
        return out[0], out[1], (tuple(out[2]) if len(out) > 2 else ())

    def freeze(self, mask: torch.Tensor) -> None:
        self.done = self.done | mask

    def _compact(self) -> None:
        """Drop finished problems from the active set and the history."""
        keep = ~self.done[self.act]
        if bool(keep.all()):
            return
        k = torch.nonzero(keep).flatten()
        self.act = self.act[k]
        self.S, self.Y, self.R = self.S[:, k].contiguous(), self.Y[:, k].contiguous(), self.R[:, k].contiguous()

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """Two-loop recursion over the ring buffers, oldest pair first."""
        slots = [(self.head - self.count + i) % self.m for i in range(self.count)]
        q = g.clone()
        alphas = []
        for j in reversed(slots):
            a = self.R[j] * _dot(self.S[j], q)
            q.addcmul_(self.Y[j], a[:, None], value=-1.0)
            alphas.append(a)
        if slots:
            S, Y = self.S[slots[-1]], self.Y[slots[-1]]
            sy, yy = _dot(S, Y), _dot(Y, Y)
            gamma = torch.where((sy > 0) & (yy > 0), sy / yy.clamp(min=1e-300), torch.ones_like(sy))
            q *= gamma[:, None]
        for j, a in zip(slots, reversed(alphas)):
            bta = self.R[j] * _dot(self.Y[j], q)
            q.addcmul_(self.S[j], (a - bta)[:, None])
        return q.neg_()

    def step(self) -> bool:
        """One iteration for every unfinished problem; False when all are finished."""
        self._compact()
        idx = self.act
        if not len(idx):
            return False
        self.steps[idx] += 1
        x, g, loss = self.x[idx], self.g[idx], self.loss[idx]
        d = self._direction(g)
        slope = _dot(d, g)
        bad = slope >= 0  # stale curvature pairs: restart on the gradient
        if bool(bad.any()):
            d = torch.where(bad[:, None], -g, d)
            slope = _dot(d, g)
        slope = slope.double()
        if self.first:
            t = torch.clamp(1.0 / g.abs().sum(1).double().clamp(min=1e-12), max=1.0)
            self.first = False
        else:
            t = torch.ones_like(loss)
        pending = torch.ones_like(loss, dtype=torch.bool)
        x_new, loss_new, g_new = x.clone(), loss.clone(), g.clone()
        aux_new = tuple(a[idx] for a in self.aux)
        for it in range(12):
            sub = torch.nonzero(pending).flatten()
            if it == 0:  # every problem: no gathers
                xt = torch.addcmul(x, t.to(x.dtype)[:, None], d)
            else:
                xt = torch.addcmul(x[sub], t[sub].to(x.dtype)[:, None], d[sub])
            lt, gt, at = self._f(xt, idx[sub])
            ok = lt <= loss[sub] + 1e-4 * t[sub] * slope[sub] + self.slack * loss[sub].abs()
            acc = sub[ok]
            if it == 0 and bool(ok.all()):
                x_new, loss_new, g_new, aux_new = xt, lt, gt, at
            else:
                x_new[acc], loss_new[acc], g_new[acc] = xt[ok], lt[ok], gt[ok]
                for a_new, a_t in zip(aux_new, at):
                    a_new[acc] = a_t[ok]
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
        sy = _dot(s_, y_)
        good = (sy > 1e-12).to(x.dtype)
        # A pair without positive curvature is stored as zeros (skipped by the recursion: rho = 0, s = y = 0).
        h = self.head
        torch.mul(s_, good[:, None], out=self.S[h])
        torch.mul(y_, good[:, None], out=self.Y[h])
        self.R[h] = torch.where(good > 0, 1.0 / sy, torch.zeros_like(sy))
        self.head, self.count = (h + 1) % self.m, min(self.count + 1, self.m)
        ftol = self.ftol[idx] if isinstance(self.ftol, torch.Tensor) else self.ftol  # one per problem, or one
        small = (loss - loss_new) <= ftol * loss_new.abs().clamp(min=1.0)
        self.x[idx], self.loss[idx], self.g[idx] = x_new, loss_new, g_new
        for a, a_new in zip(self.aux, aux_new):
            a[idx] = a_new
        # A problem whose line search failed has converged numerically.
        self.done[idx] = self.done[idx] | (g_new.abs().amax(1) < self.tol) | pending | small
        return True


def fit_logistic(
    train: Source, val: Source | None, P: int, r: int, C: int, cw: torch.Tensor, l2: Sequence[float],
    l1: float = 0.0, max_iter: int = 300, patience: int = 3, tol: float = 1e-6, closed_form: bool = True,
    path: bool = True, stop_on_val: bool | Sequence[bool] = True, slot: Sequence[int] | None = None,
) -> LogisticFit:
    """Fit P x G multinomial logistic regressions; keep each one's best-validation iterate.

    Problem b = p * G + g. Early stopping is per problem: one whose validation loss
    has not improved for ``patience`` rounds stops (and costs nothing afterwards).
    ``closed_form``: the loss and gradient by hand, without autograd: a source of one count-table chunk by
    :func:`_table_objective`, frame chunks by :func:`.framepath.frame_objective` (one product forward and
    one back per probe and chunk); False uses autograd (the reference computation, for tests).
    ``path``: such a count-table fit (without L1) runs the strengths as a warm-started path
    (:func:`_fit_table_path`); False fits every strength from zero in one program, the
    same stopping as frame fits (kept for comparison: ``benchmarks/table_fits.py``).
    ``stop_on_val=False``: every fit runs to its penalised optimum (no early stopping); ``val`` then only
    serves the count-table path's skipping of strengths weaker than a perfect one, and is otherwise unused.
    Frame sources also take one flag per probe (``[P]`` booleans): probes without stopping run to their
    optimum beside those that stop, and their optimiser stops at a relative decrease of 1e-7 (as count
    tables do) rather than 100 eps, so the optimum is reached to float32 precision. ``slot``: frame sources
    only, the row of each chunk's ``Z`` that each probe reads (see :func:`.framepath.frame_objective`); the
    validation loss of frame sources is then computed probe by probe as well (no ``[P, G, m, C]`` logits).
    """
    one = _one_table(train) if closed_form else None
    per_probe = not isinstance(stop_on_val, bool)
    if one is not None and path and l1 == 0:
        if per_probe:
            raise ValueError("count-table fits take one stop_on_val for all probes")
        va = _one_table(val) if val is not None else None
        if val is None or va is not None:
            return _fit_table_path(one, va, cw, l2, max_iter, patience, tol, stop_on_val)
    stop = torch.as_tensor(stop_on_val, dtype=torch.bool, device=cw.device).reshape(-1).expand(P).clone()
    if not bool(stop.any()):
        val = None
    dev, dt = cw.device, cw.dtype
    G = len(l2)
    B, nW = P * G, r * C
    lam = torch.tensor(list(l2), dtype=dt, device=dev).repeat(P)  # [B]
    pof = torch.arange(P, device=dev).repeat_interleave(G)  # problem -> probe
    wsum = _total_weight(train, cw)
    wsum_val = _total_weight(val, cw) if val is not None else None

    table = one
    if table is not None:
        Z, T = table
        A = T * cw[:, None, :]
        table = (Z, A, A.sum(-1))

    def f(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if table is not None:
            return _table_objective(table, wsum, lam, pof, x, idx, r, C)
        if closed_form:
            return frame_objective(train(), x, idx, pof, lam, cw, wsum, r, C, slot=slot)
        p = pof[idx]
        zp = p if slot is None else torch.as_tensor(list(slot), device=dev)[p]
        k = len(idx)
        x = x.detach().requires_grad_(True)
        total = torch.zeros(k, dtype=torch.float64, device=dev)
        grad = torch.zeros_like(x)
        for z, t in train():
            W, b = x[:, :nW].reshape(k, 1, r, C), x[:, nW:].reshape(k, 1, C)
            part = _nll(z[zp], t[p], W, b, cw[p])[:, 0] / wsum[p]
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
        opt = _Fista(f, x0, _fista_steps(train, cw, wsum, l2, r, slot).reshape(-1), l1, nW, owner=pof)
    else:
        # A float32 count-table fit stops at a relative decrease of 1e-7 (not 100 eps = 1.2e-5): its loss
        # sums non-negative terms, so decreases that small are real, and stopping earlier changed which
        # strength won on val for ill-conditioned problems (code controls) against the float64 fit.
        ftol = 1e-7 if table is not None and dt == torch.float32 else None
        if table is None and not bool(stop.all()) and dt == torch.float32:
            # Fits run to their optimum stop at the count tables' relative decrease, those stopped on val as before.
            default = max(1e-10, 100 * torch.finfo(dt).eps)
            ftol = torch.where(stop, torch.tensor(default, dtype=torch.float64, device=dev),
                               torch.tensor(1e-7, dtype=torch.float64, device=dev)).repeat_interleave(G)
        opt = BatchedLBFGS(f, x0, tol=tol if dt == torch.float64 else max(tol, 1e-5), ftol=ftol, owner=pof)
    free = ~stop.repeat_interleave(G)  # problems that run to their optimum: their last iterate is kept
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
        vl = _val_loss(val, opt.x, unpack, pof, cw, wsum_val, r, C, slot, table is None and closed_form)
        better = torch.isinf(best) | (vl < best - tol * best.abs().clamp(min=1.0)) | free
        best_x = torch.where(better[:, None], opt.x, best_x)
        best = torch.where(better, vl, best)
        stale = torch.where(better, torch.zeros_like(stale), stale + 1)
        opt.freeze(stale >= patience)
    W, b = unpack(best_x)
    return LogisticFit(W.contiguous(), b.contiguous(), best.view(P, G) if val is not None else None, iters,
                       opt.evals.clone(), opt.steps.view(P, G).amax(1), opt.calls)


def _val_loss(val: Source, x: torch.Tensor, unpack, pof: torch.Tensor, cw: torch.Tensor, wsum_val: torch.Tensor,
              r: int, C: int, slot, frames: bool) -> torch.Tensor:
    """[B] mean validation loss of every problem. Frames: probe by probe (:func:`.framepath.frame_objective`
    without penalty), so a chunk's temporaries are one probe's ``[m, G * C]``, whatever the number of probes
    fitted together, and a probe's value does not depend on the others."""
    if not frames:
        W, b = unpack(x)
        return mean_nll(val, W, b, cw, wsum_val).reshape(-1)
    every = torch.arange(len(x), device=x.device)
    zero = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    return frame_objective(val(), x, every, pof, zero, cw, wsum_val, r, C, grad=False, slot=slot).to(x.dtype)


def _fit_table_path(train, val, cw: torch.Tensor, l2: Sequence[float], max_iter: int, patience: int,
                    tol: float, stop_on_val: bool = True) -> LogisticFit:
    """Count-table fits of every probe along its L2 path, strongest strength first.

    The strongest strength starts from :func:`_ls_init`, each weaker one from the solution of the
    previous, extrapolated linearly in log L2 (the optimum moves smoothly between neighbouring
    strengths). Each fit keeps, as :func:`fit_logistic` does, its best-on-val iterate of every
    ``ROUND`` iterations and the last, with the same patience. A problem also stops when no
    vector's predicted class has changed for ``STABLE`` iterations: what a probe reports (its test
    predictions, the val macro-F1 that picks the strength) is those argmaxes, and the iterations
    after they settle only sharpen near-memorising fits (code controls). Validation loss and
    predictions come with every evaluation (:func:`_table_objective`), so checks cost nothing.

    Where validation stopped a fit early (its kept iterate is not its last: the val loss rose), the
    kept iterate depends on the road taken, not only on the strength; that strength of that probe is
    then refitted from zero, the road and the stopping rules of
    :func:`fit_logistic` (no stability stop: such a fit's kept iterate is an early stop, not argmaxes
    that have settled).

    ``stop_on_val=False``: no validation rule and no stability stop, every strength runs to its optimum
    (the start then does not matter, so nothing is refitted); val serves only the skipping below.

    A probe that predicts every val row right is not fitted at the weaker strengths: they get its
    solution. They could at best tie with it on val macro-F1 or accuracy, and ties go to the
    stronger strength (``torch_backend._choose``), so the choice and the reported fit are the same.
    """
    Z, T = train
    dev, dt = Z.device, Z.dtype
    P, U, r = Z.shape
    C, G, nW = T.shape[-1], len(l2), r * T.shape[-1]
    A = T * cw[:, None, :]
    table = (Z, A, A.sum(-1))
    wsum = table[2].sum(-1).clamp(min=1e-12)
    vt = None
    if val is not None:
        Av = val[1] * cw[:, None, :]
        vt = (Av, Av.sum((1, 2)).clamp(min=1e-12), Av.sum(-1))
        seen = val[1] > 0  # val rows: a probe is perfect when it predicts no other class where they are
    stage = _TableStage(table, wsum, vt, r, C, max_iter, patience, tol, stop_on_val)
    W_all = torch.zeros(P, G, nW + C, dtype=dt, device=dev)
    vl_all = torch.full((P, G), float("inf"), dtype=dt, device=dev)
    x, xprev = _ls_init(*table, wsum, r, C), None
    todo = torch.ones(P, dtype=torch.bool, device=dev)
    cold = torch.zeros(P, G, dtype=torch.bool, device=dev)
    order = sorted(range(G), key=lambda k: -l2[k])
    for i, g in enumerate(order):
        if i and not bool(todo.all()):  # perfect probes keep the stronger strength's solution
            W_all[~todo, g], vl_all[~todo, g] = W_all[~todo, order[i - 1]], vl_all[~todo, order[i - 1]]
        probes = torch.nonzero(todo).flatten()
        if not len(probes):
            continue
        x0 = x[probes] if xprev is None else 2 * x[probes] - xprev[probes]
        res = stage.run(probes, torch.full((len(probes),), float(l2[g]), dtype=dt, device=dev), x0)
        xprev = x.clone()
        W_all[probes, g], x[probes], vl_all[probes, g] = res.x, res.x, res.val
        if val is not None:
            wrong = seen[probes] & (torch.arange(C, device=dev) != res.pred[..., None])
            perfect = ~wrong.any(-1).any(-1)
            todo[probes[perfect]] = False
            early = probes[res.early & ~perfect]
            if len(early):  # refitted from zero below, with every weaker strength
                cold[early[:, None], torch.tensor(order[i:], device=dev)] = True
                todo[early] = False
    if bool(cold.any()):
        pp, gg = torch.nonzero(cold, as_tuple=True)
        lam = torch.tensor(list(l2), dtype=dt, device=dev)[gg]
        rank = torch.tensor([order.index(g) for g in gg.tolist()], device=dev)
        res = stage.run(pp, lam, torch.zeros(len(pp), nW + C, dtype=dt, device=dev), stable=max_iter + 1,
                        ladder=(pp, rank, seen[pp]))
        W_all[pp, gg], vl_all[pp, gg] = res.x, res.val
    return LogisticFit(W_all[..., :nW].reshape(P, G, r, C).contiguous(), W_all[..., nW:].contiguous(),
                       vl_all if val is not None else None, stage.iters)


@dataclasses.dataclass
class _StageResult:
    x: torch.Tensor
    """[k, n] kept iterates."""
    val: torch.Tensor
    """[k] their val loss (inf without val)."""
    pred: torch.Tensor | None
    """[k, U] their predicted class per vector."""
    early: torch.Tensor
    """[k] the last iterate is worse on val than the kept one (validation stopped the fit)."""


class _TableStage:
    """Batched L-BFGS fits of count-table problems (probe ``pof[i]`` at strength ``lam[i]``) with
    :func:`fit_logistic`'s validation rule and the prediction-stability stop of :func:`_fit_table_path`."""

    def __init__(self, table, wsum, val, r: int, C: int, max_iter: int, patience: int, tol: float,
                 stop_on_val: bool = True):
        self.table, self.wsum, self.val, self.r, self.C = table, wsum, val, r, C
        self.stop_on_val = stop_on_val
        self.max_iter, self.patience, self.tol, self.iters = max_iter, patience, tol, 0
        dt = table[0].dtype
        self.ftol = 1e-7 if dt == torch.float32 else None  # see fit_logistic
        self.gtol = tol if dt == torch.float64 else max(tol, 1e-5)

    def run(self, pof: torch.Tensor, lam: torch.Tensor, x0: torch.Tensor, stable: int | None = None,
            ladder=None) -> _StageResult:
        """``ladder`` = (probe, rank of its strength (0 = strongest), val rows [k, U, C]) to stop weaker
        strengths of a probe once a stronger one is perfect (:meth:`_prune`)."""
        k, dev, tol = len(pof), x0.device, self.tol
        stable = STABLE if stable is None else stable
        if k == self.table[0].shape[0] and bool((pof == torch.arange(k, device=dev)).all()):
            table, wsum, val = self.table, self.wsum, self.val  # every probe once: no copies of the tables
        else:
            table, wsum = tuple(t[pof] for t in self.table), self.wsum[pof]
            val = None if self.val is None else tuple(t[pof] for t in self.val)
        own = torch.arange(k, device=dev)
        opt = BatchedLBFGS(lambda x, idx: _table_objective(table, wsum, lam, own, x, idx, self.r, self.C, val),
                           x0, tol=self.gtol, ftol=self.ftol)
        early = torch.zeros(k, dtype=torch.bool, device=dev)
        if val is None or not self.stop_on_val:
            it = 0
            while it < self.max_iter and opt.step():
                it += 1
            self.iters += it
            if val is None:
                return _StageResult(opt.x, torch.full((k,), float("inf"), dtype=x0.dtype, device=dev), None, early)
            return _StageResult(opt.x, opt.aux[0].clone(), opt.aux[1].clone(), early)  # the optimum's val loss, predictions
        best_x, pred = opt.x.clone(), opt.aux[1].clone()
        src = own.clone()  # problem whose result each problem takes (itself unless pruned)
        best_pred, best = pred.clone(), torch.full((k,), float("inf"), dtype=x0.dtype, device=dev)
        stale = torch.zeros(k, dtype=torch.long, device=dev)
        same = torch.zeros(k, dtype=torch.long, device=dev)
        it, moving = 0, True
        while moving:
            moving = it < self.max_iter and opt.step()
            it += moving
            vl, now = opt.aux
            same = torch.where((now == pred).all(-1), same + 1, torch.zeros_like(same))
            pred = now.clone()
            if it % ROUND == 0 or not moving:  # candidates: every ROUND iterations and the last, as in fit_logistic
                better = torch.isinf(best) | (vl < best - tol * best.abs().clamp(min=1.0))
                best_x = torch.where(better[:, None], opt.x, best_x)
                best_pred = torch.where(better[:, None], now, best_pred)
                best = torch.where(better, vl, best)
                stale = torch.where(better, torch.zeros_like(stale), stale + 1)
                early = vl > best + tol * best.abs().clamp(min=1.0)  # the val loss has risen since the kept iterate
                if ladder is not None:
                    self._prune(ladder, opt.done, best_pred, src)
            opt.freeze((stale >= self.patience) | (same >= stable) | (src != own))
        self.iters += it
        best_x, best, best_pred, early = best_x[src], best[src], best_pred[src], early[src]
        return _StageResult(best_x, best, best_pred, early)

    @staticmethod
    def _prune(ladder, done: torch.Tensor, pred: torch.Tensor, src: torch.Tensor) -> None:
        """Problems of a probe weaker than one of its finished problems that predicts every val row right
        stop and take that one's result (``src``): see :func:`_fit_table_path`."""
        probe, rank, seen = ladder
        C = seen.shape[-1]
        fin = torch.nonzero(done & (src == torch.arange(len(src), device=src.device))).flatten()
        if not len(fin):
            return
        wrong = (seen[fin] & (torch.arange(C, device=seen.device) != pred[fin][..., None])).any(-1).any(-1)
        for j in fin[~wrong].tolist():
            weaker = (probe == probe[j]) & (rank > rank[j]) & (src == torch.arange(len(src), device=src.device))
            src[weaker] = j


def _one_table(src: Source) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (Z, count table) of a source that is one count-table chunk, else None. Reads at most two
    chunks: a streamed frame source is not materialised whole to find out."""
    it = iter(src())
    first = next(it, None)
    if first is None or not first[1].dtype.is_floating_point or next(it, None) is not None:
        return None
    return first


def _table_objective(table, wsum: torch.Tensor, lam: torch.Tensor, pof: torch.Tensor,
                     x: torch.Tensor, idx: torch.Tensor, r: int, C: int, val=None):
    """Loss and gradient of count-table problems ``idx`` without autograd.

    ``table`` = (Z, A, a): vectors, weighted counts A = T * cw and their row sums. The
    loss is -sum_uc A_uc log softmax(l_u)_c (non-negative terms: no cancellation in
    float32) and its gradient in the logits is a_u softmax(l_u) - A_u: two matrix products
    per problem and one exponential per evaluation, in the table's dtype. The products are made
    problem by problem (not one batched product): a batched product rounds differently from a
    single one, which let a layer's early-stopped fit (and, at chance level, its chosen strength)
    depend on how many layers shared its program; and on aligned operands (:func:`_aligned`), as a
    problem alone has them.
    ``val`` = (Av, wsum_val, Av row sums): also return, at the same point, the validation loss [k]
    and every vector's predicted class [k, U] (the logits are already there).
    """
    Z, A, a = table
    p = pof[idx]
    k, nW = len(idx), r * C
    one = Z.shape[0] == 1  # one probe (a layer's program): broadcast, no per-problem copies of the table
    same = not one and k == Z.shape[0] and bool((p == torch.arange(k, device=p.device)).all())
    pick = (lambda t: t.expand(k, *t.shape[1:])) if one else (lambda t: t) if same else (lambda t: t[p])
    Ap, ap = pick(A), pick(a)
    Zs = [Z[0]] * k if one else [Z[j] for j in p.tolist()]
    n = wsum[p]
    W, b = x[:, :nW].reshape(k, r, C), x[:, nW:]
    lg = torch.empty((k, Z.shape[1], C), dtype=x.dtype, device=x.device)
    for i, z in enumerate(Zs):  # [k, U, C] logits, shifted by their row maximum in place
        lg[i] = torch.addmm(_aligned(b[i : i + 1]), _aligned(z), _aligned(W[i]))
    top, pred = lg.max(-1, keepdim=True)
    lg.sub_(top)
    e = lg.exp()
    ls = e.sum(-1).log_()  # log-partition of the shifted logits: log p = lg - ls
    rows = lambda M: _dot(M.reshape(k, -1), lg.reshape(k, -1))  # sum_uc M_uc lg_uc
    loss = (_dot(ap, ls) - rows(Ap)).double() / n.double()
    if val is not None:
        Av, nv, av = val
        vloss = (_dot(pick(av), ls) - rows(pick(Av))) / nv[p]
    G = e.mul_((ap / ls.exp_())[..., None]).sub_(Ap).div_(n[:, None, None])
    grad = torch.empty((k, nW + C), dtype=x.dtype, device=x.device)
    for i, z in enumerate(Zs):
        grad[i, :nW] = torch.mm(_aligned(z).T, _aligned(G[i])).reshape(-1)
        torch.sum(G[i], 0, out=grad[i, nW:])
    Wd = x[:, :nW]
    grad[:, :nW].addcmul_(Wd, lam[idx, None], value=2.0)
    loss = loss + (lam[idx, None] * Wd * Wd).sum(1).double()
    if val is None:
        return loss, grad
    return loss, grad, (vloss, pred[..., 0])


def _ls_init(Z: torch.Tensor, A: torch.Tensor, a: torch.Tensor, n: torch.Tensor, r: int, C: int) -> torch.Tensor:
    """[P, r*C + C]: weighted least squares of every vector's smoothed log class frequencies (add-one,
    centred over classes) on its whitened features. One r x r solve per probe; a start that already
    points every vector towards its frequent classes, for the strongest strength of a path.
    Probe by probe, each on aligned copies (:func:`_aligned`): batched products and solves rounded a
    probe's start by its place in the batch."""
    return torch.cat([_ls_init_one(*(_aligned(t[p : p + 1]) for t in (Z, A, a, n)), r, C) for p in range(len(Z))])


def _ls_init_one(Z: torch.Tensor, A: torch.Tensor, a: torch.Tensor, n: torch.Tensor, r: int, C: int) -> torch.Tensor:
    target = torch.log((A + 1) / (a[..., None] + C))
    target = target - target.mean(-1, keepdim=True)
    w = a / n[:, None]
    mz = torch.einsum("pu,pur->pr", w, Z)
    Zc = Z - mz[:, None]
    M = torch.einsum("pu,pui,puj->pij", w, Zc, Zc)
    rhs = torch.einsum("pu,pur,puc->prc", w, Zc, target)
    ridge = 1e-6 * torch.eye(r, dtype=Z.dtype, device=Z.device)  # padding directions are null
    W = torch.linalg.solve(M.double() + ridge.double(), rhs.double()).to(Z.dtype)
    b = torch.einsum("pu,puc->pc", w, target) - torch.einsum("pr,prc->pc", mz, W)
    return torch.cat([W.reshape(len(W), -1), b], 1)


def _fista_steps(train: Source, cw: torch.Tensor, wsum: torch.Tensor, l2: Sequence[float], r: int,
                 slot: Sequence[int] | None = None) -> torch.Tensor:
    """1/L per (probe, strength): the softmax Hessian is at most 1/2 times the weighted second moment."""
    P = cw.shape[0]
    M = torch.zeros(P, r + 1, r + 1, dtype=cw.dtype, device=cw.device)
    for z, t in train():
        z = z if slot is None else z[list(slot)]
        za = torch.cat([z, torch.ones_like(z[..., :1])], -1)
        M += torch.einsum("pm,pmi,pmj->pij", _weights(t, cw), za, za)
    top = torch.linalg.eigvalsh(M / wsum[:, None, None])[:, -1]
    lam = torch.tensor(list(l2), dtype=cw.dtype, device=cw.device)
    return 1.0 / (0.5 * top[:, None] + 2 * lam[None, :])


class _Fista:
    """Accelerated proximal gradient for the L1 term (soft-thresholding W, not the bias).

    A probe (``owner``: problem -> probe) stops when all its problems are frozen or none of them moved
    more than 1e-10: its problems are then no longer evaluated, so it runs as it would alone."""

    def __init__(self, f, x0: torch.Tensor, step: torch.Tensor, l1: float, nW: int,
                 owner: torch.Tensor | None = None):
        self.f, self.x, self.step_size, self.l1, self.nW = f, x0.clone(), step[:, None], l1, nW
        self.y, self.t = x0.clone(), 1.0
        B, dev = x0.shape[0], x0.device
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.owner = torch.arange(B, device=dev) if owner is None else owner
        n_own = int(self.owner.max()) + 1 if B else 0
        self.fin = torch.zeros(n_own, dtype=torch.bool, device=dev)
        self.evals = torch.zeros(n_own, dtype=torch.long, device=dev)
        self.steps = torch.zeros(B, dtype=torch.long, device=dev)
        self.calls = 0

    def freeze(self, mask: torch.Tensor) -> None:
        self.done = self.done | mask

    def step(self) -> bool:
        running = torch.zeros(len(self.fin), dtype=torch.long, device=self.fin.device).index_add_(
            0, self.owner, (~self.done).long())
        self.fin |= running == 0
        idx = torch.nonzero(~self.fin[self.owner]).flatten()
        if not len(idx):
            return False
        own = self.owner[idx]
        self.evals[own] += 1
        self.steps[idx] += 1
        self.calls += 1
        _, g = self.f(self.y[idx], idx)
        x, lr = self.x[idx], self.step_size[idx]
        z = self.y[idx] - lr * g
        w = z[:, : self.nW]
        z = torch.cat([torch.sign(w) * torch.clamp(w.abs() - lr * self.l1, min=0), z[:, self.nW :]], 1)
        z = torch.where(self.done[idx, None], x, z)
        t_next = (1 + (1 + 4 * self.t**2) ** 0.5) / 2
        self.y[idx] = z + ((self.t - 1) / t_next) * (z - x)
        move = torch.zeros(len(self.fin), dtype=z.dtype, device=z.device).scatter_reduce_(
            0, own, (z - x).abs().amax(1), "amax")
        self.fin[own] |= move[own] <= 1e-10
        self.x[idx], self.t = z, t_next
        return bool((~self.fin).any())


def logits_of(z: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[P, G, m, C] logits (the bias added in place: no second [P, G, m, C] tensor)."""
    return torch.einsum("pmr,pgrc->pgmc", z, W).add_(b[:, :, None, :])


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


def ridge_stats_rows(chunks: Iterator[tuple[int, torch.Tensor, torch.Tensor]], P: int, r: int,
                     device) -> RidgeStats:
    """:func:`ridge_stats` of unit-weight rows, from chunks ``(p, Z [m, r'], y [m])`` of probe ``p``
    (``r' <= r``: a probe narrower than the padded width fills its leading columns). The frame path's
    form: a probe's chunk at a time, so no ``[P, m, r]`` float64 copy and no per-row weights."""
    acc = RidgeStats(*(torch.zeros(shape, dtype=torch.float64, device=device)
                       for shape in ((P,), (P, r), (P, r, r), (P,), (P, r), (P,))))
    for p, z, y in chunks:
        z, y = z.double(), y.to(torch.float64)
        k = z.shape[1]
        acc.n[p] += len(y)
        acc.sz[p, :k] += z.sum(0)
        acc.gzz[p, :k, :k].addmm_(z.t(), z)
        acc.sy[p] += y.sum()
        acc.szy[p, :k] += y @ z
        acc.syy[p] += y @ y
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


# -- bounded refit (frame path) ----------------------------------------------
@dataclasses.dataclass
class Refit:
    W: torch.Tensor
    """[P, r, C] weights."""
    b: torch.Tensor
    """[P, C] biases."""
    passes: int
    """Loss-and-gradient evaluations over the whole train source (each one streamed pass)."""
    iters: int
    """L-BFGS iterations."""
    evals: torch.Tensor | None = None
    """[P] evaluations of each probe (at most ``max_passes``; what the probe alone would have cost)."""
    steps: torch.Tensor | None = None
    """[P] iterations of each probe (those it was active in)."""


def refit_logistic(train: Source, W0: torch.Tensor, b0: torch.Tensor, cw: torch.Tensor, wsum: torch.Tensor,
                   l2: torch.Tensor, max_passes: int, tol: float = 1e-5, slot: Sequence[int] | None = None) -> Refit:
    """Minimise each probe's objective at its own strength ``l2 [P]`` over the whole train source, from
    ``(W0 [P, r, C], b0 [P, C])``, with at most ``max_passes`` evaluations (each one pass over the source).

    ``train`` yields ``(Z [P, m, r], labels [P, m])``; ``wsum [P]`` is each probe's total row weight.
    Meant for a warm start near the optimum (the solution on a subsample): L-BFGS then needs few
    iterations. The budget is hard and per probe: an evaluation of a probe past it is refused (reported as
    no decrease), so its line search stops, the probe counts as finished and keeps its last accepted
    iterate. Per probe, so that a probe refitted beside others (a group of --memory-mb) ends where it would
    alone: one shared count let a probe's line search spend the others' passes. ``passes``: the passes made
    over the source (an evaluation is one pass for the probes it evaluates), ``evals`` each probe's count.
    """
    P, r, C = W0.shape
    nW = r * C
    count = torch.zeros(P, dtype=torch.long, device=cw.device)
    made = [0]
    pof = torch.arange(P, device=cw.device)  # one problem per probe: frame_objective's grouping is trivial

    def f(x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        live = count[idx] < max_passes
        if bool(live.any()):
            made[0] += 1
        if bool(live.all()):
            count[idx] += 1
            return frame_objective(train(), x, idx, pof, l2.to(x.dtype), cw, wsum, r, C, slot=slot)
        loss = torch.full((len(idx),), float("inf"), dtype=torch.float64, device=x.device)
        g = torch.zeros_like(x)
        if bool(live.any()):
            k = torch.nonzero(live).flatten()
            count[idx[k]] += 1
            loss[k], g[k] = frame_objective(train(), x[k], idx[k], pof, l2.to(x.dtype), cw, wsum, r, C, slot=slot)
        return loss, g

    x0 = torch.cat([W0.reshape(P, nW), b0], 1).to(cw.dtype)
    opt = BatchedLBFGS(f, x0, tol=tol)
    iters = 0
    while True:
        # A probe out of budget stops before its next step (as it would alone, where the loop ends),
        # not after one more step of refused evaluations.
        opt.freeze(count[opt.owner] >= max_passes)
        if not opt.step():
            break
        iters += 1
    return Refit(opt.x[:, :nW].reshape(P, r, C).contiguous(), opt.x[:, nW:].contiguous(), made[0], iters,
                 count.clone(), opt.steps.clone())

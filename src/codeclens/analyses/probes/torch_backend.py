"""The fast backend: exact count-table fits for layer:k, batched whitened fits otherwise.

A *job* is one probe to fit: (store, representation, labels), the labels being
the task's or a control task's. Jobs are grouped so that one tensor program
fits many of them at once, for every L2 strength; each job then keeps the
strength that is best on its val split (macro-F1, or least squared error).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from typing import Iterator, Sequence

import numpy as np
import torch

from ...store import Repr, Store
from ..framestream import codes_at
from .config import ProbeConfig
from .data import TaskData, Whitener, iter_features, streamed_whitener, weighted_whitener
from .linear import (RidgeStats, fit_logistic, fit_ridge, logits_of, refit_logistic, ridge_sse, ridge_stats,
                     ridge_stats_rows, threads_for)
from .lookup import CodeVectors, code_sums, code_vectors, count_table, lookup_classifier, lookup_regressor

CHUNK_BYTES = 32 * 2**20  # size of one logits tensor of a frame chunk


@dataclasses.dataclass
class Job:
    """One probe: a representation of a store and the labels to predict from it."""

    store: Store
    rep: Repr
    td: TaskData
    y: dict[str, np.ndarray]
    """Labels per split (the task's or a control task's)."""
    control: bool = False

    @property
    def lookup(self) -> bool:
        return self.rep.is_lookup and self.td.level == "frame" and not self.td.open_set


@dataclasses.dataclass
class JobFit:
    """A fitted probe: whitening, weights, the chosen strength and its test predictions."""

    whitener: Whitener
    W: np.ndarray
    """[r, C] (classification) or [r] (regression) on whitened features."""
    b: np.ndarray
    """[C] or scalar."""
    l2: float
    pred_test: np.ndarray
    """Predicted class index / value of every test row."""
    lookup_test: np.ndarray | None = None
    """The code-lookup upper bound's test predictions (layer:k only)."""
    iters: int = 0
    """Optimiser iterations (frame path: of the subsample selection plus the refit)."""
    emb_test: np.ndarray | None = None
    """Open-set tasks: the probe's class scores of every test row (an embedding of the held-out classes)."""
    passes: int = 0
    """Loss-and-gradient evaluations over all train rows (frame path; each one streamed pass when they do
    not fit --memory-mb). Count-table fits: 0."""


def fit_jobs(jobs: Sequence[Job], cfg: ProbeConfig, device: torch.device, log=None) -> list[JobFit]:
    """Fit all jobs (of one task); results in job order."""
    out: list[JobFit | None] = [None] * len(jobs)
    lookup = [i for i, j in enumerate(jobs) if j.lookup]
    frames = [i for i, j in enumerate(jobs) if not j.lookup]
    cache: dict[tuple[int, Repr], object] = {}
    test_ids: dict[tuple[int, Repr], np.ndarray] = {}  # one array per layer, shared by its task, control, lookup
    # One group per layer (and class list); within it tasks and code controls are fitted apart (their
    # stopping rules differ, see fit_table_classify). A layer's per-frame vector ids live while its group is fitted
    # only, so a run holds one layer's ids at a time (4 bytes per frame), not every layer's.
    groups: dict[tuple, list[int]] = {}
    for i in lookup:
        j = jobs[i]
        key = (id(j.store), j.rep) + ((j.td.classes, j.td.n_train_classes) if j.td.categorical else ("reg",))
        groups.setdefault(key, []).append(i)
    for g in groups.values():
        parts = [[i for i in g if not jobs[i].control], [i for i in g if jobs[i].control]]
        if not jobs[g[0]].td.categorical:  # ridge is exact in float64 for both: one program
            parts = [g]
        for idx in (sub for part in parts if part for sub in _split_lookup(part, jobs, cfg)):
            cvs = []
            for i in idx:
                k = (id(jobs[i].store), jobs[i].rep)
                if k not in cache:
                    cv = cache[k] = _compact(code_vectors(jobs[i].store, jobs[i].rep, jobs[i].td.rows))
                    cv.ids["test"] = test_ids.setdefault(k, cv.ids["test"])
                cvs.append(cache[k])
            fn = _lookup_classify if jobs[idx[0]].td.categorical else _lookup_regress
            work = len(idx) * len(cfg.l2) * max(len(c.vectors) for c in cvs) * max(jobs[idx[0]].td.n_classes, 8)
            with threads_for(work):
                for i, f in zip(idx, fn([jobs[i] for i in idx], cvs, cfg, device)):
                    out[i] = f
            if log:
                log(len(idx))
        cache.clear()
    _fit_frames(jobs, frames, cfg, device, out, log)
    return out  # type: ignore[return-value]


# -- helpers -----------------------------------------------------------------
class Gathered:
    """``values[ids]``, made when read (``np.asarray``): a count-table probe's test predictions as its
    per-vector predictions and the layer's test vector ids, which all probes of the layer share. Holding
    ``values[ids]`` per probe instead cost 4 bytes per test frame and probe (task, control, lookup) until
    the task was evaluated, the largest per-frame term left in a layer:k run."""

    __slots__ = ("values", "ids")

    def __init__(self, values: np.ndarray, ids: np.ndarray):
        self.values, self.ids = values, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self.values[self.ids]
        return a if dtype is None else a.astype(dtype, copy=False)


def _compact(cv: CodeVectors) -> CodeVectors:
    """int32 vector ids and no raw codes: 4 bytes per frame and layer instead of 16."""
    return CodeVectors(cv.vectors, {s: v.astype(np.int32) for s, v in cv.ids.items()}, {})


TABLE_COPIES = 3
"""Float64 copies of a problem's [strengths, vectors, features + classes] a count-table program holds."""


def table_batch(cfg: ProbeConfig, vectors: int, width: int) -> int:
    """Count-table problems of ``vectors`` rows and ``width`` features + classes that one program may hold
    within --memory-mb (at least one)."""
    per = max(len(cfg.l2) * vectors * width * 8 * TABLE_COPIES, 1)
    return max(1, int(cfg.memory_mb * 2**20 // per))


def _split_lookup(idx: list[int], jobs, cfg: ProbeConfig) -> list[list[int]]:
    """Cut a count-table group so one program's per-problem copies ([P*G, K, D] float64) fit the budget."""
    K = max(jobs[i].store.codebook_sizes[jobs[i].rep.layer - 1] for i in idx)
    width = max(data_dim(jobs[i]) for i in idx) + max(jobs[i].td.n_classes for i in idx)
    n = table_batch(cfg, K, width)
    return [idx[a : a + n] for a in range(0, len(idx), n)]


def data_dim(job: Job) -> int:
    from .data import feature_dim

    return feature_dim(job.store, job.rep)

def _pad(arrs: Sequence[np.ndarray], shape: tuple[int, ...], dtype, device) -> torch.Tensor:
    t = torch.zeros((len(arrs),) + shape, dtype=dtype, device=device)
    for p, a in enumerate(arrs):
        t[(p,) + tuple(slice(0, s) for s in a.shape)] = torch.as_tensor(a, dtype=dtype, device=device)
    return t


def _class_weights(train_counts: torch.Tensor, balance: bool) -> torch.Tensor:
    """[P, C]: 1, or n / (classes present * n_c) as scikit-learn's 'balanced'."""
    if not balance:
        return torch.ones_like(train_counts)
    n = train_counts.sum(-1, keepdim=True)
    present = (train_counts > 0).sum(-1, keepdim=True).clamp(min=1)
    return torch.where(train_counts > 0, n / (present * train_counts.clamp(min=1e-12)), torch.zeros_like(train_counts))


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    den = 2 * tp + fp + fn
    present = den > 0
    f1 = torch.where(present, 2 * tp / den.clamp(min=1e-300), torch.zeros_like(den))
    return f1.sum(-1) / present.sum(-1).clamp(min=1)


def _choose(score: torch.Tensor | None, G: int) -> np.ndarray:
    """Index of the best strength per probe (ties: the strongest regularisation, the later index)."""
    if score is None:
        return np.zeros(0, np.int64)
    s = score.detach().cpu().numpy()
    return (G - 1 - np.argmax(s[:, ::-1], axis=1)).astype(np.int64)


# -- lookup path -------------------------------------------------------------
def _lookup_classify(jobs, cvs, cfg: ProbeConfig, device, reference: bool = False) -> list[JobFit]:
    """Per-row jobs as count tables for :func:`fit_table_classify`; predictions gathered per test row.
    ``reference``: the slower computation the closed-form fit replaced (float64, autograd gradients), for tests."""
    td = jobs[0].td
    C, Call = td.n_train_classes, td.n_classes
    probs = []
    for job, cv in zip(jobs, cvs):
        U = len(cv.vectors)
        probs.append(TableProblem(cv.vectors, np.bincount(cv.ids["train"], minlength=U),
                                  count_table(cv.ids["train"], job.y["train"], U, C),
                                  count_table(cv.ids["val"], job.y["val"], U, Call), job.control))
    return [_gathered(f, cv) for f, cv in zip(fit_table_classify(probs, C, Call, cfg, device, reference), cvs)]


def _lookup_regress(jobs, cvs, cfg: ProbeConfig, device) -> list[JobFit]:
    """Per-row jobs as per-vector sums for :func:`fit_table_regress`; predictions gathered per test row."""
    probs = []
    for job, cv in zip(jobs, cvs):
        s = code_sums(cv.ids["train"], job.y["train"], len(cv.vectors))
        probs.append(TableProblem(cv.vectors, s.n, s, code_sums(cv.ids["val"], job.y["val"], len(cv.vectors)),
                                  job.control))
    return [_gathered(f, cv) for f, cv in zip(fit_table_regress(probs, cfg, device), cvs)]


def _gathered(f: JobFit, cv: CodeVectors) -> JobFit:
    """Per-vector predictions of a table fit, read per test row through the vector ids."""
    return dataclasses.replace(f, pred_test=Gathered(f.pred_test, cv.ids["test"]),
                               lookup_test=Gathered(f.lookup_test, cv.ids["test"]))


# -- count-table entry (probes/tables.py) ----------------------------------
@dataclasses.dataclass(frozen=True)
class TableProblem:
    """One count-table probe given by its tables rather than per-row ids (the streamed path of
    :mod:`.tables`): a layer's distinct vectors, the train rows per vector and the train / val tables."""

    vectors: np.ndarray
    """[U, D] distinct vectors of the layer."""
    counts: np.ndarray
    """[U] train rows per vector (int64)."""
    train: object
    """[U, C] float64 train (vector x class) counts, or a :class:`CodeSums` (regression)."""
    val: object
    """[U, Call] float64 val counts, or a :class:`CodeSums`."""
    control: bool = False


_WHITENERS: "OrderedDict[tuple, tuple[np.ndarray, Whitener]]" = OrderedDict()
_WHITENERS_LOCK = threading.Lock()
WHITENERS_KEPT = 16
"""Count-table whitenings kept (128 KB each at D = 128): two tasks' eight layers."""


def table_whitener(vectors: np.ndarray, counts: np.ndarray) -> Whitener:
    """:func:`.data.weighted_whitener` of a layer's distinct vectors under its train rows per vector,
    computed once for every problem that has both: a task's probe and its code control (the control
    relabels the same rows), f0 and f0_st (the same voiced rows), so four whitenings of each layer
    of the F0 tasks were one. Keyed by the vectors object (the per-store cache of
    :func:`.tables.distinct_vectors`, held here so its id is not reused) and the counts' bytes."""
    c = np.ascontiguousarray(counts, np.float64)
    key = (id(vectors), vectors.shape, hashlib.blake2b(c.tobytes(), digest_size=16).digest())
    with _WHITENERS_LOCK:
        hit = _WHITENERS.get(key)
        if hit is not None and hit[0] is vectors:
            _WHITENERS.move_to_end(key)
            return hit[1]
    wh = weighted_whitener(vectors, c)
    with _WHITENERS_LOCK:
        _WHITENERS[key] = (vectors, wh)
        while len(_WHITENERS) > WHITENERS_KEPT:
            _WHITENERS.popitem(last=False)
    return wh


def fit_table_classify(probs: Sequence[TableProblem], C: int, Call: int, cfg: ProbeConfig, device,
                       reference: bool = False) -> list[JobFit]:
    """Logistic probes on count tables (whitening weighted by the train counts, every L2 strength, the
    strength chosen on val macro-F1); ``pred_test`` / ``lookup_test`` of each JobFit are per *vector*
    (index them with the layer's code -> vector map to get per-code predictions). ``reference``: float64
    with autograd gradients, the computation the closed-form fit replaced (for tests)."""
    G = len(cfg.l2)
    whs = [table_whitener(p.vectors, p.counts) for p in probs]
    Zs = [wh.transform(p.vectors).astype(np.float64) for wh, p in zip(whs, probs)]
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, z in enumerate(Zs):
        shapes.setdefault(z.shape, []).append(i)
    if len(shapes) > 1:
        # One program per shape: padding a problem to another's shape changes the length of its
        # products and sums, so their rounding, and a fit must not depend on the problems beside it.
        out: list[JobFit | None] = [None] * len(probs)
        for idx in shapes.values():
            for i, f in zip(idx, fit_table_classify([probs[i] for i in idx], C, Call, cfg, device, reference)):
                out[i] = f
        return out  # type: ignore[return-value]
    Ts, Tvs = [p.train for p in probs], [p.val for p in probs]
    Umax, rmax = max(len(z) for z in Zs), max(z.shape[1] for z in Zs)
    # float32: whitened features are O(1) and the loss sums non-negative terms, so single precision reaches
    # the float64 optimum (to the stopping tolerance) at half the memory traffic.
    dt = torch.float64 if cfg.l1 > 0 or reference else torch.float32
    # A code control's label is a function of the code, so its val rows are the train codes again with the
    # same labels (other weights): val loss measures memorisation, not generalisation, and stopping on it
    # made the kept iterate depend on the optimiser's road (warm start or zero start gave control accuracies
    # 0.03-0.05 apart). Its fit at each strength is the penalised optimum (unique for L2 > 0); val only
    # chooses the strength. Task probes and type controls, whose val rows are new evidence, stop on val.
    optimum = probs[0].control and cfg.control == "code"
    Z = _pad(Zs, (Umax, rmax), dt, device)
    T = _pad(Ts, (Umax, C), dt, device)
    Tv = _pad(Tvs, (Umax, Call), torch.float64, device)
    cw = _class_weights(T.sum(1), cfg.balance)
    has_val = bool(Tv.sum() > 0)
    Tv_fit = Tv[..., :C].to(dt)
    fit = fit_logistic(lambda: iter([(Z, T)]), (lambda: iter([(Z, Tv_fit)])) if has_val else None,
                       len(probs), rmax, C, cw, cfg.l2, cfg.l1, cfg.max_iter, cfg.patience, closed_form=not reference,
                       stop_on_val=not optimum)
    with torch.no_grad():
        pred = logits_of(Z, fit.W, fit.b).argmax(-1)  # [P, G, U]
        choice = _val_choice(pred, Tv, Call, G, device) if has_val else np.zeros(len(probs), np.int64)
    out = []
    for p, (pr, wh) in enumerate(zip(probs, whs)):
        g, U, r = int(choice[p]), len(pr.vectors), wh.dim
        out.append(JobFit(wh, fit.W[p, g, :r].cpu().numpy(), fit.b[p, g].cpu().numpy(), float(cfg.l2[g]),
                          pred[p, g, :U].cpu().numpy().astype(np.int32),
                          lookup_classifier(np.asarray(pr.train)).astype(np.int32), fit.iters))
    return out


def _val_choice(pred: torch.Tensor, Tv: torch.Tensor, Call: int, G: int, device) -> np.ndarray:
    """Best strength per probe by val macro-F1 from per-vector predictions ``[P, G, U]`` and val tables."""
    P_, G_, U_ = pred.shape
    hit = Tv[:, None].expand(P_, G_, U_, Call).gather(-1, pred[..., None]).squeeze(-1)
    zero = torch.zeros((P_, G_, Call), dtype=Tv.dtype, device=device)
    tp = zero.clone().scatter_add_(2, pred, hit)
    predn = zero.scatter_add_(2, pred, Tv.sum(-1)[:, None, :].expand(P_, G_, U_).contiguous())
    truen = Tv.sum(1)[:, None, :]
    return _choose(_f1(tp, predn - tp, truen - tp), G)


def fit_table_regress(probs: Sequence[TableProblem], cfg: ProbeConfig, device) -> list[JobFit]:
    """Ridge probes from per-vector sums (every L2 strength, chosen on val SSE); predictions per vector
    (see fit_table_classify)."""
    G = len(cfg.l2)
    whs = [table_whitener(p.vectors, p.train.n) for p in probs]
    Zs = [wh.transform(p.vectors).astype(np.float64) for wh, p in zip(whs, probs)]
    Umax, rmax = max(len(z) for z in Zs), max(z.shape[1] for z in Zs)
    dt = torch.float64
    Z = _pad(Zs, (Umax, rmax), dt, device)

    def stats(sums) -> RidgeStats:
        n, s1, s2 = (_pad([getattr(s, f) for s in sums], (Umax,), dt, device) for f in ("n", "s1", "s2"))
        return ridge_stats(iter([(Z, n, s1, s2)]))

    w, b = fit_ridge(stats([p.train for p in probs]), cfg.l2)
    vst = stats([p.val for p in probs])
    choice = _choose(-ridge_sse(vst, w, b), G) if bool(vst.n.sum() > 0) else np.zeros(len(probs), np.int64)
    with torch.no_grad():
        pred = torch.einsum("pur,pgr->pgu", Z, w) + b[:, :, None]
    out = []
    for p, (pr, wh) in enumerate(zip(probs, whs)):
        g, U, r = int(choice[p]), len(pr.vectors), wh.dim
        out.append(JobFit(wh, w[p, g, :r].cpu().numpy(), b[p, g].cpu().numpy(), float(cfg.l2[g]),
                          pred[p, g, :U].cpu().numpy().astype(np.float32),
                          lookup_regressor(pr.train).astype(np.float32)))
    return out


# -- frame path --------------------------------------------------------------
# Logistic probes on more train frames than --select-frames are fitted in a bounded number of passes:
# the L2 strength is chosen on a subsample of whole utterances (every strength, early stopping and the
# val check on a val subsample), then the chosen strength alone is refitted on all train rows from the
# subsample's solution, each L-BFGS evaluation one exact pass (at most --refit-passes), and test is
# predicted in one pass. Before, every strength was fitted on all rows and, beyond the memory budget,
# every one of hundreds of evaluations re-materialised all train frames from the codes.
#
# Memory: the jobs of a store are cut into groups whose whole charge (:func:`_charge`: frames held,
# every representation's whitening and folded tables, the optimiser's state, a chunk's temporaries)
# fits --memory-mb; a representation's features are built for its group only and freed after it, and
# the jobs of one representation (a task and its control) read one copy of its frames. A group's
# results do not depend on its company: chunks have a fixed number of rows per store and task, and
# every computation on them is per probe, so a probe fitted alone or beside others, in memory or
# streamed, gives the same numbers.
HISTORY = 10
"""Curvature pairs of :class:`.linear.BatchedLBFGS` (its default)."""
OPT_COPIES = 2 * HISTORY + 14
"""Problem-sized float32 vectors the optimiser holds at once: the S / Y history, x, g, the kept iterate,
the line search's trial point and gradient, its accepted copies, the direction and the recursion's
work vector, s and y, and the objective's gradient laid out per probe and back."""
WHITEN_BYTES = 16 * 2**20
"""Raw float32 frames read at a time for the whitening moments (plus their float64 copy)."""


def _fit_frames(jobs, idx: list[int], cfg: ProbeConfig, device, out: list, log) -> None:
    by_store: dict[int, list[int]] = {}
    for i in idx:
        by_store.setdefault(id(jobs[i].store), []).append(i)
    for idx in by_store.values():  # all jobs of a store here share the task's rows (one TaskData)
        bounded = [i for i in idx if _bounded(jobs[i], cfg)]
        exact = [i for i in idx if not _bounded(jobs[i], cfg)]
        if exact:
            _fit_exact(jobs, exact, cfg, device, out, log)
        if bounded:
            _fit_bounded(jobs, bounded, cfg, device, out, log)


def _fit_exact(jobs, idx: list[int], cfg: ProbeConfig, device, out: list, log) -> None:
    td = jobs[idx[0]].td
    m = _chunk_of(jobs, idx, cfg, "select" if td.categorical else "ridge")
    for group, resident in _plan(_units(jobs, idx), jobs, cfg, td.rows, m):
        fr = _Frames(_features(jobs, group, device), td.rows, resident, device, chunk=m, width=_width(jobs, idx))
        fn = _frames_classify if td.categorical else _frames_regress
        work = len(group) * len(cfg.l2) * len(td.rows["train"]) * max(td.n_classes, fr.r)
        with threads_for(work):
            for i, f in zip(group, fn([jobs[i] for i in group], fr, cfg, device)):
                out[i] = f
        del fr  # the group's frames, whitening and tables
        if log:
            log(len(group))


def _fit_bounded(jobs, idx: list[int], cfg: ProbeConfig, device, out: list, log) -> None:
    td = jobs[idx[0]].td
    sub = _subsample(td, cfg)
    m_sel, m_fit = _chunk_of(jobs, idx, cfg, "select"), _chunk_of(jobs, idx, cfg, "refit")
    for group, resident in _plan(_units(jobs, idx), jobs, cfg, sub.rows, m_sel):
        # The refit's train frames are held only when the group would fit the budget with them too.
        refit_rows = {"train": td.rows["train"], "test": td.rows["test"]}
        units = _units(jobs, group)
        hold = _charge(units, jobs, cfg, refit_rows, True, m_fit, held=("train",)) <= cfg.memory_mb * 2**20
        feats = _features(jobs, group, device)
        for i, f in zip(group, _bounded_classify([jobs[i] for i in group], sub, feats, cfg, device,
                                                 resident, hold, m_sel, m_fit, _width(jobs, idx))):
            out[i] = f
        del feats
        if log:
            log(len(group))


def _units(jobs, idx: list[int]) -> list[list[int]]:
    """Jobs by representation (first-seen order): a task and its control read the same frames, so they are
    grouped together and their representation is held once."""
    by: dict[Repr, list[int]] = {}
    for i in idx:
        by.setdefault(jobs[i].rep, []).append(i)
    return list(by.values())


def _features(jobs, group: list[int], device) -> list["_RepFeatures"]:
    """One :class:`_RepFeatures` per job, built once per representation of the group."""
    made: dict[Repr, _RepFeatures] = {}
    for i in group:
        j = jobs[i]
        if j.rep not in made:
            made[j.rep] = _RepFeatures(j.store, j.rep, j.td, device)
    return [made[jobs[i].rep] for i in group]


def _width(jobs, idx: list[int]) -> int:
    """The padded width of a store's frames: its widest feature dimension (the whitened one's bound)."""
    return max(data_dim(jobs[i]) for i in idx)


def _chunk_of(jobs, idx: list[int], cfg: ProbeConfig, kind: str) -> int:
    """Rows per frame chunk of a store's jobs, the same for every group (see the section comment): a
    chunk's widest float32 tensor (a probe's logits of every strength, one representation's frames, or,
    for ridge, one representation's frames in float64) about CHUNK_BYTES."""
    td = jobs[idx[0]].td
    D = _width(jobs, idx)
    C = max(td.n_train_classes, 1)
    width = {"select": max(len(cfg.l2) * C, D), "refit": max(C, D), "ridge": 2 * D}[kind]
    return _chunk_rows(width)


def _rep_bytes(store: Store, rep: Repr, level: str, n_train: int) -> tuple[int, int]:
    """(held, build): what one representation holds while its group is fitted (the whitening's float64 mean
    and projection and its float32 copy, or the folded tables of layer:k / cumulative:k frames), and what
    building it needs on top at its peak (the whitening's moments and a raw chunk, or one layer's float64
    table); representations are built one after the other, so only the largest build counts."""
    from .data import feature_dim

    D = feature_dim(store, rep)
    held = D * D * 8 + D * 8
    if level == "frame" and rep.kind in ("layer", "cumulative"):
        K = sum(store.codebook_sizes[l] for l in ([rep.layer - 1] if rep.kind == "layer" else range(rep.layer)))
        held += K * D * 4
        build = max(2 * D * D * 8, 2 * max(store.codebook_sizes) * D * 8)
    else:
        held += D * D * 4
        build = 2 * D * D * 8
    return held, max(build, min(n_train, _whiten_rows(store, rep)) * D * 12 + 2 * D * D * 8)


def _charge(units: list[list[int]], jobs, cfg: ProbeConfig, rows: dict[str, np.ndarray], resident: bool, m: int,
            held: Sequence[str] | None = None) -> int:
    """Bytes a group of ``units`` (see :func:`_units`) holds at its peak when fitted together on ``rows``,
    with the frames of splits ``held`` (default all) in memory (``resident``) or streamed in chunks of ``m``
    rows: the frames (one copy per representation, zero-padded to the widest), every representation's
    :func:`_rep_bytes`, the labels, and, logistic, the optimiser's state and one probe's chunk temporaries,
    ridge the per-probe moment matrices and their eigendecomposition. The whitened width is taken at its
    bound, the feature dimension."""
    first = jobs[units[0][0]]
    store, td = first.store, first.td
    reps = [jobs[u[0]].rep for u in units]
    P, R = sum(len(u) for u in units), len(reps)
    r = max(data_dim(jobs[u[0]]) for u in units)
    n_all = sum(len(v) for v in rows.values())
    n_held = sum(len(rows[s]) for s in (rows if held is None else held))
    m = max(1, min(m, max(len(v) for v in rows.values())))  # no chunk is longer than its split
    frames = R * r * 4 * (n_held if resident else m) + 3 * m * r * 4  # + one representation's chunk being made
    per_rep = [_rep_bytes(store, rep, td.level, len(td.rows["train"])) for rep in reps]
    tables = sum(h for h, _ in per_rep) + max(b for _, b in per_rep)
    labels = P * n_all * 8 * 2
    G = len(cfg.l2)
    if td.categorical:
        C = td.n_train_classes
        fit = P * G * (r * C + C) * 4 * OPT_COPIES + 3 * m * G * C * 4 + 2 * r * G * C * 4
    else:
        fit = P * (6 * r * r + 3 * G * r) * 8 + 2 * m * r * 8
    return frames + tables + labels + fit


def _plan(units: list[list[int]], jobs, cfg: ProbeConfig, rows: dict[str, np.ndarray],
          m: int) -> list[tuple[list[int], bool]]:
    """Greedy groups of whole units whose :func:`_charge` in memory fits --memory-mb; a unit over it alone
    is streamed (its charge then the chunks', not the frames')."""
    budget = cfg.memory_mb * 2**20
    groups: list[tuple[list[int], bool]] = []
    cur: list[list[int]] = []
    for u in units:
        if _charge([u], jobs, cfg, rows, True, m) > budget:
            groups.append((list(u), False))
            continue
        if cur and _charge(cur + [u], jobs, cfg, rows, True, m) > budget:
            groups.append(([i for c in cur for i in c], True))
            cur = []
        cur.append(u)
    if cur:
        groups.append(([i for c in cur for i in c], True))
    return groups


def _bounded(job: Job, cfg: ProbeConfig) -> bool:
    """Fitted by subsample selection and a bounded refit (logistic, L2 only, more train rows than the subsample)."""
    return (job.td.categorical and cfg.select_frames > 0 and cfg.l1 == 0
            and len(job.td.rows["train"]) > cfg.select_frames)


@dataclasses.dataclass(frozen=True)
class _Subsample:
    """Whole utterances drawn (seeded) from the train and val splits, at most ``select_frames`` rows each."""

    td: TaskData
    """The task restricted to the subsample (no test rows)."""
    keep: dict[str, np.ndarray]
    """Boolean mask over the task's rows, per split."""

    @property
    def rows(self) -> dict[str, np.ndarray]:
        return self.td.rows


def _subsample(td: TaskData, cfg: ProbeConfig) -> _Subsample:
    from .data import _subsample_by_group

    keep = {}
    for k, s in enumerate(("train", "val")):
        g = td.groups[s]
        keep[s] = (_subsample_by_group(g, cfg.select_frames, cfg.seed + 1 + k) if len(g) > cfg.select_frames
                   else np.ones(len(g), bool))
    pick = lambda d: {s: d[s][m] for s, m in keep.items()}  # noqa: E731
    return _Subsample(dataclasses.replace(td, rows=pick(td.rows), y=pick(td.y), groups=pick(td.groups)), keep)


def _bounded_classify(jobs, sub: _Subsample, feats: list[_RepFeatures], cfg: ProbeConfig, device,
                      resident: bool = True, hold: bool = True, m_sel: int | None = None,
                      m_fit: int | None = None, width: int | None = None) -> list[JobFit]:
    """``resident``: the subsample's frames held (else streamed), ``hold``: the refit's train frames held;
    ``m_sel`` / ``m_fit``: rows per chunk of the two phases (default: :func:`_chunk_of` of these jobs);
    ``width``: the padded feature width (default: their widest feature dimension)."""
    td, P, C = jobs[0].td, len(jobs), jobs[0].td.n_train_classes
    idx = list(range(P))
    m_sel = _chunk_of(jobs, idx, cfg, "select") if m_sel is None else m_sel
    m_fit = _chunk_of(jobs, idx, cfg, "refit") if m_fit is None else m_fit
    # 1. Every strength on the subsample; the val check on the val subsample.
    sjobs = [Job(j.store, j.rep, sub.td, {s: np.asarray(j.y[s])[m] for s, m in sub.keep.items()}, j.control)
             for j in jobs]
    # The train subsample is held when the budget allows (every evaluation reads it); the val subsample,
    # read once per ROUND iterations, is made from the codes chunk by chunk instead (the same values: a
    # frame's features do not depend on its chunk), which keeps P x select_frames x r floats out of memory.
    width = _width(jobs, idx) if width is None else width
    fr = _Frames(feats, sub.rows, resident, device, splits=("train",), chunk=m_sel, width=width)
    with threads_for(P * len(cfg.l2) * len(sub.rows["train"]) * max(C, fr.r)):
        fit, choice, _ = _select(sjobs, fr, cfg, device)
    del fr
    g = torch.as_tensor(choice, device=device)
    ar = torch.arange(P, device=device)
    # 2. The chosen strengths on all train rows, warm-started, at most --refit-passes passes per probe.
    ys = [np.asarray(j.y["train"]) for j in jobs]
    # np.bincount reads the int32 labels as they are (an int64 copy was 8 bytes per train frame)
    counts = torch.stack([torch.from_numpy(np.bincount(y, minlength=C)[:C]) for y in ys]).float()
    cw = _class_weights(counts.to(device), cfg.balance)
    wsum = (counts.to(device) * cw).sum(-1).clamp(min=1e-12)
    n = len(td.rows["train"])
    full = _Frames(feats, {"train": td.rows["train"], "test": td.rows["test"]}, hold, device, splits=("train",),
                   chunk=m_fit, width=width)

    def train():
        for a, b, z in full.chunks("train"):
            yield z, torch.from_numpy(np.stack([y[a:b] for y in ys])).to(device)

    l2 = [float(cfg.l2[int(c)]) for c in choice]
    with threads_for(P * n * max(C, full.r)):
        ref = refit_logistic(train, fit.W[ar, g], fit.b[ar, g], cw, wsum, torch.tensor(l2, device=device),
                             cfg.refit_passes, slot=full.slot)
    # 3. Test in one pass.
    iters = [int(a) + int(b) for a, b in zip(fit.steps, ref.steps)]
    return _finish(jobs, full, ref.W, ref.b, l2, iters, [int(e) for e in ref.evals])


def _chunk_rows(width: int) -> int:
    """Rows per frame chunk so that one [.., m, width] float32 tensor is about CHUNK_BYTES."""
    return max(256, CHUNK_BYTES // (4 * width))


class _RepFeatures:
    """Whitening of one representation fitted on the task's train rows; whitened features on demand.

    ``layer:k`` and ``cumulative:k`` frames are sums of table lookups and whitening is
    affine, so the whitening is folded into the tables once (``T_l @ proj``): a chunk of
    whitened frames is then materialised straight from its codes, with no raw vectors
    and no per-chunk projection, by one ``embedding_bag`` (sum) over the k folded tables
    stacked end to end (a frame's codes, shifted by each table's start, are one bag):
    one pass over the chunk's output instead of k gathers and k - 1 additions of
    ``[m, r]`` temporaries. Other representations (latent) are read and projected per chunk.
    """

    def __init__(self, store: Store, rep: Repr, td: TaskData, device=None):
        self.store, self.rep, self.level = store, rep, td.level
        self.device = torch.device("cpu") if device is None else device
        self._pooled = None
        if td.level == "utterance":
            self._pooled = store.values(Repr(rep.kind, rep.layer, True))
        self.whitener = streamed_whitener(self.raw(td.rows["train"], _whiten_rows(store, rep)))
        self._layers: list[int] = []
        if td.level == "frame" and rep.kind in ("layer", "cumulative"):
            self._layers = [rep.layer - 1] if rep.kind == "layer" else list(range(rep.layer))
            proj = torch.from_numpy(self.whitener.proj)
            sizes = [store.codebook_sizes[l] for l in self._layers]
            # Filled a layer at a time (float64 product, then float32): the stacked float64 tables and their
            # concatenation were 3x the folded table at once (160 MB for cumulative:8 of 1024 x 1024).
            self._table = torch.empty((sum(sizes), self.whitener.dim), dtype=torch.float32, device=self.device)
            at = 0
            for l, K in zip(self._layers, sizes):
                self._table[at : at + K] = torch.from_numpy(np.asarray(store.tables[l], np.float64)) @ proj
                at += K
            self._start = np.cumsum([0] + sizes[:-1]).astype(np.int64)  # each table's first row
            self._offset = (torch.from_numpy(self.whitener.mean) @ proj).float().to(self.device)
        else:
            self._proj = torch.from_numpy(self.whitener.proj).float().to(self.device)
            self._mean = torch.from_numpy(self.whitener.mean).float().to(self.device)

    def raw(self, rows: np.ndarray, chunk: int = 65536) -> Iterator[np.ndarray]:
        if self._pooled is not None:
            yield np.asarray(self._pooled[rows], np.float32)
            return
        yield from iter_features(self.store, self.rep, rows, self.level, chunk)

    def z_t(self, rows: np.ndarray) -> torch.Tensor:
        """Whitened features ``[len(rows), r]`` (float32, on the device)."""
        if self._layers:
            codes = codes_at(self.store, rows, self._layers).astype(np.int64)  # torch indexes with int64
            codes += self._start
            z = torch.nn.functional.embedding_bag(torch.from_numpy(codes).to(self.device), self._table, mode="sum")
            return z.sub_(self._offset)
        parts = [(torch.from_numpy(x).to(self.device) - self._mean) @ self._proj for x in self.raw(rows)]
        return torch.cat(parts) if parts else torch.zeros((0, self.whitener.dim), device=self.device)

    def z(self, rows: np.ndarray) -> np.ndarray:
        return self.z_t(rows).cpu().numpy()


def _whiten_rows(store: Store, rep: Repr) -> int:
    """Raw rows per chunk of the whitening's moments: WHITEN_BYTES of float32 (65536 frames of D = 1024 were
    0.25 GB, and 0.5 GB more as float64, the largest transient of a frame fit)."""
    from .data import feature_dim

    return max(1024, WHITEN_BYTES // (4 * feature_dim(store, rep)))


class _Frames:
    """Whitened frames of a group of jobs (same store, same rows), in memory or streamed in chunks.

    The frames are held once per representation (``slot[p]``: the row of a chunk's ``[R, m, r]`` tensor that
    job p reads, zero-padded to the widest), built chunk by chunk into their place, so building them
    never holds a second copy. Streamed chunks are re-materialised from the codes on every pass (each pass
    of a full-batch fit is one exact loss and gradient), so memory is one chunk, whatever the number of
    frames. Chunks have ``chunk`` rows (held frames are built and cut at the same boundaries, so held and
    streamed chunks are equal bit for bit) and at least ``width`` columns: padded to one width per store,
    a probe's weights and the optimiser's vectors have the same layout whatever its group (padding to the
    group's widest shifted the bias entries and changed the rounding of cumulative:1 beside latent).
    ``splits``: the splits held when ``in_memory`` (default all).
    """

    def __init__(self, feats: list[_RepFeatures], rows: dict[str, np.ndarray], in_memory: bool, device,
                 max_chunk: int | None = None, splits: Sequence[str] | None = None, chunk: int = 65536,
                 width: int = 0):
        self.feats, self.rows, self.device = feats, rows, device
        self.chunk = min(chunk, max_chunk or chunk)
        self.reps: list[_RepFeatures] = []
        self.slot: list[int] = []
        for f in feats:
            at = next((k for k, g in enumerate(self.reps) if g is f), None)
            if at is None:
                at = len(self.reps)
                self.reps.append(f)
            self.slot.append(at)
        self.P, self.R, self.r = len(feats), len(self.reps), max([width] + [f.whitener.dim for f in feats])
        self.mem: dict[str, torch.Tensor] = {}
        if in_memory:
            for s in rows if splits is None else splits:
                t = torch.zeros((self.R, len(rows[s]), self.r), dtype=torch.float32, device=device)
                for a in range(0, len(rows[s]), self.chunk):
                    self._fill(t[:, a : a + self.chunk], rows[s][a : a + self.chunk])
                self.mem[s] = t

    def _fill(self, out: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        for k, f in enumerate(self.reps):
            out[k, :, : f.whitener.dim] = f.z_t(rows)
        return out

    def chunks(self, split: str) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(a, b, Z [R, b - a, r])``; read job p's frames as ``Z[slot[p]]``. Chunks have the rows fixed at
        construction, so a probe's numbers do not depend on the company it is fitted in."""
        rows = self.rows[split]
        m = self.chunk
        for a in range(0, len(rows), m):
            b = min(a + m, len(rows))
            if split in self.mem:
                yield a, b, self.mem[split][:, a:b]
            else:
                out = torch.zeros((self.R, b - a, self.r), dtype=torch.float32, device=self.device)
                yield a, b, self._fill(out, rows[a:b])

    def z(self, chunk: torch.Tensor, p: int) -> torch.Tensor:
        """Job p's frames ``[m, r]`` of a chunk."""
        return chunk[self.slot[p]]


class _Counted:
    """A batch source that counts its passes."""

    def __init__(self, src):
        self.src, self.n = src, 0

    def __call__(self):
        self.n += 1
        return self.src()


def _select(jobs, fr: _Frames, cfg: ProbeConfig, device):
    """Every strength fitted on ``fr``'s train rows: (the fit, the strength index kept per probe, each probe's
    passes over the train rows: those the program made for all its probes at once, such as the total
    weight, and the evaluations that included the probe; so a probe's count does not depend on the
    probes fitted beside it). Kept: the best val macro-F1, or for open-set tasks the best identification of val
    rows among val classes by the probe's class scores (val labels cannot score the probe's own outputs,
    so those fits run to convergence without early stopping)."""
    td = jobs[0].td
    C, Call, G, P = td.n_train_classes, td.n_classes, len(cfg.l2), len(jobs)
    Y = {s: torch.as_tensor(np.stack([np.asarray(j.y[s]) for j in jobs]), dtype=torch.long, device=device)
         for s in ("train", "val")}
    Yfit_val = torch.where(Y["val"] < C, Y["val"], torch.full_like(Y["val"], -1))
    counts = torch.stack([torch.bincount(Y["train"][p], minlength=C)[:C] for p in range(P)]).float()
    cw = _class_weights(counts, cfg.balance)

    def src(split, y):
        return lambda: ((z, y[:, a:b]) for a, b, z in fr.chunks(split))

    has_val = len(fr.rows["val"]) > 0
    train = _Counted(src("train", Y["train"]))
    val = src("val", Yfit_val) if has_val and not td.open_set else None
    # Code controls run to each strength's penalised optimum, val only choosing the strength; task probes
    # and type controls stop on val (see fit_table_classify). One flag per probe: they share this program.
    stop = [not (j.control and cfg.control == "code") for j in jobs]
    fit = fit_logistic(train, val, P, fr.r, C, cw, cfg.l2, cfg.l1, cfg.max_iter, cfg.patience, stop_on_val=stop,
                       slot=fr.slot)
    shared = train.n - fit.calls
    passes = [shared + int(e) for e in fit.evals]
    if td.open_set:
        from .metrics import nearest_centroid_loo

        choice = np.zeros(P, np.int64)
        if has_val and G > 1:
            for p, job in enumerate(jobs):
                yv, best = job.y["val"], -1.0
                for g in range(G):
                    acc = float(np.mean(nearest_centroid_loo(_embed(fr, "val", fit.W[p, g], p), yv,
                                                             job.td.groups["val"]) == yv))
                    if acc >= best:  # ties: the stronger strength
                        choice[p], best = g, acc
        return fit, choice, passes
    if not has_val:
        return fit, np.zeros(P, np.int64), passes
    return fit, _choose(_val_f1(fr, fit, Y["val"], G, Call, device), G), passes


def _val_f1(fr: _Frames, fit, yv_all: torch.Tensor, G: int, Call: int, device) -> torch.Tensor:
    """[P, G] val macro-F1 of every strength, from per-chunk class counts (a probe's chunk logits at a
    time: no per-row predictions of every probe and strength are kept)."""
    P = fr.P
    size = G * Call
    base = (torch.arange(G, device=device) * Call).view(G, 1)
    tp = torch.zeros((P, size), dtype=torch.float64, device=device)
    predn, truen = torch.zeros_like(tp), torch.zeros_like(tp)
    with torch.no_grad():
        for a, b, z in fr.chunks("val"):
            for p in range(P):
                pv = logits_of(fr.z(z, p)[None], fit.W[p : p + 1], fit.b[p : p + 1])[0].argmax(-1)  # [G, m]
                yv = yv_all[p, a:b][None].expand_as(pv)
                hit = (pv == yv).to(torch.float64)
                tp[p] += torch.bincount((base + yv).flatten(), weights=hit.flatten(), minlength=size)
                predn[p] += torch.bincount((base + pv).flatten(), minlength=size)
                truen[p] += torch.bincount((base + yv).flatten(), minlength=size)
    tp, predn, truen = (t.view(P, G, Call) for t in (tp, predn, truen))
    return _f1(tp, predn - tp, truen - tp)


def _frames_classify(jobs, fr: _Frames, cfg: ProbeConfig, device) -> list[JobFit]:
    """Every strength on all train rows (in memory or streamed every evaluation); test in one pass."""
    fit, choice, passes = _select(jobs, fr, cfg, device)
    ar, g = torch.arange(len(jobs), device=device), torch.as_tensor(choice, device=device)
    return _finish(jobs, fr, fit.W[ar, g], fit.b[ar, g], [float(cfg.l2[int(c)]) for c in choice],
                   [int(s) for s in fit.steps], passes)


def _finish(jobs, fr: _Frames, W: torch.Tensor, b: torch.Tensor, l2: list[float], iters: list[int],
            passes: list[int]) -> list[JobFit]:
    """JobFits of the kept weights (``W [P, r, C]``, ``b [P, C]``) with their test predictions, from one
    pass over the test rows (open-set tasks: identification of test rows by their class scores)."""
    P = len(jobs)
    if jobs[0].td.open_set:
        from .metrics import nearest_centroid_loo

        out = []
        for p, job in enumerate(jobs):
            emb = _embed(fr, "test", W[p], p)
            pred = nearest_centroid_loo(emb, job.y["test"], job.td.groups["test"])
            r = fr.feats[p].whitener.dim
            out.append(JobFit(fr.feats[p].whitener, W[p, :r].cpu().numpy(), b[p].cpu().numpy(), l2[p], pred,
                              None, iters[p], emb, passes[p]))
        return out
    pt = np.zeros((P, len(fr.rows["test"])), np.int32)
    with torch.no_grad():
        for a, bb, z in fr.chunks("test"):
            for p in range(P):
                pt[p, a:bb] = torch.addmm(b[p], fr.z(z, p), W[p]).argmax(-1).to(torch.int32).cpu().numpy()
    return [JobFit(fr.feats[p].whitener, W[p, : fr.feats[p].whitener.dim].cpu().numpy(), b[p].cpu().numpy(),
                   l2[p], pt[p], None, iters[p], passes=passes[p]) for p in range(P)]


def _embed(fr: _Frames, split: str, W: torch.Tensor, p: int) -> np.ndarray:
    """Class scores (without bias: priors of train classes say nothing about held-out ones)."""
    parts = [fr.z(z, p) @ W for _, _, z in fr.chunks(split)]
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, W.shape[1]), np.float32)


def _frames_regress(jobs, fr: _Frames, cfg: ProbeConfig, device) -> list[JobFit]:
    """Exact ridge from streamed sufficient statistics: one pass over each split (train, val, test), a
    probe's chunk at a time."""
    G, P = len(cfg.l2), len(jobs)
    Y = {s: [np.asarray(j.y[s]) for j in jobs] for s in fr.rows}

    def stats(split) -> RidgeStats:
        return ridge_stats_rows(((p, fr.z(z, p), torch.from_numpy(Y[split][p][a:b]).to(device))
                                 for a, b, z in fr.chunks(split) for p in range(P)), P, fr.r, device)

    w, b = fit_ridge(stats("train"), cfg.l2)
    if len(fr.rows["val"]):
        choice = _choose(-ridge_sse(stats("val"), w, b), G)
    else:
        choice = np.zeros(P, np.int64)
    ar, g = torch.arange(P, device=device), torch.as_tensor(choice, device=device)
    wk, bk = w[ar, g], b[ar, g]  # [P, r], [P]
    pt = np.zeros((P, len(fr.rows["test"])), np.float32)
    with torch.no_grad():
        for a, bb, z in fr.chunks("test"):
            for p in range(P):
                pt[p, a:bb] = (fr.z(z, p).double() @ wk[p] + bk[p]).float().cpu().numpy()
    return [
        JobFit(fr.feats[p].whitener, wk[p, : fr.feats[p].whitener.dim].cpu().numpy(),
               bk[p].cpu().numpy(), float(cfg.l2[int(choice[p])]), pt[p], passes=1)
        for p in range(P)
    ]

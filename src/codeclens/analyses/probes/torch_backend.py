"""The fast backend: exact count-table fits for layer:k, batched whitened fits otherwise.

A *job* is one probe to fit: (store, representation, labels), the labels being
the task's or a control task's. Jobs are grouped so that one tensor program
fits many of them at once, for every L2 strength; each job then keeps the
strength that is best on its val split (macro-F1, or least squared error).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np
import torch

from ...store import Repr, Store
from ..framestream import codes_at
from .config import ProbeConfig
from .data import TaskData, Whitener, iter_features, streamed_whitener, weighted_whitener
from .linear import (RidgeStats, fit_logistic, fit_ridge, logits_of, refit_logistic, ridge_sse, ridge_stats,
                     threads_for)
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


def _split_lookup(idx: list[int], jobs, cfg: ProbeConfig) -> list[list[int]]:
    """Cut a count-table group so one program's per-problem copies ([P*G, K, D] float64) fit the budget."""
    K = max(jobs[i].store.codebook_sizes[jobs[i].rep.layer - 1] for i in idx)
    width = max(data_dim(jobs[i]) for i in idx) + max(jobs[i].td.n_classes for i in idx)
    per = max(len(cfg.l2) * K * width * 8 * 3, 1)
    n = max(1, int(cfg.memory_mb * 2**20 // per))
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


def fit_table_classify(probs: Sequence[TableProblem], C: int, Call: int, cfg: ProbeConfig, device,
                       reference: bool = False) -> list[JobFit]:
    """Logistic probes on count tables (whitening weighted by the train counts, every L2 strength, the
    strength chosen on val macro-F1); ``pred_test`` / ``lookup_test`` of each JobFit are per *vector*
    (index them with the layer's code -> vector map to get per-code predictions). ``reference``: float64
    with autograd gradients, the computation the closed-form fit replaced (for tests)."""
    G = len(cfg.l2)
    whs = [weighted_whitener(p.vectors, p.counts) for p in probs]
    Zs = [wh.transform(p.vectors).astype(np.float64) for wh, p in zip(whs, probs)]
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
    whs = [weighted_whitener(p.vectors, p.train.n) for p in probs]
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
# the L2 strength is chosen on an in-memory subsample of whole utterances (every strength, early
# stopping and the val check on a val subsample), then the chosen strength alone is refitted on all train
# rows from the subsample's solution, each L-BFGS evaluation one exact pass (at most --refit-passes), and
# test is predicted in one pass. Before, every strength was fitted on all rows and, beyond the memory
# budget, every one of hundreds of evaluations re-materialised all train frames from the codes.
def _fit_frames(jobs, idx: list[int], cfg: ProbeConfig, device, out: list, log) -> None:
    by_store: dict[int, list[int]] = {}
    for i in idx:
        by_store.setdefault(id(jobs[i].store), []).append(i)
    for idx in by_store.values():
        feats: dict[Repr, _RepFeatures] = {}
        for i in idx:
            j = jobs[i]
            if j.rep not in feats:
                feats[j.rep] = _RepFeatures(j.store, j.rep, j.td, device)
        bounded = [i for i in idx if _bounded(jobs[i], cfg)]
        exact = [i for i in idx if i not in bounded]
        for group, in_memory in _plan(exact, jobs, feats, cfg.memory_mb):
            fr = _Frames([feats[jobs[i].rep] for i in group], jobs[group[0]].td.rows, in_memory, device)
            fn = _frames_classify if jobs[group[0]].td.categorical else _frames_regress
            td = jobs[group[0]].td
            work = len(group) * len(cfg.l2) * len(td.rows["train"]) * max(td.n_classes, fr.r)
            with threads_for(work):
                for i, f in zip(group, fn([jobs[i] for i in group], fr, cfg, device)):
                    out[i] = f
            if log:
                log(len(group))
        if bounded:
            sub = _subsample(jobs[bounded[0]].td, cfg)  # all jobs of a store here share the task's rows
            for group, _ in _plan(bounded, jobs, feats, cfg.memory_mb, sub.rows):
                for i, f in zip(group, _bounded_classify([jobs[i] for i in group], sub,
                                                          [feats[jobs[i].rep] for i in group], cfg, device)):
                    out[i] = f
                if log:
                    log(len(group))


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


def _bounded_classify(jobs, sub: _Subsample, feats: list[_RepFeatures], cfg: ProbeConfig, device) -> list[JobFit]:
    td, P, C = jobs[0].td, len(jobs), jobs[0].td.n_train_classes
    # 1. Every strength on the subsample (in memory); the val check on the val subsample.
    sjobs = [Job(j.store, j.rep, sub.td, {s: np.asarray(j.y[s])[m] for s, m in sub.keep.items()}, j.control)
             for j in jobs]
    # The train subsample is held (every evaluation reads it); the val subsample, read once per ROUND
    # iterations, is made from the codes chunk by chunk instead (the same values: a frame's features do
    # not depend on its chunk), which keeps P x select_frames x r floats out of memory.
    fr = _Frames(feats, sub.rows, True, device, splits=("train",))
    m = _chunk_rows(P * max(len(cfg.l2) * C, fr.r))
    with threads_for(P * len(cfg.l2) * len(sub.rows["train"]) * max(C, fr.r)):
        fit, choice, _ = _select(sjobs, fr, cfg, device, m)
    del fr
    g = torch.as_tensor(choice, device=device)
    ar = torch.arange(P, device=device)
    # 2. The chosen strengths on all train rows, warm-started, at most --refit-passes passes.
    ys = [np.asarray(j.y["train"]) for j in jobs]
    # np.bincount reads the int32 labels as they are (an int64 copy was 8 bytes per train frame)
    counts = torch.stack([torch.from_numpy(np.bincount(y, minlength=C)[:C]) for y in ys]).float()
    cw = _class_weights(counts.to(device), cfg.balance)
    wsum = (counts.to(device) * cw).sum(-1).clamp(min=1e-12)
    n = len(td.rows["train"])
    resident = P * n * max(f.whitener.dim for f in feats) * 4 <= cfg.memory_mb * 2**20
    full = _Frames(feats, {"train": td.rows["train"], "test": td.rows["test"]}, resident, device, splits=("train",))
    m = _chunk_rows(P * max(C, full.r))  # a chunk's features and its logits each about CHUNK_BYTES

    def train():
        for a, b, z in full.chunks("train", m):
            yield z, torch.from_numpy(np.stack([y[a:b] for y in ys])).to(device)

    l2 = [float(cfg.l2[int(c)]) for c in choice]
    with threads_for(P * n * max(C, full.r)):
        ref = refit_logistic(train, fit.W[ar, g], fit.b[ar, g], cw, wsum, torch.tensor(l2, device=device),
                             cfg.refit_passes)
    # 3. Test in one pass.
    return _finish(jobs, full, ref.W, ref.b, l2, fit.iters + ref.iters, ref.passes, m)


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
        self.whitener = streamed_whitener(self.raw(td.rows["train"]))
        self._layers: list[int] = []
        if td.level == "frame" and rep.kind in ("layer", "cumulative"):
            self._layers = [rep.layer - 1] if rep.kind == "layer" else list(range(rep.layer))
            proj = torch.from_numpy(self.whitener.proj)
            tables = [torch.from_numpy(np.asarray(store.tables[l], np.float64)) @ proj for l in self._layers]
            self._table = torch.cat(tables).float().to(self.device)  # [sum of K_l, r]
            self._start = np.cumsum([0] + [len(t) for t in tables[:-1]]).astype(np.int64)  # each table's first row
            self._offset = (torch.from_numpy(self.whitener.mean) @ proj).float().to(self.device)
        else:
            self._proj = torch.from_numpy(self.whitener.proj).float().to(self.device)
            self._mean = torch.from_numpy(self.whitener.mean).float().to(self.device)

    def raw(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        if self._pooled is not None:
            yield np.asarray(self._pooled[rows], np.float32)
            return
        yield from iter_features(self.store, self.rep, rows, self.level)

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


def _stack(zs: Sequence[torch.Tensor], n: int, r: int, device) -> torch.Tensor:
    """``[P, n, r]`` with each probe's features zero-padded to width r."""
    t = torch.zeros((len(zs), n, r), dtype=torch.float32, device=device)
    for p, z in enumerate(zs):
        t[p, :, : z.shape[1]] = z
    return t


def _plan(idx: list[int], jobs, feats, memory_mb: int,
          rows: dict[str, np.ndarray] | None = None) -> list[tuple[list[int], bool]]:
    """Greedy groups within the memory budget (features of ``rows``, default each job's own); a job
    alone over budget is streamed."""
    budget = memory_mb * 2**20
    groups: list[tuple[list[int], bool]] = []
    cur, used = [], 0
    for i in idx:
        n = sum(len(r) for r in (jobs[i].td.rows if rows is None else rows).values())
        cost = n * feats[jobs[i].rep].whitener.dim * 4
        if cost > budget:
            groups.append(([i], False))
            continue
        if cur and used + cost > budget:
            groups.append((cur, True))
            cur, used = [], 0
        cur.append(i)
        used += cost
    if cur:
        groups.append((cur, True))
    return groups


class _Frames:
    """Whitened frames of a group of jobs (same store, same rows), in memory or streamed in chunks.

    Streamed chunks are re-materialised from the codes on every pass (each pass of a
    full-batch fit is one exact loss and gradient), so memory is one chunk, whatever
    the number of frames. ``splits``: the splits held when ``in_memory`` (default all).
    """

    def __init__(self, feats: list[_RepFeatures], rows: dict[str, np.ndarray], in_memory: bool, device,
                 max_chunk: int | None = None, splits: Sequence[str] | None = None):
        self.feats, self.rows, self.device, self.max_chunk = feats, rows, device, max_chunk
        self.P, self.r = len(feats), max(f.whitener.dim for f in feats)
        self.mem: dict[str, torch.Tensor] = {}
        if in_memory:
            for s in rows if splits is None else splits:
                self.mem[s] = self._make(rows[s])

    def _make(self, rows: np.ndarray) -> torch.Tensor:
        per_rep: dict[Repr, torch.Tensor] = {}
        for f in self.feats:
            if f.rep not in per_rep:
                per_rep[f.rep] = f.z_t(rows)
        return _stack([per_rep[f.rep] for f in self.feats], len(rows), self.r, self.device)

    def chunks(self, split: str, m: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        rows = self.rows[split]
        m = min(m, self.max_chunk or m)
        for a in range(0, len(rows), m):
            b = min(a + m, len(rows))
            if split in self.mem:
                yield a, b, self.mem[split][:, a:b]
            else:
                yield a, b, self._make(rows[a:b])


class _Counted:
    """A batch source that counts its passes."""

    def __init__(self, src):
        self.src, self.n = src, 0

    def __call__(self):
        self.n += 1
        return self.src()


def _select(jobs, fr: _Frames, cfg: ProbeConfig, device, m: int):
    """Every strength fitted on ``fr``'s train rows: (the fit, the strength index kept per probe, passes over
    the train rows). Kept: the best val macro-F1, or for open-set tasks the best identification of val
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
        return lambda: ((z, y[:, a:b]) for a, b, z in fr.chunks(split, m))

    has_val = len(fr.rows["val"]) > 0
    train = _Counted(src("train", Y["train"]))
    val = src("val", Yfit_val) if has_val and not td.open_set else None
    # Code controls run to each strength's penalised optimum, val only choosing the strength; task probes
    # and type controls stop on val (see fit_table_classify). One flag per probe: they share this program.
    stop = [not (j.control and cfg.control == "code") for j in jobs]
    fit = fit_logistic(train, val, P, fr.r, C, cw, cfg.l2, cfg.l1, cfg.max_iter, cfg.patience, stop_on_val=stop)
    if td.open_set:
        from .metrics import nearest_centroid_loo

        choice = np.zeros(P, np.int64)
        if has_val and G > 1:
            for p, job in enumerate(jobs):
                yv, best = job.y["val"], -1.0
                for g in range(G):
                    acc = float(np.mean(nearest_centroid_loo(_embed(fr, "val", fit.W[p, g], p, m), yv,
                                                             job.td.groups["val"]) == yv))
                    if acc >= best:  # ties: the stronger strength
                        choice[p], best = g, acc
        return fit, choice, train.n
    if not has_val:
        return fit, np.zeros(P, np.int64), train.n
    parts = []
    with torch.no_grad():
        for a, b, z in fr.chunks("val", m):
            parts.append(logits_of(z, fit.W, fit.b).argmax(-1))
    pv = torch.cat(parts, -1)  # [P, G, n]
    yv = Y["val"][:, None, :].expand_as(pv)
    base = (torch.arange(P * G, device=device) * Call).view(P, G, 1)
    size = P * G * Call
    hit = (pv == yv).to(torch.float64)
    tp = torch.bincount((base + yv).flatten(), weights=hit.flatten(), minlength=size).view(P, G, Call)
    predn = torch.bincount((base + pv).flatten(), minlength=size).view(P, G, Call).double()
    truen = torch.bincount((base + yv).flatten(), minlength=size).view(P, G, Call).double()
    return fit, _choose(_f1(tp, predn - tp, truen - tp), G), train.n


def _frames_classify(jobs, fr: _Frames, cfg: ProbeConfig, device) -> list[JobFit]:
    """Every strength on all train rows (in memory or streamed every evaluation); test in one pass."""
    td = jobs[0].td
    m = _chunk_rows(len(jobs) * len(cfg.l2) * max(td.n_train_classes, 1))  # as before: logits bound the chunk
    fit, choice, passes = _select(jobs, fr, cfg, device, m)
    ar, g = torch.arange(len(jobs), device=device), torch.as_tensor(choice, device=device)
    return _finish(jobs, fr, fit.W[ar, g], fit.b[ar, g], [float(cfg.l2[int(c)]) for c in choice], fit.iters, passes, m)


def _finish(jobs, fr: _Frames, W: torch.Tensor, b: torch.Tensor, l2: list[float], iters: int, passes: int,
            m: int) -> list[JobFit]:
    """JobFits of the kept weights (``W [P, r, C]``, ``b [P, C]``) with their test predictions, from one
    pass over the test rows (open-set tasks: identification of test rows by their class scores)."""
    P = len(jobs)
    if jobs[0].td.open_set:
        from .metrics import nearest_centroid_loo

        out = []
        for p, job in enumerate(jobs):
            emb = _embed(fr, "test", W[p], p, m)
            pred = nearest_centroid_loo(emb, job.y["test"], job.td.groups["test"])
            r = fr.feats[p].whitener.dim
            out.append(JobFit(fr.feats[p].whitener, W[p, :r].cpu().numpy(), b[p].cpu().numpy(), l2[p], pred,
                              None, iters, emb, passes))
        return out
    parts = []
    with torch.no_grad():
        for _, _, z in fr.chunks("test", m):
            parts.append(torch.baddbmm(b[:, None, :], z, W).argmax(-1).to(torch.int32))
    pt = torch.cat(parts, -1).cpu().numpy() if parts else np.zeros((P, 0), np.int32)
    return [JobFit(fr.feats[p].whitener, W[p, : fr.feats[p].whitener.dim].cpu().numpy(), b[p].cpu().numpy(),
                   l2[p], pt[p], None, iters, passes=passes) for p in range(P)]


def _embed(fr: _Frames, split: str, W: torch.Tensor, p: int, m: int) -> np.ndarray:
    """Class scores (without bias: priors of train classes say nothing about held-out ones)."""
    parts = [torch.einsum("mr,rc->mc", z[p], W) for _, _, z in fr.chunks(split, m)]
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, W.shape[1]), np.float32)


def _frames_regress(jobs, fr: _Frames, cfg: ProbeConfig, device) -> list[JobFit]:
    """Exact ridge from streamed sufficient statistics: one pass over each split (train, val, test)."""
    G, P = len(cfg.l2), len(jobs)
    m = 65536
    Y = {s: [np.asarray(j.y[s]) for j in jobs] for s in fr.rows}

    def chunks(split):
        for a, b, z in fr.chunks(split, m):
            y = torch.from_numpy(np.stack([v[a:b] for v in Y[split]])).to(device=device, dtype=torch.float64)
            yield z, torch.ones_like(y), y, y * y

    w, b = fit_ridge(ridge_stats(chunks("train")), cfg.l2)
    if len(fr.rows["val"]):
        choice = _choose(-ridge_sse(ridge_stats(chunks("val")), w, b), G)
    else:
        choice = np.zeros(P, np.int64)
    ar, g = torch.arange(P, device=device), torch.as_tensor(choice, device=device)
    wk, bk = w[ar, g], b[ar, g]  # [P, r], [P]
    parts = []
    with torch.no_grad():
        for _, _, z in fr.chunks("test", m):
            parts.append((torch.einsum("pmr,pr->pm", z.double(), wk) + bk[:, None]).float())
    pt = torch.cat(parts, -1).cpu().numpy() if parts else np.zeros((P, 0), np.float32)
    return [
        JobFit(fr.feats[p].whitener, wk[p, : fr.feats[p].whitener.dim].cpu().numpy(),
               bk[p].cpu().numpy(), float(cfg.l2[int(choice[p])]), pt[p], passes=1)
        for p in range(P)
    ]

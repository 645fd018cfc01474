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
from .linear import RidgeStats, fit_logistic, fit_ridge, logits_of, ridge_sse, ridge_stats, threads_for
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
    emb_test: np.ndarray | None = None
    """Open-set tasks: the probe's class scores of every test row (an embedding of the held-out classes)."""


def fit_jobs(jobs: Sequence[Job], cfg: ProbeConfig, device: torch.device, log=None) -> list[JobFit]:
    """Fit all jobs (of one task); results in job order."""
    out: list[JobFit | None] = [None] * len(jobs)
    lookup = [i for i, j in enumerate(jobs) if j.lookup]
    frames = [i for i, j in enumerate(jobs) if not j.lookup]
    cache: dict[tuple[int, Repr], object] = {}
    test_ids: dict[tuple[int, Repr], np.ndarray] = {}  # one array per layer, shared by its task, control, lookup
    # One group per layer (and class list); within it tasks and code controls are fitted apart (their
    # precisions differ, see _lookup_classify). A layer's per-frame vector ids live while its group is fitted
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
    by_store: dict[int, list[int]] = {}
    for i in frames:
        by_store.setdefault(id(jobs[i].store), []).append(i)
    for idx in by_store.values():
        feats: dict[Repr, _RepFeatures] = {}
        for i in idx:
            j = jobs[i]
            if j.rep not in feats:
                feats[j.rep] = _RepFeatures(j.store, j.rep, j.td, device)
        for group, in_memory in _plan(idx, jobs, feats, cfg.memory_mb):
            fr = _Frames([feats[jobs[i].rep] for i in group], jobs[group[0]].td.rows, in_memory, device)
            fn = _frames_classify if jobs[group[0]].td.categorical else _frames_regress
            td = jobs[group[0]].td
            work = len(group) * len(cfg.l2) * len(td.rows["train"]) * max(td.n_classes, fr.r)
            with threads_for(work):
                for i, f in zip(group, fn([jobs[i] for i in group], fr, cfg, device)):
                    out[i] = f
            if log:
                log(len(group))
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
    # Task probes in float32: whitened features are O(1) and the loss sums non-negative terms, so single
    # precision reaches the float64 optimum (to the stopping tolerance) at half the memory traffic. Code
    # controls stay float64: at weak L2 they are near-memorisation problems stopped early on val, whose
    # macro-F1 moved by up to 0.06 between precisions (the same accuracy, other near-tied codes).
    dt = torch.float64 if cfg.l1 > 0 or reference or probs[0].control else torch.float32
    Z = _pad(Zs, (Umax, rmax), dt, device)
    T = _pad(Ts, (Umax, C), dt, device)
    Tv = _pad(Tvs, (Umax, Call), torch.float64, device)
    cw = _class_weights(T.sum(1), cfg.balance)
    has_val = bool(Tv.sum() > 0)
    Tv_fit = Tv[..., :C].to(dt)
    fit = fit_logistic(lambda: iter([(Z, T)]), (lambda: iter([(Z, Tv_fit)])) if has_val else None,
                       len(probs), rmax, C, cw, cfg.l2, cfg.l1, cfg.max_iter, cfg.patience, closed_form=not reference)
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
class _RepFeatures:
    """Whitening of one representation fitted on the task's train rows; whitened features on demand.

    ``layer:k`` and ``cumulative:k`` frames are sums of table lookups and whitening is
    affine, so the whitening is folded into the tables once (``T_l @ proj``): a chunk of
    whitened frames is then materialised straight from its codes by k gathers, with no
    raw vectors and no per-chunk projection. Other representations (latent) are read
    and projected per chunk.
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
            self._tables = [(torch.from_numpy(np.asarray(store.tables[l], np.float64)) @ proj).float().to(self.device)
                            for l in self._layers]
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
            c = torch.from_numpy(codes).to(self.device)
            z = self._tables[0][c[:, 0]] - self._offset
            for i in range(1, len(self._layers)):
                z += self._tables[i][c[:, i]]
            return z
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


def _plan(idx: list[int], jobs, feats, memory_mb: int) -> list[tuple[list[int], bool]]:
    """Greedy groups within the memory budget; a job alone over budget is streamed."""
    budget = memory_mb * 2**20
    groups: list[tuple[list[int], bool]] = []
    cur, used = [], 0
    for i in idx:
        n = sum(len(r) for r in jobs[i].td.rows.values())
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
    the number of frames.
    """

    def __init__(self, feats: list[_RepFeatures], rows: dict[str, np.ndarray], in_memory: bool, device,
                 max_chunk: int | None = None):
        self.feats, self.rows, self.device, self.max_chunk = feats, rows, device, max_chunk
        self.P, self.r = len(feats), max(f.whitener.dim for f in feats)
        self.mem: dict[str, torch.Tensor] = {}
        if in_memory:
            for s, r in rows.items():
                self.mem[s] = self._make(r)

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


def _frames_classify(jobs, fr: _Frames, cfg: ProbeConfig, device) -> list[JobFit]:
    td = jobs[0].td
    C, Call, G, P = td.n_train_classes, td.n_classes, len(cfg.l2), len(jobs)
    m = max(256, CHUNK_BYTES // (4 * P * G * max(C, 1)))
    Y = {s: torch.as_tensor(np.stack([j.y[s] for j in jobs]), dtype=torch.long, device=device) for s in fr.rows}
    Yfit_val = torch.where(Y["val"] < C, Y["val"], torch.full_like(Y["val"], -1))
    counts = torch.stack([torch.bincount(Y["train"][p], minlength=C)[:C] for p in range(P)]).float()
    cw = _class_weights(counts, cfg.balance)

    def src(split, y):
        return lambda: ((z, y[:, a:b]) for a, b, z in fr.chunks(split, m))

    has_val = len(fr.rows["val"]) > 0
    if td.open_set:
        # Held-out classes: val labels cannot score the probe's own outputs, so fit to convergence
        # and choose the strength by open-set identification on val (see _open_set).
        fit = fit_logistic(src("train", Y["train"]), None, P, fr.r, C, cw, cfg.l2, cfg.l1, cfg.max_iter, cfg.patience)
        return _open_set(jobs, fr, fit, cfg, m)
    fit = fit_logistic(src("train", Y["train"]), src("val", Yfit_val) if has_val else None,
                       P, fr.r, C, cw, cfg.l2, cfg.l1, cfg.max_iter, cfg.patience)

    def predict(split):
        parts = []
        with torch.no_grad():
            for a, b, z in fr.chunks(split, m):
                parts.append(logits_of(z, fit.W, fit.b).argmax(-1))
        return torch.cat(parts, -1)  # [P, G, n]

    if has_val:
        pv = predict("val")
        yv = Y["val"][:, None, :].expand_as(pv)
        base = (torch.arange(P * G, device=device) * Call).view(P, G, 1)
        size = P * G * Call
        hit = (pv == yv).to(torch.float64)
        tp = torch.bincount((base + yv).flatten(), weights=hit.flatten(), minlength=size).view(P, G, Call)
        predn = torch.bincount((base + pv).flatten(), minlength=size).view(P, G, Call).double()
        truen = torch.bincount((base + yv).flatten(), minlength=size).view(P, G, Call).double()
        choice = _choose(_f1(tp, predn - tp, truen - tp), G)
    else:
        choice = np.zeros(P, np.int64)
    pt = predict("test").cpu().numpy()
    return [
        JobFit(fr.feats[p].whitener, fit.W[p, int(g), : fr.feats[p].whitener.dim].cpu().numpy(),
               fit.b[p, int(g)].cpu().numpy(), float(cfg.l2[int(g)]), pt[p, int(g)], None, fit.iters)
        for p, g in enumerate(choice)
    ]


def _embed(fr: _Frames, split: str, W: torch.Tensor, p: int, m: int) -> np.ndarray:
    """Class scores (without bias: priors of train classes say nothing about held-out ones)."""
    parts = [torch.einsum("mr,rc->mc", z[p], W) for _, _, z in fr.chunks(split, m)]
    return torch.cat(parts).cpu().numpy() if parts else np.zeros((0, W.shape[1]), np.float32)


def _open_set(jobs, fr: _Frames, fit, cfg: ProbeConfig, m: int) -> list[JobFit]:
    from .metrics import nearest_centroid_loo

    out = []
    for p, job in enumerate(jobs):
        best_g, best_acc = 0, -1.0
        if len(fr.rows["val"]) and len(cfg.l2) > 1:
            yv = job.y["val"]
            for g in range(len(cfg.l2)):
                acc = float(np.mean(nearest_centroid_loo(_embed(fr, "val", fit.W[p, g], p, m), yv, job.td.groups["val"]) == yv))
                if acc >= best_acc:  # ties: the stronger strength
                    best_g, best_acc = g, acc
        emb = _embed(fr, "test", fit.W[p, best_g], p, m)
        pred = nearest_centroid_loo(emb, job.y["test"], job.td.groups["test"])
        r = fr.feats[p].whitener.dim
        out.append(JobFit(fr.feats[p].whitener, fit.W[p, best_g, :r].cpu().numpy(), fit.b[p, best_g].cpu().numpy(),
                          float(cfg.l2[best_g]), pred, None, fit.iters, emb))
    return out


def _frames_regress(jobs, fr: _Frames, cfg: ProbeConfig, device) -> list[JobFit]:
    G, P = len(cfg.l2), len(jobs)
    m = 65536
    Y = {s: torch.as_tensor(np.stack([j.y[s] for j in jobs]), dtype=torch.float64, device=device) for s in fr.rows}

    def chunks(split):
        for a, b, z in fr.chunks(split, m):
            y = Y[split][:, a:b]
            yield z, torch.ones_like(y), y, y * y

    w, b = fit_ridge(ridge_stats(chunks("train")), cfg.l2)
    if len(fr.rows["val"]):
        choice = _choose(-ridge_sse(ridge_stats(chunks("val")), w, b), G)
    else:
        choice = np.zeros(P, np.int64)
    parts = []
    with torch.no_grad():
        for a, bb, z in fr.chunks("test", m):
            parts.append(torch.einsum("pmr,pgr->pgm", z.double(), w) + b[:, :, None])
    pt = torch.cat(parts, -1).cpu().numpy()
    return [
        JobFit(fr.feats[p].whitener, w[p, int(g), : fr.feats[p].whitener.dim].cpu().numpy(),
               b[p, int(g)].cpu().numpy(), float(cfg.l2[int(g)]), pt[p, int(g)])
        for p, g in enumerate(choice)
    ]

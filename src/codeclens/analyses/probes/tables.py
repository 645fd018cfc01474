"""``layer:k`` / ``codes:k`` probes from count tables made in one streamed pass over the frames.

A single layer's vector is a function of its code, so everything a lookup-path probe needs is a
count table (see :mod:`.lookup`). This module builds those tables for a classification task in
one pass over the store (label chunks from :class:`~codeclens.store.columns.FrameLabels`, the codes
of every probed layer for the same frames read once), and then fits and evaluates every probe,
control and lookup bound from the tables alone:

- train and val: ``[layer, code, class]`` counts, the input of the count-table fit;
- test: ``[layer, unit, code, class]`` counts, with the unit the bootstrap resamples (speaker or
  utterance, as :func:`.run.resampling` chooses). A probe, a code control or a lookup bound
  predicts one class per code, so its per-unit TP / FP / FN are sums of these counts, and its
  bootstrap replicates are the usual ``[B, U]`` weighted sums (:func:`.metrics.class_metrics`).
  When each test unit has a single label (an utterance-level label such as the speaker, with
  utterance units) the class axis is that label and only ``[layer, unit, code]`` is kept.

Nothing per frame is held: memory is set by the chunk and the tables (layers x codes x classes, and
layers x test units x codes [x classes]), and the time after the pass does not depend on the frames.
The results equal the general path's (:func:`.run.run_task` on per-row task data): the same counts,
the same fits, the same bootstrap weights. What the tables cannot do goes the general way
(:func:`eligible`): regression targets, frame-path representations, utterance level, speaker-fold
cross-validation, MLP probes, the scikit-learn backend, phone-type controls, open-set tasks, train
subsampling, and test tables over the memory budget.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from ...errors import CodeclensError
from ...store import Repr, Store
from ...store import columns
from ...store.columns import FrameLabels, frame_column_names
from ...util.device import resolve_device
from ...util.threads import cpu_workers, side_by_side
from .. import framestream
from . import metrics as M
from .config import ProbeConfig
from .controls import control_table_counts
from .cv import use_cv
from .data import F0_COLUMNS, SPLITS, _check_val, _encode, resolve_column, split_column
from .linear import SMALL_WORK, threads_for
from .run import (MIN_CONTROL_COVERAGE, SEMITONES, SPEAKER_DISJOINT, _selectivity, control_seed, emit, row_base,
                  stat_scores, store_reprs)
from .torch_backend import TableProblem, fit_table_classify, table_batch


def eligible(store: Store, task: str, cfg: ProbeConfig) -> bool:
    """Whether ``task`` on ``store`` can run from count tables (a classification task on frame-level
    layer:k / codes:k probes with the torch backend; see the module docstring)."""
    if (cfg.level != "frame" or cfg.backend != "torch" or cfg.mlp or cfg.control == "type"
            or cfg.max_train_frames is not None):
        return False
    if not all(r.is_lookup for r in store_reprs(store, cfg)):
        return False
    base = "f0" if task == SEMITONES else task
    if task == SEMITONES and "speaker" not in store.utterances.columns:
        return False  # the general path reports it
    column = resolve_column(store, base)
    if column not in frame_column_names(store) and column not in store.utterances.columns:
        return False  # the general path reports the missing column
    if use_cv(store, base, cfg):
        return False
    categorical = is_categorical(store, column)
    return not (categorical and (task == SEMITONES or column in F0_COLUMNS or base == "f0"))  # errors: general path


def is_categorical(store: Store, column: str) -> bool:
    """Whether a label column holds categories (else numbers)."""
    return bool(FrameLabels(store, [column]).categorical[column])


def classifies(store: Store, task: str) -> bool:
    """Whether ``task`` on ``store`` is a classification (its column categorical; f0_st never is)."""
    return task != SEMITONES and is_categorical(store, resolve_column(store, task))


def _count(flat: np.ndarray, keys: np.ndarray) -> None:
    """``flat[keys] += 1`` for every key, by one bincount over the keys' range only (a chunk's frames
    belong to a few consecutive utterances, so their keys span a small part of a unit table)."""
    if not len(keys):
        return
    lo, hi = int(keys.min()), int(keys.max()) + 1
    if hi - lo > 8 * len(keys):  # few keys over a wide range (a dense test table): sort rather than zero the range
        k, c = np.unique(keys, return_counts=True)
        flat[k] += c.astype(flat.dtype, copy=False)
        return
    part = flat[lo:hi]
    np.add(part, np.bincount(keys - lo, minlength=hi - lo), out=part, casting="unsafe")


def _count_all(flat: np.ndarray, keys: np.ndarray) -> None:
    """``flat[keys] += 1`` for keys that cover most of ``flat`` (a layer's train or val table): one
    bincount over the whole table, without the range scans of :func:`_count`."""
    np.add(flat, np.bincount(keys, minlength=len(flat)), out=flat, casting="unsafe")


class _Grow:
    """A flat int accumulator of ``[*lead, width]`` tables whose last axis (the label names met so far)
    grows geometrically as new names appear chunk by chunk."""

    def __init__(self, lead: tuple[int, ...], dtype):
        self.lead, self.dtype, self.width = lead, dtype, 0
        self.flat = np.zeros(0, dtype)

    def fit(self, width: int, budget: int | None = None) -> bool:
        if width <= self.width:
            return True
        new = max(width, 2 * self.width)
        if budget is not None and int(np.prod(self.lead)) * new * np.dtype(self.dtype).itemsize > budget:
            return False
        grown = np.zeros((*self.lead, new), self.dtype)
        if self.width:
            grown[..., : self.width] = self.flat.reshape(*self.lead, self.width)
        self.flat, self.width = grown.reshape(-1), new
        return True

    def add(self, keys: np.ndarray) -> None:
        _count(self.flat, keys)

    def layer(self, j: int) -> np.ndarray:
        """The flat part of the first index ``j`` (a view: counting into it counts into the table)."""
        return self.flat.reshape(self.lead[0], -1)[j]

    def table(self, width: int) -> np.ndarray:
        return self.flat.reshape(*self.lead, self.width)[..., :width] if self.width else \
            np.zeros((*self.lead, width), self.dtype)


class Counts:
    """The tables of one classification task on one store (see the module docstring).

    The test table is kept as counted (columns in the order label names were met, units with a test
    utterance): ``keep`` are the units with usable test rows (the bootstrap's units, in order) and
    ``take[c]`` the column of class c, applied to the small per-unit results rather than copying the table."""

    def __init__(self, store: Store, task: str, column: str, scol: str, layers: list[int], classes: tuple[str, ...],
                 n_train_classes: int, train: np.ndarray, val: np.ndarray, test: np.ndarray,
                 unit_label: np.ndarray | None, n: dict[str, int], unit: str, n_test_utterances: int,
                 keep: np.ndarray, take: np.ndarray):
        self.store, self.task, self.column, self.split_column = store, task, column, scol
        self.layers, self.classes, self.n_train_classes = layers, classes, n_train_classes
        self.train, self.val, self.test, self.unit_label = train, val, test, unit_label
        self.n, self.unit, self.n_test_utterances = n, unit, n_test_utterances
        self.keep, self.take = keep, take

    @property
    def n_units(self) -> int:
        return len(self.keep)

    def unit_code(self, j: int) -> np.ndarray:
        """``[U, K]`` test rows per unit and code of the j-th layer (the table's integer dtype)."""
        t = self.test[j][self.keep]
        return t if self.unit_label is not None else t.sum(-1)

    def test_code(self, j: int) -> np.ndarray:
        """``[K]`` test rows per code of the j-th layer: :meth:`unit_code` summed over units, without its copy
        (units outside ``keep`` have no test rows)."""
        t = self.test[j]
        return t.sum(0) if self.unit_label is not None else t.sum((0, 2))

    def true_counts(self, j: int) -> np.ndarray:
        """``[U, C]`` test rows per unit and true class (the same for every layer)."""
        if self.unit_label is None:
            return self.test[j][self.keep].sum(1)[:, self.take].astype(np.float64)
        out = np.zeros((self.n_units, len(self.classes)))
        out[np.arange(self.n_units), self.unit_label[self.keep]] = self.test[j][self.keep].sum(1)
        return out

    def class_at(self, j: int, pred: np.ndarray) -> np.ndarray:
        """``[U, K]`` test rows of every unit and code whose label is ``pred[code]`` (dense tables only)."""
        K = len(pred)
        return self.test[j][self.keep][:, np.arange(K), self.take[pred]]


def units_of_utterances(store: Store, scol: str) -> tuple[np.ndarray, str]:
    """The bootstrap unit of every utterance (:func:`.run.resampling`): speakers on speaker-disjoint
    splits, utterances otherwise."""
    u = store.utterances
    if "speaker" in u.columns and scol in SPEAKER_DISJOINT:
        _, spk = np.unique(u["speaker"].astype(str).to_numpy(), return_inverse=True)
        return spk.reshape(-1).astype(np.int64), "speaker"
    return np.arange(len(u), dtype=np.int64), "utterance"


def count_task(store: Store, task: str, cfg: ProbeConfig, chunk: int | None = None) -> Counts | None:
    """The tables of ``task`` in one streamed pass; None when the task needs the general path
    (open-set test classes, or a test table over ``cfg.memory_mb``). Raises the errors of
    :func:`.data.gather_task` for unusable tasks."""
    column = resolve_column(store, task)
    labels = FrameLabels(store, [column], columns.CHUNK_ROWS if chunk is None else chunk)
    scol = split_column(task, column, cfg)
    if scol not in store.utterances.columns:
        raise CodeclensError(f"{store.path}: no split column '{scol}' in the store's utterances")
    split_utt = store.utterances[scol].astype(str).to_numpy()
    split_of = np.full(len(split_utt), -1, np.int8)
    for k, s in enumerate(SPLITS):
        split_of[split_utt == s] = k
    unit_of, unit = units_of_utterances(store, scol)
    # Test units are numbered by id among those with a test utterance (units without usable rows are dropped
    # at the end, which keeps the order: the numbering of run.resampling).
    test_units = np.unique(unit_of[split_of == 2])
    tunit = np.full(int(unit_of.max()) + 1 if len(unit_of) else 0, -1, np.int64)
    tunit[test_units] = np.arange(len(test_units))
    U = len(test_units)
    layers = sorted({r.layer - 1 for r in store_reprs(store, cfg)})
    L, K = len(layers), max(store.codebook_sizes[l] for l in layers)
    # One label per test unit (an utterance-level label constant within units): the class axis of the test
    # table is that label. Otherwise a [unit, code, class] table.
    ucodes = labels.utterance_codes(column)
    unit_label = None
    if ucodes is not None:
        t = (split_of == 2) & (ucodes >= 0)
        lab = np.full(U, -1, np.int64)
        lab[tunit[unit_of[t]]] = ucodes[t]
        if np.array_equal(lab[tunit[unit_of[t]]], ucodes[t]):
            unit_label = lab
    nf = store.utterances["n_frames"].to_numpy()
    small = unit == "utterance" and (len(nf) == 0 or int(nf.max()) < 2**16)
    tdt = np.uint16 if unit_label is not None and small else np.int32
    budget = cfg.memory_mb * 2**20
    # Tables per layer: one small bincount per layer and chunk (a table of one layer stays in cache, and
    # temporaries of one column of a chunk are reused by the allocator; keys over all layers at once
    # missed the cache on every row and cost fresh pages per chunk).
    tr, va = _Grow((L, K), np.int64), _Grow((L, K), np.int64)
    te = _Grow((L, U, K), tdt) if unit_label is None else None
    te_flat = np.zeros((L, U * K), tdt) if unit_label is not None else None
    per_utt = np.zeros(len(split_of), np.int64)
    n_ok = 0
    for a, b, utt, cols in labels:
        x = cols[column]
        ok = x >= 0
        n_ok += int(ok.sum())
        width = labels.n_names(column)
        tr.fit(width), va.fit(width)
        if te is not None and not te.fit(width, budget):
            return None  # the dense test table would not fit: per-row evaluation instead
        codes = framestream.code_rows(store, a, b, layers)
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise CodeclensError(f"{store.path}: codes outside [0, {K})")
        sp = np.where(ok, split_of[utt], -1)
        idx = [np.flatnonzero(sp == k) for k in range(3)]
        xs = [x[i].astype(np.int64) for i in idx]
        per_utt += np.bincount(utt[idx[2]], minlength=len(per_utt))
        u = tunit[unit_of[utt[idx[2]]]]
        w = te.width if te is not None else 0
        ubase = u * (K * w) + xs[2] if te is not None else u * K
        for j in range(L):
            c = codes[:, j].astype(np.int64)
            for k, acc in ((0, tr), (1, va)):
                _count_all(acc.layer(j), c[idx[k]] * acc.width + xs[k])
            if te is not None:
                _count(te.layer(j), c[idx[2]] * w + ubase)
            else:
                _count(te_flat[j], ubase + c[idx[2]])
    V = labels.n_names(column)
    names = labels.names(column)
    train, val = tr.table(V), va.table(V)
    test = te.table(V) if te is not None else te_flat.reshape(L, U, K)
    n = {"train": int(train[0].sum()), "val": int(val[0].sum()), "test": int(per_utt.sum())}
    for s in ("train", "test"):
        if not n[s]:
            raise CodeclensError(
                f"{store.path}: task '{task}' has no usable {s} rows in {scol} "
                f"({n_ok} labelled rows in all; check the label column and the splits)")
    tot = {"train": train[0].sum(0), "val": val[0].sum(0)}
    tot["test"] = test[0].sum((0, 1)) if te is not None else np.bincount(
        unit_label[unit_label >= 0], weights=test[0].sum(1)[unit_label >= 0], minlength=V).astype(np.int64)
    seen_train = tot["train"] > 0
    seen_other = (tot["val"] + tot["test"]) > 0
    train_classes = np.sort(names[seen_train])
    if len(train_classes) < 2:
        raise CodeclensError(
            f"{store.path}: task '{task}' has one class ({train_classes[0]!s}) in the train split; nothing to probe")
    extra = np.sort(names[seen_other & ~seen_train])
    classes = np.concatenate([train_classes, extra])
    C, Call = len(train_classes), len(classes)
    used = np.flatnonzero(seen_train | seen_other)
    lut = _encode(names[used], train_classes, extra)
    if not tot["test"][used[lut < C]].any():
        return None  # open set: identification among held-out classes is the general path's
    _check_val(store, task, scol, {"val": range(n["val"])}, cfg)

    take = used[np.argsort(lut)]  # class c <- name take[c]

    def reorder(t: np.ndarray) -> np.ndarray:
        return np.take(t.reshape(-1, t.shape[-1]), take, axis=1).reshape(t.shape[:-1] + (Call,))

    train, val = reorder(train), reorder(val)
    keep = np.flatnonzero((test[0].sum(1) if te is None else test[0].sum((1, 2))) > 0)
    if te is None:
        full = np.full(V, -1, np.int64)
        full[used] = lut
        unit_label = full[unit_label]
    return Counts(store, task, column, scol, layers, tuple(str(c) for c in classes), C, train, val, test,
                  unit_label, n, unit, int(np.count_nonzero(per_utt)), keep, take)


_VECTORS: "weakref.WeakKeyDictionary[Store, dict]" = weakref.WeakKeyDictionary()
"""distinct_vectors per store and representation: every task of a run probes the same layers (a row
sort of each codebook, once per task and layer before)."""
_VECTORS_LOCK = threading.Lock()


def distinct_vectors(store: Store, rep: Repr) -> tuple[np.ndarray, np.ndarray]:
    """(distinct vectors [U, D], vector id of every code): :func:`.lookup.code_vectors` without rows.
    Made once per store and representation and shared: callers must not write into them (torch warns on
    read-only arrays, so they are not flagged)."""
    key = (rep.kind, rep.layer)
    with _VECTORS_LOCK:  # tasks run side by side (run.run_tasks) ask for the same layers
        done = _VECTORS.setdefault(store, {})
        if key not in done:
            done[key] = _distinct_vectors(store, rep)
        return done[key]


def _distinct_vectors(store: Store, rep: Repr) -> tuple[np.ndarray, np.ndarray]:
    k = rep.layer - 1
    if rep.kind == "codes":
        return np.eye(store.codebook_sizes[k], dtype=np.float64), np.arange(store.codebook_sizes[k], dtype=np.int64)
    vectors, remap = np.unique(np.asarray(store.tables[k], np.float64), axis=0, return_inverse=True)
    return vectors, remap.reshape(-1).astype(np.int64)


def _by_vector(t: np.ndarray, remap: np.ndarray, n_vec: int) -> np.ndarray:
    """Per-code rows summed per distinct vector (float64)."""
    out = np.zeros((n_vec,) + t.shape[1:])
    if n_vec == len(remap):  # every code its own vector (the usual case): a permutation
        out[remap] = t
        return out
    order = np.argsort(remap, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(remap[order]) != 0])
    out[remap[order][starts]] = np.add.reduceat(np.asarray(t, np.float64)[order], starts, axis=0)
    return out


def scatter_columns(m: np.ndarray, cols: np.ndarray, n_cols: int) -> np.ndarray:
    """``out[u, c] = sum of m[u, k] over the codes k with cols[k] == c`` (float64 ``[U, n_cols]``)."""
    order = np.argsort(cols, kind="stable")
    sc = cols[order]
    starts = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]]) if len(sc) else np.zeros(0, np.int64)
    out = np.zeros((m.shape[0], n_cols))
    if len(starts):  # summed in float64 from the table's own dtype (no float64 copy of the table)
        out[:, sc[starts]] = np.add.reduceat(m[:, order], starts, axis=1, dtype=np.float64)
    return out


def class_stats(counts: Counts, j: int, nuk: np.ndarray, true_n: np.ndarray, pred: np.ndarray,
                truth: np.ndarray | None = None) -> M.ClassStats:
    """Per-unit TP / FP / FN of a predictor of one class per code (``pred [K]``) on the j-th layer's test
    table (``nuk``: its :meth:`Counts.unit_code`, ``true_n`` its :meth:`Counts.true_counts`); ``truth [K]``:
    a code control's label per code (None: the task's labels)."""
    Call = len(counts.classes)
    pred_n = scatter_columns(nuk, pred, Call)
    if truth is not None:
        true_n = scatter_columns(nuk, truth, Call)
        tp = scatter_columns(np.where((pred == truth)[None, :], nuk, 0).astype(nuk.dtype, copy=False), truth, Call)
    elif counts.unit_label is None:
        tp = scatter_columns(counts.class_at(j, pred), pred, Call)
    else:
        tp = np.zeros_like(pred_n)
        u, lab = np.arange(counts.n_units), counts.unit_label[counts.keep]
        tp[u, lab] = pred_n[u, lab]
    return M.ClassStats(tp, pred_n - tp, true_n - tp, tp.sum(1), true_n.sum(1))


def run_store(store: Store, task: str, cfg: ProbeConfig, si: int, names: dict[int, str],
              progress: bool = False, chunk: int | None = None) -> list[dict[str, Any]] | None:
    """probes.csv rows of ``task`` on ``store`` (the ``si``-th store of the run) from count tables;
    None when the general path must do it (see :func:`count_task`). Numeric tasks: :mod:`.regtables`."""
    if not classifies(store, task):
        from . import regtables

        return regtables.run_store(store, task, cfg, si, names, progress, chunk)
    counts = count_task(store, task, cfg, chunk)
    if counts is None:
        return None
    device = resolve_device(cfg.device)
    C, Call = counts.n_train_classes, len(counts.classes)
    boot = M.bootstrap_weights(counts.n_units, cfg.bootstrap, cfg.seed) if cfg.bootstrap and counts.n_units > 1 else None
    fields = dict(task=task, column=counts.column, n_train=counts.n["train"], n_test=counts.n["test"],
                  n_test_utterances=counts.n_test_utterances, n_test_units=counts.n_units, unit=counts.unit,
                  split=counts.split_column, level="frame", test_outside_train=np.nan, test_covers_train=np.nan)
    train_classes = counts.train[0].sum(0)
    reps = store_reprs(store, cfg)
    layers = []  # per representation: (rep, layer index, codes, code -> vector map, control labels, train / test rows per code)
    probs: list[TableProblem] = []
    controls: list[TableProblem] = []
    for ri, rep in enumerate(reps):
        j = counts.layers.index(rep.layer - 1)
        K = store.codebook_sizes[rep.layer - 1]
        vectors, remap = distinct_vectors(store, rep)
        nv = len(vectors)
        tr_code, va_code = counts.train[j, :K], counts.val[j, :K]
        n_tr = tr_code.sum(1)
        n_vec = np.zeros(nv, np.int64)
        np.add.at(n_vec, remap, n_tr)

        def problem(train_code: np.ndarray, val_code: np.ndarray, control: bool) -> TableProblem:
            return TableProblem(vectors, n_vec, _by_vector(train_code[:, :C], remap, nv),
                                _by_vector(val_code, remap, nv), control)

        probs.append(problem(tr_code, va_code, False))
        ctl = None
        te_code = counts.test_code(j)[:K]
        # control_coverage: share of test rows whose code occurs in train.
        if cfg.control == "code" and te_code[n_tr > 0].sum() / counts.n["test"] >= MIN_CONTROL_COVERAGE:
            used = (n_tr + va_code.sum(1) + te_code) > 0
            n_types = int(np.flatnonzero(used).max()) + 1 if used.any() else 0
            ctl = np.zeros(K, np.int64)
            ctl[:n_types] = control_table_counts(n_tr[:n_types], train_classes[:C], control_seed(cfg, si, ri))

            def onto(n_code: np.ndarray, width: int) -> np.ndarray:
                t = np.zeros((K, width), np.int64)
                t[np.arange(K), ctl] = n_code
                return t

            controls.append(problem(onto(n_tr, Call), onto(va_code.sum(1), Call), True))
        layers.append((rep, j, K, remap, ctl, n_tr, te_code))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(probs) + len(controls), desc=f"probe {task}", unit="probe", leave=False)
    try:
        fits, cfits = _fit_side_by_side([probs, controls], C, Call, cfg, device, bar)
        cfits = iter(cfits)
    finally:
        if bar is not None:
            bar.close()
    rows: list[dict[str, Any]] = []
    for (rep, j, K, remap, ctl, n_tr, te_code), f in zip(layers, fits):
        base = row_base(store, rep, names, cfg, **fields)
        nuk, true_n = counts.unit_code(j)[:, :K], counts.true_counts(j)
        chance = M.chance_counts(train_classes, true_n.sum(0).astype(np.int64), C)
        scores = stat_scores(class_stats(counts, j, nuk, true_n, f.pred_test[remap]), boot)
        emit(rows, base, "linear", scores, chance, f.l2)
        if cfg.lookup:
            emit(rows, base, "lookup", stat_scores(class_stats(counts, j, nuk, true_n, f.lookup_test[remap]), boot),
                 chance)
        if ctl is None:
            continue
        fc = next(cfits)
        c_chance = M.chance_counts(np.bincount(ctl, weights=n_tr, minlength=Call),
                                   np.bincount(ctl, weights=te_code, minlength=Call).astype(np.int64), C)
        c_scores = stat_scores(class_stats(counts, j, nuk, true_n, fc.pred_test[remap], ctl), boot)
        emit(rows, base, "control", c_scores, c_chance, fc.l2)
        emit(rows, base, "selectivity", _selectivity((scores, chance), c_scores, c_chance), None)
    return rows


BATCH_ELEMENTS = 2**21
"""Logits (vectors x classes) of the problems batched in one count-table program. Fitting a task's layers in
one program pays each L-BFGS step's Python and dispatch overhead once for all of them
(``benchmarks/table_batch.py``, 4 M planted store: phone fits 1.27 -> 0.74 s, speaker 1.52 -> 1.46 s),
and each problem's arithmetic is made on its own (:func:`.linear._table_objective`), so it gets the
same bits as alone. Beyond this size a program's elementwise passes leave the cache and cost more than
the overhead saved."""


def _fit_side_by_side(groups: list[list[TableProblem]], C: int, Call: int, cfg: ProbeConfig, device,
                      bar) -> list[list]:
    """:func:`_fit_tables` of each group (a task's probes, its controls), the groups at the same time in
    ``cfg.workers`` threads (:func:`codeclens.util.threads.side_by_side`) when every program is a
    one-thread program on the CPU.

    The fits were a third of a default ``layer:k`` run at 4 M frames, on one core of two; their torch
    ops release the GIL. Each problem still does its own arithmetic with the threads it has alone,
    so every result is bit for bit the one of the groups fitted one after the other
    (``tests/test_table_batch.py``). Groups whose programs :func:`.linear.threads_for` gives several
    threads (large codebooks and class counts) already use the cores: one after the other."""
    live = [g for g in groups if g]
    one_thread = all(_work(cfg, len(p.vectors), Call) < SMALL_WORK for g in live for p in g)
    workers = cpu_workers(cfg.workers) if one_thread and device.type == "cpu" else 1
    fits = iter(side_by_side([lambda g=g: _fit_tables(g, C, Call, cfg, device, bar) for g in live], workers))
    return [next(fits) if g else [] for g in groups]


def _work(cfg: ProbeConfig, U: int, Call: int) -> int:
    """Elements per tensor op of one count-table problem (what sets its threads)."""
    return len(cfg.l2) * U * max(Call, 8)


def _fit_tables(probs: list[TableProblem], C: int, Call: int, cfg: ProbeConfig, device, bar) -> list:
    """:func:`fit_table_classify` of ``probs`` (independent problems: each gives what it gives alone), in
    programs of at most BATCH_ELEMENTS logits and --memory-mb of copies, one number of vectors each (it
    sets the program's threads, which must be those of the problem alone)."""
    out: list = [None] * len(probs)
    by_size: dict[int, list[int]] = {}
    for i, p in enumerate(probs):
        by_size.setdefault(len(p.vectors), []).append(i)
    for U, idx in by_size.items():
        width = max(probs[i].vectors.shape[1] for i in idx) + Call
        n = min(max(1, BATCH_ELEMENTS // max(U * max(Call, 8), 1)), table_batch(cfg, U, width))
        for a in range(0, len(idx), n):
            part = idx[a:a + n]
            # Threads by one problem's work, as if it were alone: a product's rounding can depend on the
            # threads that share it, and a layer's fit must not depend on the layers beside it.
            with threads_for(_work(cfg, U, Call)):
                for i, f in zip(part, fit_table_classify([probs[i] for i in part], C, Call, cfg, device)):
                    out[i] = f
            if bar is not None:
                bar.update(len(part))
    return out

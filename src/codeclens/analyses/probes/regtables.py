"""``layer:k`` / ``codes:k`` regression probes (F0, f0_st, any numeric column) from streamed sums.

The regression counterpart of :mod:`.tables`, in a fixed number of streamed passes and without
per-frame arrays:

1. (f0_st only, two passes) the speakers' median F0, exact, by :class:`.orderstats.OrderStats`;
2. counting: per layer and code the train / val ``n, sum y, sum y^2`` (the exact ridge problem),
   the test rows per (unit, code), and the histograms for the order statistics below;
3. evaluation: one pass over the frames computes every probe's and lookup bound's per-unit
   sums (n, sum y, sum y^2, SSE, sum |error|, sum |cents|; MAE is not a function of per-code
   sums), the train-mean baseline's, and keeps the few values the order statistics need.

Code controls then need only counts: a control label is one value per code (the train label at a
rank :func:`.controls.control_ranks` draws, read exactly), so its fit and its per-unit sums come from
the code tables. The train / test quantiles of ``test_outside_train`` / ``test_covers_train`` are
read exactly the same way. Sums are accumulated per chunk in float64, so results equal the general
path's to rounding (about 1e-12 relative), not bit for bit.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import numpy as np

from ...errors import CodeclensError
from ...store import Store
from ...store import columns
from ...store.columns import FrameLabels, frame_column_names
from ...util.device import resolve_device
from .. import framestream
from . import metrics as M
from .config import ProbeConfig
from .controls import control_ranks
from .data import F0_COLUMNS, SPLITS, _check_val, resolve_column, split_column
from .linear import threads_for
from .lookup import CodeSums
from .orderstats import OrderStats
from .run import (MIN_CONTROL_COVERAGE, SEMITONES, _selectivity, control_seed, emit, expand_tasks, row_base, stat_scores,
                  store_reprs)
from .tables import _by_vector, _count, distinct_vectors, eligible, units_of_utterances
from .torch_backend import TableProblem, fit_table_regress

QUANTILES = {"train": (0.01, 0.99, 0.05, 0.95), "test": (0.05, 0.95)}
"""The quantiles of :func:`.cv.target_range`."""


class _Rows:
    """The usable rows of a numeric task, chunk by chunk: ``(a, b, utt, ok, split, y)`` with ``y`` the float32
    target of the rows ``ok`` (as :func:`.data.gather_task` takes them; f0_st: semitones re ``ref``)."""

    def __init__(self, store: Store, task: str, cfg: ProbeConfig, chunk: int | None):
        base = "f0" if task == SEMITONES else task
        self.column = resolve_column(store, base)
        self.is_f0 = self.column in F0_COLUMNS or base == "f0"
        want = [self.column] + (["voiced"] if self.is_f0 and "voiced" in frame_column_names(store) else [])
        self.labels = FrameLabels(store, want, columns.CHUNK_ROWS if chunk is None else chunk)
        self.scol = split_column(base, self.column, cfg)
        if self.scol not in store.utterances.columns:
            raise CodeclensError(f"{store.path}: no split column '{self.scol}' in the store's utterances")
        split_utt = store.utterances[self.scol].astype(str).to_numpy()
        self.split_of = np.full(len(split_utt), -1, np.int8)
        for k, s in enumerate(SPLITS):
            self.split_of[split_utt == s] = k
        self.ref: np.ndarray | None = None  # per-utterance reference F0 (f0_st)

    def __iter__(self):
        lab, column = self.labels, self.column
        for a, b, utt, cols in lab:
            x = cols[column]
            ok = ~np.isnan(x)
            if self.is_f0:
                with np.errstate(invalid="ignore"):
                    ok &= x > 0
                if "voiced" in cols:
                    v = cols["voiced"]
                    ok &= np.isin(v, lab.true_codes("voiced")) if lab.categorical["voiced"] else v > 0
            n_ok = int(ok.sum())
            sp = np.where(ok, self.split_of[utt], -1)
            ok &= sp >= 0
            y = x[ok].astype(np.float32)
            if self.ref is not None:
                y = (12.0 * np.log2(y / self.ref[utt[ok]])).astype(np.float32)
            yield a, b, utt, ok, sp[ok], y, n_ok


class _Medians:
    """The speakers' median F0 over a task's rows, exactly as :func:`.run._speaker_medians`, from
    :class:`.orderstats.OrderStats` fed one pass (:meth:`add`), then :meth:`plan`, then another
    (:meth:`collect`): two passes of their own, or the counting and evaluation passes of the F0
    task, so that f0_st, which needs them before its own counting, reads the frames twice, not four times."""

    def __init__(self, store: Store):
        if "speaker" not in store.utterances.columns:
            raise CodeclensError(f"{store.path}: f0_st needs a speaker column (or give --no-f0-semitones)")
        _, spk = np.unique(store.utterances["speaker"].astype(str).to_numpy(), return_inverse=True)
        self.spk = spk.reshape(-1).astype(np.int64)
        self.n_spk = int(self.spk.max()) + 1 if len(self.spk) else 0
        self.st = OrderStats(self.n_spk, 12)

    def add(self, utt: np.ndarray, ok: np.ndarray, y: np.ndarray) -> None:
        self.st.add(y, self.spk[utt[ok]])

    def plan(self) -> None:
        n = self.st.hist.sum(1)
        self.have = np.flatnonzero(n > 0)
        self.st.plan(np.repeat(self.have, 2), np.stack([(n[self.have] - 1) // 2, n[self.have] // 2], 1).reshape(-1))

    def collect(self, utt: np.ndarray, ok: np.ndarray, y: np.ndarray) -> None:
        self.st.collect(y, self.spk[utt[ok]])

    def per_utterance(self) -> np.ndarray:
        """Each utterance's speaker median (float32 values in float64, NaN for absent speakers)."""
        mid = self.st.values().reshape(-1, 2).astype(np.float64)
        med = np.full(self.n_spk, np.nan, np.float64)
        med[self.have] = (mid.sum(1) / 2).astype(np.float32)
        return med[self.spk]


def speaker_medians(store: Store, rows: _Rows) -> np.ndarray:
    """Median positive F0 per speaker over the task's rows of every split (float32 values in float64,
    NaN for absent speakers), exactly as :func:`.run._speaker_medians`: two streamed passes."""
    m = _Medians(store)
    for _, _, utt, ok, _, y, _ in rows:
        m.add(utt, ok, y)
    m.plan()
    for _, _, utt, ok, _, y, _ in rows:
        m.collect(utt, ok, y)
    return m.per_utterance()


_MEDIANS: "weakref.WeakKeyDictionary[Store, dict]" = weakref.WeakKeyDictionary()
"""Speaker medians made in an F0 task's passes, by store and (column, split column), for the f0_st task
that follows it (taken, not kept, by that task)."""


def _share_medians(store: Store, task: str, cfg: ProbeConfig, rows: _Rows) -> _Medians | None:
    """A median accumulator for the F0 task's passes when f0_st will follow it on this store."""
    if task == SEMITONES or not rows.is_f0 or SEMITONES not in expand_tasks(cfg):
        return None
    if "speaker" not in store.utterances.columns or not eligible(store, SEMITONES, cfg):
        return None
    return _Medians(store)


def _sums(c: np.ndarray, y: tuple[np.ndarray, np.ndarray], K: int) -> np.ndarray:
    """``[K, 3]`` per-code n, sum y, sum y^2 (float64) of rows with codes ``c`` and targets ``y`` given as
    (y, y * y) in float64 (made once per chunk and split, not once per layer)."""
    y1, y2 = y
    return np.stack([np.bincount(c, minlength=K), np.bincount(c, weights=y1, minlength=K),
                     np.bincount(c, weights=y2, minlength=K)], 1).astype(np.float64)


def _powers(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = y.astype(np.float64)
    return y, y * y


def _code_sums(t: np.ndarray) -> CodeSums:
    return CodeSums(t[:, 0], t[:, 1], t[:, 2])


class _RegAcc:
    """Per-unit regression sums of one predictor, accumulated over chunks."""

    def __init__(self, n_units: int):
        self.s = np.zeros((6, n_units))

    def add(self, y: np.ndarray, pred: np.ndarray, u: np.ndarray, cents: bool, truth: np.ndarray) -> None:
        """``truth``: :func:`.metrics.reg_truth_sums` of these rows (the same for every predictor of a chunk)."""
        st = M.reg_error_sums(y, pred, u, self.s.shape[1], cents)
        self.s += np.concatenate([truth, st])

    def stats(self, keep: np.ndarray) -> M.RegStats:
        return M.RegStats(*self.s[:, keep])


def _code_stats(nuk: np.ndarray, truth: np.ndarray, pred: np.ndarray, cents: bool) -> M.RegStats:
    """Per-unit sums of a predictor and a truth that are both one value per code (code controls)."""
    t, p = truth.astype(np.float64), pred.astype(np.float64)
    e = p - t
    sac = nuk @ M.cents_error(t, p) if cents else np.zeros(len(nuk))
    return M.RegStats(nuk.sum(1), nuk @ t, nuk @ (t * t), nuk @ (e * e), nuk @ np.abs(e), sac)


def _quantiles(st: OrderStats, qs: tuple[float, ...], n: int, at: np.ndarray) -> np.ndarray:
    """np.quantile (linear) of the values whose order statistics ``at`` (the ranks of :func:`_q_ranks`) are read."""
    out = []
    for i, q in enumerate(qs):
        h = (n - 1) * q
        g = h - np.floor(h)
        out.append(np.quantile(np.array([at[2 * i], at[2 * i + 1]], np.float32), [g])[0])
    return np.array(out)


def _q_ranks(qs: tuple[float, ...], n: int) -> np.ndarray:
    r = []
    for q in qs:
        lo = int(np.floor((n - 1) * q))
        r += [lo, min(lo + 1, n - 1)]
    return np.array(r, np.int64)


def run_store(store: Store, task: str, cfg: ProbeConfig, si: int, names: dict[int, str],
              progress: bool = False, chunk: int | None = None) -> list[dict[str, Any]]:
    """probes.csv rows of a numeric ``task`` on ``store`` from streamed sums (see the module docstring)."""
    cfg = dataclasses.replace(cfg, l2=cfg.ridge_l2)  # ridge's own grid (see run.fit)
    rows = _Rows(store, task, cfg, chunk)
    if task == SEMITONES:
        shared = _MEDIANS.get(store, {}).pop((rows.column, rows.scol), None)
        rows.ref = shared if shared is not None else speaker_medians(store, rows)
    medians = _share_medians(store, task, cfg, rows)
    is_f0 = rows.is_f0 and task != SEMITONES
    column = f"{rows.column} (semitones re speaker median)" if task == SEMITONES else rows.column
    scol = rows.scol
    unit_of, unit = units_of_utterances(store, scol)
    test_units = np.unique(unit_of[rows.split_of == 2])
    tunit = np.full(int(unit_of.max()) + 1 if len(unit_of) else 0, -1, np.int64)
    tunit[test_units] = np.arange(len(test_units))
    U = len(test_units)
    reps = store_reprs(store, cfg)
    layers = sorted({r.layer - 1 for r in reps})
    L, K = len(layers), max(store.codebook_sizes[l] for l in layers)
    sums = np.zeros((2, L, K, 3))  # train, val
    nf = store.utterances["n_frames"].to_numpy()
    small = unit == "utterance" and (len(nf) == 0 or int(nf.max()) < 2**16)
    nuk = np.zeros((L, U, K), np.uint16 if small else np.int32)  # test rows per (unit, code)
    per_utt = np.zeros(len(rows.split_of), np.int64)
    order = {"train": OrderStats(1, 8)}
    order["test"] = OrderStats(1, binner=order["train"].binner)  # one binning: test bins of train quantiles
    n_ok, lo_hi = 0, [np.inf, -np.inf]

    # -- pass: counting
    for a, b, utt, ok, sp, y, n_chunk in rows:
        n_ok += n_chunk
        if medians is not None:
            medians.add(utt, ok, y)
        codes = framestream.code_rows(store, a, b, layers)[ok]  # int16: converted a layer at a time
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise CodeclensError(f"{store.path}: codes outside [0, {K})")
        tr, te = sp == 0, sp == 2
        if tr.any():
            lo_hi = [min(lo_hi[0], float(y[tr].min())), max(lo_hi[1], float(y[tr].max()))]
        order["train"].add(y[tr])
        order["test"].add(y[te])
        u = tunit[unit_of[utt[ok][te]]]
        per_utt += np.bincount(utt[ok][te], minlength=len(per_utt))
        split_rows = [(np.flatnonzero(sp == k), _powers(y[sp == k])) for k in (0, 1)]
        for j in range(L):
            c = codes[:, j].astype(np.int64)
            for k, (i, yk) in enumerate(split_rows):
                sums[k, j] += _sums(c[i], yk, K)
            _count(nuk[j].reshape(-1), u * K + c[te])
    n = {"train": int(sums[0, 0, :, 0].sum()), "val": int(sums[1, 0, :, 0].sum()), "test": int(per_utt.sum())}
    for s in ("train", "test"):
        if not n[s]:
            raise CodeclensError(
                f"{store.path}: task '{task}' has no usable {s} rows in {scol} "
                f"({n_ok} labelled rows in all; check the label column and the splits)")
    if lo_hi[0] == lo_hi[1]:
        raise CodeclensError(f"{store.path}: task '{task}' is constant in the train split; nothing to probe")
    _check_val(store, task, scol, {"val": range(n["val"])}, cfg)
    keep = np.flatnonzero(nuk[0].sum(1) > 0)
    device = resolve_device(cfg.device)

    # -- task probes, from the code sums
    per_rep = []
    for ri, rep in enumerate(reps):
        j = layers.index(rep.layer - 1)
        Kl = store.codebook_sizes[rep.layer - 1]
        vectors, remap = distinct_vectors(store, rep)
        nv = len(vectors)
        tr_v = _code_sums(_by_vector(sums[0, j, :Kl], remap, nv))
        va_v = _code_sums(_by_vector(sums[1, j, :Kl], remap, nv))
        with threads_for(len(cfg.l2) * nv * 8):
            (f,) = fit_table_regress([TableProblem(vectors, tr_v.n, tr_v, va_v)], cfg, device)
        per_rep.append((rep, j, Kl, vectors, remap, f))

    # Control ranks (from the train rows per code) and the quantiles' ranks: read in the evaluation pass.
    ctl_ranks = {}
    if cfg.control == "code":
        for ri, (rep, j, Kl, *_rest) in enumerate(per_rep):
            n_tr = sums[0, j, :Kl, 0]
            te_code = nuk[j][:, :Kl].sum(0)
            used = (n_tr + sums[1, j, :Kl, 0] + te_code) > 0
            if te_code[n_tr > 0].sum() / n["test"] < MIN_CONTROL_COVERAGE:
                continue
            n_types = int(np.flatnonzero(used).max()) + 1
            ctl_ranks[ri] = control_ranks(n_tr[:n_types].astype(np.int64), n["train"], control_seed(cfg, si, ri))
    q_tr, q_te = _q_ranks(QUANTILES["train"], n["train"]), _q_ranks(QUANTILES["test"], n["test"])
    all_tr = np.concatenate([q_tr, *ctl_ranks.values()]) if ctl_ranks else q_tr
    order["train"].plan(np.zeros(len(all_tr), np.int64), all_tr)
    # The test values in the bins of the train 1% / 99% quantiles, to count the test rows outside them.
    qb = order["train"].bin_of(None, None)[:4]
    extra = np.concatenate([np.arange(qb[0], qb[1] + 1), np.arange(qb[2], qb[3] + 1)])
    order["test"].plan(np.zeros(len(q_te), np.int64), q_te, extra=extra)

    # -- pass: evaluation
    mean_train = float(sums[0, 0, :, 1].sum() / n["train"])
    accs = {(ri, w): _RegAcc(U) for ri in range(len(per_rep)) for w in ("linear", "lookup")}
    chance_acc = _RegAcc(U)
    preds = {ri: (f.pred_test[remap].astype(np.float64), f.lookup_test[remap].astype(np.float64))
             for ri, (_, _, _, _, remap, f) in enumerate(per_rep)}
    if medians is not None:
        medians.plan()
    for a, b, utt, ok, sp, y, _ in rows:
        if medians is not None:
            medians.collect(utt, ok, y)
        order["train"].collect(y[sp == 0])
        te = sp == 2
        yt = y[te].astype(np.float64)
        order["test"].collect(y[te])
        if not te.any():
            continue
        u = tunit[unit_of[utt[ok][te]]]
        codes = framestream.code_rows(store, a, b, layers)[np.flatnonzero(ok)[te]]
        truth = M.reg_truth_sums(yt, u, U)
        chance_acc.add(yt, np.full(len(yt), mean_train), u, is_f0, truth)
        for ri, (rep, j, *_r) in enumerate(per_rep):
            c = codes[:, j].astype(np.int64)
            accs[(ri, "linear")].add(yt, preds[ri][0][c], u, is_f0, truth)
            accs[(ri, "lookup")].add(yt, preds[ri][1][c], u, is_f0, truth)
    if medians is not None:
        _MEDIANS.setdefault(store, {})[(rows.column, rows.scol)] = medians.per_utterance()
    tr_vals, te_vals = order["train"].values(), order["test"].values()
    qtr = _quantiles(order["train"], QUANTILES["train"], n["train"], tr_vals[: len(q_tr)])
    qte = _quantiles(order["test"], QUANTILES["test"], n["test"], te_vals)
    outside = (order["test"].count_below(qtr[0]) + n["test"] - order["test"].count_below(qtr[1], strict=False)) / n["test"]
    a_, b_ = qtr[2], qtr[3]
    cover = max(0.0, min(b_, qte[1]) - max(a_, qte[0])) / (b_ - a_) if b_ > a_ else float("nan")

    boot = M.bootstrap_weights(len(keep), cfg.bootstrap, cfg.seed) if cfg.bootstrap and len(keep) > 1 else None
    fields = dict(task=task, column=column, n_train=n["train"], n_test=n["test"],
                  n_test_utterances=int(np.count_nonzero(per_utt)), n_test_units=len(keep), unit=unit, split=scol,
                  level="frame", test_outside_train=float(outside), test_covers_train=float(cover))
    chance = {k: (float(v), float("nan")) for k, v in M.reg_metrics(chance_acc.stats(keep), cents=is_f0).items()}
    out: list[dict[str, Any]] = []
    at = len(q_tr)
    for ri, (rep, j, Kl, vectors, remap, f) in enumerate(per_rep):
        base = row_base(store, rep, names, cfg, **fields)
        scores = stat_scores(accs[(ri, "linear")].stats(keep), boot, is_f0)
        emit(out, base, "linear", scores, chance, f.l2)
        if cfg.lookup:
            emit(out, base, "lookup", stat_scores(accs[(ri, "lookup")].stats(keep), boot, is_f0), chance)
        if ri not in ctl_ranks:
            continue
        n_types = len(ctl_ranks[ri])
        ctl = np.zeros(Kl, np.float32)
        ctl[:n_types] = tr_vals[at : at + n_types]
        at += n_types
        n_code = sums[:, j, :Kl, 0]
        c64 = ctl.astype(np.float64)
        code_sums = [np.stack([nc, nc * c64, nc * c64 * c64], 1) for nc in n_code]
        nv = len(vectors)
        tr_v, va_v = (_code_sums(_by_vector(t, remap, nv)) for t in code_sums)
        with threads_for(len(cfg.l2) * nv * 8):
            (fc,) = fit_table_regress([TableProblem(vectors, tr_v.n, tr_v, va_v, True)], cfg, device)
        nu = nuk[j][keep][:, :Kl].astype(np.float64)
        c_scores = stat_scores(_code_stats(nu, ctl, fc.pred_test[remap], is_f0), boot, is_f0)
        c_mean = float((n_code[0] * c64).sum() / n["train"])
        c_chance = {k: (float(v), float("nan")) for k, v in
                    M.reg_metrics(_code_stats(nu, ctl, np.full(Kl, c_mean), is_f0), cents=is_f0).items()}
        emit(out, base, "control", c_scores, c_chance, fc.l2)
        emit(out, base, "selectivity", _selectivity((scores, chance), c_scores, c_chance), None)
    return out

"""``run_probes``: every task x store x representation, with lookup bounds, controls and CIs."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ...errors import CodeclensError
from ...store import Repr, Store, open_stores, parse_reprs
from ...util.device import resolve_device
from ...util.threads import cpu_workers, side_by_side
from . import metrics as M
from .config import ProbeConfig
from .controls import CodeLabels, code_coverage_bound, code_types, control_labels, control_table, phone_types, selectivity
from .cv import Pooled, fold_tasks, pool_tasks, target_range, use_cv
from .cv import pool_labels as cv_pool_labels
from .data import SPLITS as SPLITS_
from .data import TaskData, check_split_speakers, gather_task
from .torch_backend import Job, JobFit

COLUMNS = [
    "store", "codec", "representation", "kind", "layer", "task", "column", "probe", "metric", "value",
    "ci_low", "ci_high", "chance_majority", "chance_uniform", "chance", "p_value", "n_train", "n_test",
    "n_test_utterances", "n_test_units", "unit", "l2", "split", "level", "backend",
    "test_outside_train", "test_covers_train", "iters", "passes",
]
SPEAKER_DISJOINT = ("split_spk", "cv_spk")
"""Split columns whose test speakers are unseen in train (the bootstrap then resamples speakers)."""
SEMITONES = "f0_st"
"""The speaker-normalised F0 task (semitones re the speaker's median F0)."""
MIN_CONTROL_COVERAGE = 0.9
"""A code control needs at least this share of test rows whose code (tuple) occurs in train."""


def open_store_list(stores: Sequence[Store | str]) -> list[Store]:
    return open_stores(stores, "probe")


def store_reprs(store: Store, cfg: ProbeConfig) -> list[Repr]:
    reps = parse_reprs(cfg.repr, store.n_layers)
    if cfg.level == "utterance":
        reps = list(dict.fromkeys(Repr(r.kind, r.layer, True) for r in reps))
        if any(r.kind == "codes" for r in reps):
            raise CodeclensError("mean(codes:k) is not meaningful; pool layer:k instead")
    elif any(r.pooled for r in reps):
        raise CodeclensError("pooled representations (mean(...)) need --level utterance")
    if any(r.kind == "latent" for r in reps) and not store.has_latent:
        raise CodeclensError(f"{store.path}: store has no latent (extract with --latent) but 'latent' was asked")
    return reps


def _control(store: Store, rep: Repr, td: TaskData, cfg: ProbeConfig, seed: int) -> dict[str, np.ndarray] | None:
    if cfg.control == "none" or td.level != "frame" or td.open_set:
        return None
    if cfg.control == "code" and rep.kind not in ("layer", "codes") and \
            code_coverage_bound(store, rep, td.rows) < MIN_CONTROL_COVERAGE:
        return None  # refused as below, without ranking every row's code tuple
    types = code_types(store, rep, td.rows) if cfg.control == "code" else phone_types(store, td.rows)
    if control_coverage(types) < MIN_CONTROL_COVERAGE:
        # Mostly unseen types (code tuples of cumulative:k, k >= 2, and latent on a real codebook): their
        # control labels are random draws no probe can read, so the control sits at chance whatever the
        # representation holds and selectivity would only restate task - chance. Not reported.
        return None
    if cfg.control == "code" and rep.kind in ("layer", "codes"):
        # Labels made from the codes when read: only the per-code label table is held.
        return CodeLabels(store, rep.layer, td.rows, control_table(types, td.y["train"], seed))
    return control_labels(types, td.y["train"], seed)


def control_coverage(types: dict[str, np.ndarray]) -> float:
    """Share of test rows whose type (an integer id) occurs in train."""
    if not len(types["test"]):
        return float("nan")
    n = int(max(types["train"].max(initial=-1), types["test"].max())) + 1
    seen = np.bincount(types["train"], minlength=n) > 0
    return float(seen[types["test"]].mean())


def control_seed(cfg: ProbeConfig, si: int, ri: int) -> int:
    """Seed of the code control of the ri-th representation of the si-th store of a run."""
    return cfg.seed + 7919 * si + 104729 * ri + 1


def make_jobs(stores: list[Store], tds: list[TaskData], cfg: ProbeConfig, index: Sequence[int] | None = None) -> list[Job]:
    """``index``: each store's position in the run's store list (default: its position here), for the control seeds."""
    jobs = []
    for k, (s, td) in enumerate(zip(stores, tds)):
        si = k if index is None else index[k]
        for ri, rep in enumerate(store_reprs(s, cfg)):
            jobs.append(Job(s, rep, td, td.y))
            ctrl = _control(s, rep, td, cfg, control_seed(cfg, si, ri))
            if ctrl is not None:
                jobs.append(Job(s, rep, td, ctrl, control=True))
    return jobs


def fit(jobs: list[Job], cfg: ProbeConfig, log: Callable[[int], Any] | None = None) -> list[JobFit]:
    # Ridge has its own, wider grid (on the whitened scale the logistic grid barely shrinks it).
    if jobs and not jobs[0].td.categorical:
        cfg = dataclasses.replace(cfg, l2=cfg.ridge_l2)
    if cfg.backend == "sklearn":
        from .sklearn_backend import fit_jobs as sk_fit

        return sk_fit(jobs, cfg, log)
    from .torch_backend import fit_jobs

    return fit_jobs(jobs, cfg, resolve_device(cfg.device), log)


def expand_tasks(cfg: ProbeConfig) -> tuple[str, ...]:
    """The tasks to run: f0 brings f0_st (speaker-normalised semitones) along unless turned off."""
    tasks = list(cfg.task)
    if cfg.f0_semitones and "f0" in tasks and SEMITONES not in tasks:
        tasks.insert(tasks.index("f0") + 1, SEMITONES)
    return tuple(tasks)


def task_chains(stores: Sequence[Store], tasks: Sequence[str], cfg: ProbeConfig) -> list[list[str]]:
    """The tasks as chains that may run side by side (each chain's tasks in order, one after the other).

    With two or more ``cfg.workers``, two chains, the classification tasks and the numeric ones, when
    every task takes the count-table path on every store on the CPU: their passes and fits are kernels
    that release the GIL. Two classification tasks never run at once (each one's dense test table is
    bounded by ``memory_mb``); a numeric task keeps per-code and per-(unit, code) sums. f0_st follows f0
    in its chain (it takes the speaker medians of f0's passes). Otherwise one chain."""
    from . import tables

    one = [list(tasks)]
    if cpu_workers(cfg.workers) < 2 or resolve_device(cfg.device).type != "cpu":
        return one
    if not all(tables.eligible(s, t, cfg) for s in stores for t in tasks):
        return one

    kinds = [{tables.classifies(s, t) for s in stores} for t in tasks]
    if any(len(k) > 1 for k in kinds):  # a column categorical in one store and numeric in another
        return one
    classify = [t for t, k in zip(tasks, kinds) if True in k]
    regress = [t for t, k in zip(tasks, kinds) if True not in k]
    return [classify, regress] if classify and regress else one


def run_tasks(stores: Sequence[Store], cfg: ProbeConfig, one: Callable[[str], pd.DataFrame]) -> list[pd.DataFrame]:
    """``one(task)`` for every task of :func:`expand_tasks`, in that order, the :func:`task_chains` side
    by side (``cfg.workers``; the numbers are those of one task after the other)."""
    tasks = expand_tasks(cfg)
    chains = task_chains(stores, tasks, cfg)
    done = side_by_side([lambda c=c: [(t, one(t)) for t in c] for c in chains], cpu_workers(cfg.workers))
    got = dict(pair for chain in done for pair in chain)
    return [got[t] for t in tasks]


def run_probes(stores: Sequence[Store | str], cfg: ProbeConfig | None = None, progress: bool = False) -> pd.DataFrame:
    """Fit and evaluate every probe; a tidy DataFrame with :data:`COLUMNS`."""
    cfg = cfg or ProbeConfig()
    stores = open_store_list(stores)
    frames = run_tasks(stores, cfg, lambda t: run_task(stores, t, cfg, progress))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def task_data(store: Store, task: str, cfg: ProbeConfig) -> list[TaskData]:
    """One TaskData, or one per speaker fold when cross-validating (see cv.use_cv)."""
    base = "f0" if task == SEMITONES else task
    tds = fold_tasks(store, base, cfg) if use_cv(store, base, cfg) else [gather_task(store, base, cfg)]
    return [semitone_task(store, td) for td in tds] if task == SEMITONES else tds


def semitone_task(store: Store, td: TaskData) -> TaskData:
    """F0 as semitones relative to the speaker's median F0 (over all of the speaker's voiced rows):
    the pitch contour, without the between-speaker differences that dominate Hz on held-out speakers."""
    if "speaker" not in store.utterances.columns:
        raise CodeclensError(f"{store.path}: f0_st needs a speaker column (or give --no-f0-semitones)")
    # Speakers as integer codes per utterance, broadcast to rows by the int32 groups: no per-row strings
    # (a string array and its sort per voiced frame was the slowest and largest step of f0_st).
    _, spk = np.unique(store.utterances["speaker"].astype(str).to_numpy(), return_inverse=True)
    spk = spk.reshape(-1).astype(np.int32)
    med = _speaker_medians([td.y[s] for s in SPLITS_], [td.groups[s] for s in SPLITS_], spk)
    ref = med[spk]  # per utterance
    y = {s: _semitones(td.y[s], td.groups[s], ref) for s in SPLITS_}
    return dataclasses.replace(td, task=SEMITONES, column=f"{td.column} (semitones re speaker median)", is_f0=False, y=y)


def _speaker_medians(hz: list[np.ndarray], utt: list[np.ndarray], spk: np.ndarray,
                     chunk: int = 1 << 20) -> np.ndarray:
    """Median per speaker id of the positive values ``hz`` (float32) of rows of utterances ``utt``
    (pieces of one sample), with ``spk`` the speaker id of each utterance; NaN for absent ids.
    As pandas' groupby median gives it (the mean of the two middle values in float64, returned
    in float32), from one in-place sort of an 8-byte key per row: (speaker << 32) | the float's
    bits, whose unsigned order is the values' order for positive floats. (pandas' groupby
    median built int64 codes, a sort indexer and float64 copies per row.)"""
    n_spk = int(spk.max()) + 1 if len(spk) else 0
    key = np.empty(sum(len(h) for h in hz), np.uint64)
    i = 0
    for h, u in zip(hz, utt):
        h = np.asarray(h, np.float32)
        if not (h > 0).all():
            raise ValueError("speaker medians need positive values")
        for a in range(0, len(h), chunk):
            part = (spk[u[a : a + chunk]].astype(np.uint64) << np.uint64(32)) | h[a : a + chunk].view(np.uint32)
            key[i : i + len(part)] = part
            i += len(part)
    key.sort()
    bounds = np.searchsorted(key, np.arange(n_spk + 1, dtype=np.uint64) << np.uint64(32))
    med = np.full(n_spk, np.nan, np.float64)
    low = np.uint64(0xFFFFFFFF)
    for k in range(n_spk):
        a, b = int(bounds[k]), int(bounds[k + 1])
        if b > a:
            mid = (key[[a + (b - a - 1) // 2, a + (b - a) // 2]] & low).astype(np.uint32).view(np.float32)
            med[k] = np.float32(mid.astype(np.float64).sum() / 2)
    return med


def _semitones(hz: np.ndarray, utt: np.ndarray, ref: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """``12 log2(hz / ref[utt])`` as float32, computed in float64 a chunk of rows at a time."""
    out = np.empty(len(hz), np.float32)
    for a in range(0, len(hz), chunk):
        out[a : a + chunk] = 12.0 * np.log2(hz[a : a + chunk] / ref[utt[a : a + chunk]])
    return out


def _fit_all(jobs: list[Job], cfg: ProbeConfig, log) -> tuple[list[JobFit], list | None]:
    # Evaluation reads the predictions only. A fit's whitening (a float64 D x r projection, 8 MB at D = 1024)
    # and weights were kept for every probe of every fold until the task was evaluated: 45 projections,
    # 0.36 GB, for 9 representations in 5 folds.
    fits = [_predictions_only(f) for f in fit(jobs, cfg, log)]
    mlp_fits = None
    if cfg.mlp:
        from .mlp import fit_mlp_jobs

        mlp_fits = fit_mlp_jobs(jobs, cfg, resolve_device(cfg.device), log)
    return fits, mlp_fits


def _predictions_only(f: JobFit) -> JobFit:
    return dataclasses.replace(f, whitener=None, W=None, b=None)


def run_task(stores: list[Store], task: str, cfg: ProbeConfig, progress: bool = False) -> pd.DataFrame:
    """One task on every store: the streamed count-table path (:mod:`.tables`) where it applies,
    the general path (per-row task data, jobs and fits) for the other stores."""
    from . import tables

    names = display_names(stores)
    by_store: dict[int, list[dict[str, Any]]] = {}
    base = "f0" if task == SEMITONES else task
    for s in stores:
        if not use_cv(s, base, cfg):
            check_split_speakers(s, base, cfg)
    for si, s in enumerate(stores):
        if tables.eligible(s, task, cfg):
            rows = tables.run_store(s, task, cfg, si, names, progress)
            if rows is not None:
                by_store[si] = rows
    rest = [si for si in range(len(stores)) if si not in by_store]
    if rest:
        rows = _run_general([stores[i] for i in rest], rest, task, cfg, names, progress)
        for si in rest:
            by_store[si] = [r for r in rows if r["store"] == names[id(stores[si])]]
    return pd.DataFrame([r for si in range(len(stores)) for r in by_store[si]], columns=COLUMNS)


def _run_general(stores: list[Store], index: list[int], task: str, cfg: ProbeConfig, names: dict[int, str],
                 progress: bool = False) -> list[dict[str, Any]]:
    plans = [task_data(s, task, cfg) for s in stores]
    rounds = max(len(p) for p in plans)
    # Round r fits the r-th TaskData of every store that has one (fold r, or the one split).
    per_round = []
    for r in range(rounds):
        live = [i for i, p in enumerate(plans) if r < len(p)]
        per_round.append((live, make_jobs([stores[i] for i in live], [plans[i][r] for i in live], cfg,
                                          [index[i] for i in live])))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        n_mlp = 0
        if cfg.mlp:
            from .mlp import eligible

            n_mlp = sum(eligible(j) for _, jobs in per_round for j in jobs)
        bar = tqdm(total=sum(len(j) for _, j in per_round) + n_mlp, desc=f"probe {task}", unit="probe", leave=False)
    try:
        log = bar.update if bar is not None else None
        fitted = [(live, jobs, *_fit_all(jobs, cfg, log)) for live, jobs in per_round]
    finally:
        if bar is not None:
            bar.close()
    jobs, fits, mlps, pooled = [], [], [], {}
    for si, plan in enumerate(plans):
        mine = []  # per round: this store's (jobs, fits, mlp fits)
        for live, rj, rf, rm in fitted:
            if si in live:
                idx = [k for k, j in enumerate(rj) if j.store is stores[si]]
                mine.append(([rj[k] for k in idx], [rf[k] for k in idx], [rm[k] for k in idx] if rm else None))
        if len(plan) == 1:
            j, f, m = mine[0]
        else:
            j, f, m, pool = _pool_folds(plan, mine)
            pooled[id(pool.td)] = pool
        jobs += j
        fits += f
        mlps += m if m is not None else [None] * len(j)
    return evaluate(jobs, fits, cfg, mlps if cfg.mlp else None, pooled, names)


def _pool_folds(folds: list[TaskData], per_fold) -> tuple[list[Job], list[JobFit], list | None, Pooled]:
    """Pooled jobs and fits of one store's folds: test predictions concatenated in fold order.
    A probe is pooled when every fold has it (a control can be missing in a fold, see _control)."""
    pool = pool_tasks(folds)
    td = pool.td
    index = [{(j.rep, j.control): k for k, j in enumerate(pf[0])} for pf in per_fold]
    jobs, fits, mlps = [], [], []
    first_jobs, _, first_mlp = per_fold[0]
    for job in first_jobs:
        key = (job.rep, job.control)
        if not all(key in ix for ix in index):
            continue
        at = [ix[key] for ix in index]
        fjobs = [pf[0][k] for pf, k in zip(per_fold, at)]
        ffits = [pf[1][k] for pf, k in zip(per_fold, at)]
        y = {s: (cv_pool_labels(folds[:1], td, [job.y[s]]) if td.categorical else job.y[s]) for s in ("train", "val")}
        y["test"] = cv_pool_labels(folds, td, [j.y["test"] for j in fjobs])
        jobs.append(Job(job.store, job.rep, td, y, job.control))
        lookup = None
        if all(f.lookup_test is not None for f in ffits):
            lookup = cv_pool_labels(folds, td, [f.lookup_test for f in ffits])
        fits.append(dataclasses.replace(
            ffits[0], pred_test=cv_pool_labels(folds, td, [f.pred_test for f in ffits]), lookup_test=lookup,
            l2=float(np.median([f.l2 for f in ffits])), iters=sum(f.iters for f in ffits),
            passes=sum(f.passes for f in ffits)))
        ms = [pf[2][k] if pf[2] is not None else None for pf, k in zip(per_fold, at)]
        if all(m is not None for m in ms):
            mlps.append(dataclasses.replace(ms[0], pred_test=cv_pool_labels(folds, td, [m.pred_test for m in ms]),
                                            weight_decay=float(np.median([m.weight_decay for m in ms]))))
        else:
            mlps.append(None)
    return jobs, fits, mlps if first_mlp is not None else None, pool


# -- evaluation --------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Resampling:
    """What the bootstrap of one task's test rows resamples."""

    units: np.ndarray
    """Unit index of every test row."""
    n_units: int
    unit: str
    """speaker (speaker-disjoint splits: the probe must generalise to new speakers) or utterance."""
    weights: np.ndarray | None
    """[B, U] bootstrap multiplicities (None without --bootstrap)."""


def _dense(ids: np.ndarray, n: int) -> np.ndarray:
    """Ids in [0, n) renumbered 0..m-1 in order, without sorting the rows (O(rows + n))."""
    present = np.zeros(n + 1, bool)
    present[ids] = True
    return (np.cumsum(present) - 1)[ids]


def resampling(store: Store, td: TaskData, cfg: ProbeConfig) -> Resampling:
    """Speakers on speaker-disjoint splits, utterances otherwise. (Not utterances within
    speakers: with one test utterance per speaker that has no variation at all; macro-F1
    instead keeps the full sample's class set, see metrics.class_metrics.)"""
    utt = np.asarray(td.groups["test"], np.int64)
    if "speaker" in store.utterances.columns and td.split_column in SPEAKER_DISJOINT:
        _, spk = np.unique(store.utterances["speaker"].astype(str).to_numpy(), return_inverse=True)
        spk = spk.reshape(-1)
        units = _dense(spk[utt], int(spk.max()) + 1)
        unit = "speaker"
    else:
        units = _dense(utt, store.n_utterances)
        unit = "utterance"
    n = int(units.max()) + 1 if len(units) else 0
    w = M.bootstrap_weights(n, cfg.bootstrap, cfg.seed) if cfg.bootstrap and n > 1 else None
    return Resampling(units, n, unit, w)


Score = tuple[float, "np.ndarray | None", "np.ndarray | None"]
"""(value, bootstrap replicates, jackknife replicates)."""


def _scores(td: TaskData, y_true: np.ndarray, pred: np.ndarray, rs: Resampling) -> dict[str, Score]:
    """metric -> (value, bootstrap replicates, unit jackknife replicates)."""
    groups, n_groups = rs.units, rs.n_units
    if td.categorical:
        pred = np.asarray(pred, np.int64)
        if td.open_set:  # rows that could not be identified (-1) count as errors
            pred = np.where(pred < 0, td.n_classes, pred)
            st = M.class_stats(y_true, pred, groups, n_groups, td.n_classes + 1)
            st = M.ClassStats(st.tp[:, :-1], st.fp[:, :-1], st.fn[:, :-1], st.correct, st.n)
        else:
            st = M.class_stats(y_true, pred, groups, n_groups, td.n_classes)
    else:
        st = M.reg_stats(y_true, pred, groups, n_groups, td.is_f0)
    return stat_scores(st, rs.weights, td.is_f0)


def stat_scores(st: "M.ClassStats | M.RegStats", boot: np.ndarray | None, cents: bool = False) -> dict[str, Score]:
    """metric -> (value, bootstrap replicates, unit jackknife replicates) from per-unit statistics."""
    if isinstance(st, M.ClassStats):
        val = M.class_metrics(st)
        reps = M.class_metrics(st, boot) if boot is not None else None
        jack = M.class_jackknife(st) if boot is not None else None
    else:
        val = M.reg_metrics(st, cents=cents)
        reps = M.reg_metrics(st, boot, cents=cents) if boot is not None else None
        jack = M.reg_jackknife(st, cents=cents) if boot is not None else None
    return {k: (float(v), None if reps is None else reps[k], None if jack is None else jack[k]) for k, v in val.items()}


def _chance(td: TaskData, y_train: np.ndarray, y_test: np.ndarray, rs: Resampling,
            base_pred: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """metric -> (majority class / train-mean predictor, uniform guessing among the train classes).
    ``base_pred``: that predictor's test predictions when it is not one constant (cross-validation folds)."""
    if td.open_set:
        # Identification among the test classes: guessing the most frequent one, or any one uniformly.
        _, yi = np.unique(y_test, return_inverse=True)
        yi = yi.reshape(-1)
        k = int(yi.max()) + 1
        maj = M.majority_chance(yi, yi, k)
        uni = M.uniform_chance(yi, k, k)
        return {"accuracy": (maj["accuracy"], uni["accuracy"]), "macro_f1": (maj["macro_f1"], uni["macro_f1"]),
                "eer": (0.5, 0.5)}
    if td.categorical:
        if base_pred is None:
            return M.chance_counts(np.bincount(y_train, minlength=td.n_classes),
                                   np.bincount(y_test, minlength=td.n_classes), td.n_train_classes)
        maj = {"accuracy": M.accuracy(y_test, base_pred), "macro_f1": M.macro_f1(y_test, base_pred, td.n_classes)}
        uni = M.uniform_chance(y_test, td.n_train_classes, td.n_classes)
        return {k: (maj[k], uni[k]) for k in maj}
    if base_pred is None:  # the mean in float64 (a float32 mean drifts with the number of rows)
        base_pred = np.full(len(y_test), float(np.mean(y_train, dtype=np.float64)))
    s = M.reg_metrics(M.reg_stats(y_test, base_pred, rs.units, rs.n_units, td.is_f0), cents=td.is_f0)
    return {k: (float(v), float("nan")) for k, v in s.items()}


def display_names(stores: Sequence[Store]) -> dict[int, str]:
    """Store names for tables and legends; paths where two stores share a name."""
    names = [s.name for s in stores]
    return {id(s): (s.name if names.count(s.name) == 1 else str(s.path)) for s in stores}


def _diff(a, b, ca: float, cc: float):
    return None if a is None or b is None else selectivity(a, b, ca, cc)


def _selectivity(task_found, scores, chance) -> dict[str, Score]:
    """Selectivity of every shared metric from the task's and the control's scores and chance
    (replicates paired: the same resampled units)."""
    task, task_chance = task_found
    sel = {}
    for metric in ("accuracy", "macro_f1", "r2"):
        if metric in task and metric in scores:
            (tv, tr, tj), (cv, cr, cj) = task[metric], scores[metric]
            tc, cc = task_chance[metric][0], chance[metric][0]
            sel[metric] = (float(selectivity(tv, cv, tc, cc)), _diff(tr, cr, tc, cc), _diff(tj, cj, tc, cc))
    return sel


def emit(rows: list[dict[str, Any]], base: dict[str, Any], probe: str, scores: dict[str, Score],
         chance: dict[str, tuple[float, float]] | None, l2: float = np.nan, backend: str = "torch",
         fit: Any = None) -> None:
    """Append one probe's rows (one per metric) with its interval, chance levels and p-value; ``fit`` (a
    frame-path JobFit) adds its optimiser iterations and passes over the train rows (count-table fits: NaN)."""
    frame = fit is not None and fit.passes > 0
    for metric, (v, reps, jack) in scores.items():
        lo, hi = M.bca_ci(v, reps, jack) if reps is not None else (np.nan, np.nan)
        cm, cu = chance.get(metric, (np.nan, np.nan)) if chance else (np.nan, np.nan)
        # Selectivity rows test against 0 (no gain over the control); others against chance.
        bar = M.chance_bar(metric, cm, cu) if chance else 0.0
        p = M.p_above(reps, bar, metric in M.LOWER_IS_BETTER) if reps is not None else np.nan
        rows.append({**base, "probe": probe, "metric": metric, "value": v, "ci_low": lo, "ci_high": hi,
                     "chance_majority": cm, "chance_uniform": cu, "chance": bar if chance else np.nan,
                     "p_value": p, "l2": l2, "backend": backend,
                     "iters": fit.iters if frame else np.nan, "passes": fit.passes if frame else np.nan})


def row_base(store: Store, rep: Repr, names: dict[int, str], cfg: ProbeConfig, **fields: Any) -> dict[str, Any]:
    """The columns every row of one probe shares (``fields``: the task's own)."""
    return {"store": names[id(store)], "codec": store.codec.get("spec", ""), "representation": rep.name,
            "kind": rep.kind, "layer": rep.layer if rep.layer is not None else np.nan, **fields,
            "backend": cfg.backend}


def evaluate(jobs: list[Job], fits: list[JobFit], cfg: ProbeConfig,
             mlp_fits: list | None = None, pooled: dict[int, Pooled] | None = None,
             names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Tidy rows of every fitted probe; ``mlp_fits`` (job order, None where not fitted) adds the MLP's rows;
    ``pooled`` (by id of TaskData) the cross-validated tasks' fold-wise baselines; ``names``: display names
    of the stores by id (default: from the jobs' stores)."""
    pooled = pooled or {}
    rows: list[dict[str, Any]] = []
    if names is None:
        names = display_names(list({id(j.store): j.store for j in jobs}.values()))
    boots: dict[int, tuple[Resampling, tuple[float, float]]] = {}
    task_reps: dict[tuple[int, Repr], dict] = {}
    mlp_reps: dict[tuple[int, Repr], dict] = {}
    for i, (job, f) in enumerate(zip(jobs, fits)):
        td, key = job.td, id(job.td)
        pool = pooled.get(key)
        if key not in boots:
            rng_ = pool.target_range if pool is not None else (
                (np.nan, np.nan) if td.categorical else target_range(td.y["train"], td.y["test"]))
            boots[key] = (resampling(job.store, td, cfg), rng_)
        rs, (outside, cover) = boots[key]
        base = row_base(
            job.store, job.rep, names, cfg, task=td.task, column=td.column, n_train=len(td.rows["train"]),
            n_test=len(td.rows["test"]), n_test_utterances=int(np.count_nonzero(np.bincount(td.groups["test"], minlength=1))),
            n_test_units=rs.n_units, unit=rs.unit, split=td.split_column, level=td.level,
            test_outside_train=outside, test_covers_train=cover)

        def emit_(probe: str, scores, chance, l2=np.nan, backend=cfg.backend, fit=None):
            emit(rows, base, probe, scores, chance, l2, backend, fit)

        yt = job.y["test"]
        chance = _chance(td, job.y["train"], yt, rs, pool.chance_pred if pool is not None and not job.control else None)
        scores = _scores(td, yt, f.pred_test, rs)
        if td.open_set and f.emb_test is not None:
            scores["eer"] = (M.equal_error_rate(f.emb_test, yt, td.groups["test"], seed=cfg.seed), None, None)
        if not job.control:
            emit_("linear", scores, chance, f.l2, fit=f)
            task_reps[(key, job.rep)] = (scores, chance)
            if f.lookup_test is not None and cfg.lookup:
                emit_("lookup", _scores(td, yt, f.lookup_test, rs), chance)
        else:
            emit_("control", scores, chance, f.l2, fit=f)
            found = task_reps.get((key, job.rep))
            if found is not None:
                emit_("selectivity", _selectivity(found, scores, chance), None)
        mf = mlp_fits[i] if mlp_fits is not None else None
        if mf is not None:  # the MLP is always fitted in torch, whatever --backend says
            ms = _scores(td, yt, mf.pred_test, rs)
            if not job.control:
                emit_("mlp", ms, chance, mf.weight_decay, "torch")
                mlp_reps[(key, job.rep)] = (ms, chance)
            else:
                emit_("mlp_control", ms, chance, mf.weight_decay, "torch")
                found = mlp_reps.get((key, job.rep))
                if found is not None:
                    emit_("mlp_selectivity", _selectivity(found, ms, chance), None, backend="torch")
    return rows


def primary_metric(categorical: bool) -> str:
    return "macro_f1" if categorical else "r2"

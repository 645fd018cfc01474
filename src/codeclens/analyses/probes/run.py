"""``run_probes``: every task x store x representation, with lookup bounds, controls and CIs."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ...errors import CodeclensError
from ...store import Repr, Store, parse_reprs
from ...util.device import resolve_device
from . import metrics as M
from .config import ProbeConfig
from .controls import code_types, control_labels, phone_types, selectivity
from .data import TaskData, gather_task
from .torch_backend import Job, JobFit

COLUMNS = [
    "store", "codec", "representation", "kind", "layer", "task", "column", "probe", "metric", "value",
    "ci_low", "ci_high", "chance_majority", "chance_uniform", "chance", "p_value", "n_train", "n_test",
    "n_test_utterances", "n_test_units", "unit", "l2", "split", "level", "backend",
    "test_outside_train", "test_covers_train",
]
SPEAKER_DISJOINT = ("split_spk", "cv_spk")
"""Split columns whose test speakers are unseen in train (the bootstrap then resamples speakers)."""


def open_store_list(stores: Sequence[Store | str]) -> list[Store]:
    out = [s if isinstance(s, Store) else Store(s) for s in stores]
    if not out:
        raise CodeclensError("give at least one --store")
    return out


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
    types = code_types(store, rep, td.rows) if cfg.control == "code" else phone_types(store, td.rows)
    return control_labels(types, td.y["train"], seed)


def make_jobs(stores: list[Store], tds: list[TaskData], cfg: ProbeConfig) -> list[Job]:
    jobs = []
    for si, (s, td) in enumerate(zip(stores, tds)):
        for ri, rep in enumerate(store_reprs(s, cfg)):
            jobs.append(Job(s, rep, td, td.y))
            ctrl = _control(s, rep, td, cfg, cfg.seed + 7919 * si + 104729 * ri + 1)
            if ctrl is not None:
                jobs.append(Job(s, rep, td, ctrl, control=True))
    return jobs


def fit(jobs: list[Job], cfg: ProbeConfig, log: Callable[[int], Any] | None = None) -> list[JobFit]:
    if cfg.backend == "sklearn":
        from .sklearn_backend import fit_jobs as sk_fit

        return sk_fit(jobs, cfg, log)
    from .torch_backend import fit_jobs

    return fit_jobs(jobs, cfg, resolve_device(cfg.device), log)


def run_probes(stores: Sequence[Store | str], cfg: ProbeConfig | None = None, progress: bool = False) -> pd.DataFrame:
    """Fit and evaluate every probe; a tidy DataFrame with :data:`COLUMNS`."""
    cfg = cfg or ProbeConfig()
    stores = open_store_list(stores)
    frames = [run_task(stores, task, cfg, progress) for task in cfg.task]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def run_task(stores: list[Store], task: str, cfg: ProbeConfig, progress: bool = False) -> pd.DataFrame:
    tds = [gather_task(s, task, cfg) for s in stores]
    jobs = make_jobs(stores, tds, cfg)
    bar, mlp_fits = None, None
    if progress:
        from tqdm.auto import tqdm

        n_mlp = 0
        if cfg.mlp:
            from .mlp import eligible

            n_mlp = sum(eligible(j) for j in jobs)
        bar = tqdm(total=len(jobs) + n_mlp, desc=f"probe {task}", unit="probe", leave=False)
    try:
        log = bar.update if bar is not None else None
        fits = fit(jobs, cfg, log)
        if cfg.mlp:
            from .mlp import fit_mlp_jobs

            mlp_fits = fit_mlp_jobs(jobs, cfg, resolve_device(cfg.device), log)
    finally:
        if bar is not None:
            bar.close()
    return pd.DataFrame(evaluate(jobs, fits, cfg, mlp_fits), columns=COLUMNS)


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


def resampling(store: Store, td: TaskData, cfg: ProbeConfig) -> Resampling:
    """Speakers on speaker-disjoint splits, utterances otherwise. (Not utterances within
    speakers: with one test utterance per speaker that has no variation at all; macro-F1
    instead keeps the full sample's class set, see metrics.class_metrics.)"""
    utt = np.asarray(td.groups["test"], np.int64)
    spk = store.utterances["speaker"].astype(str).to_numpy() if "speaker" in store.utterances.columns else None
    if spk is not None and td.split_column in SPEAKER_DISJOINT:
        _, units = np.unique(spk[utt], return_inverse=True)
        unit = "speaker"
    else:
        _, units = np.unique(utt, return_inverse=True)
        unit = "utterance"
    units = units.reshape(-1)
    n = int(units.max()) + 1 if len(units) else 0
    w = M.bootstrap_weights(n, cfg.bootstrap, cfg.seed) if cfg.bootstrap and n > 1 else None
    return Resampling(units, n, unit, w)


Score = tuple[float, "np.ndarray | None", "np.ndarray | None"]
"""(value, bootstrap replicates, jackknife replicates)."""


def _scores(td: TaskData, y_true: np.ndarray, pred: np.ndarray, rs: Resampling) -> dict[str, Score]:
    """metric -> (value, bootstrap replicates, unit jackknife replicates)."""
    groups, n_groups, boot = rs.units, rs.n_units, rs.weights
    if td.categorical:
        pred = np.asarray(pred, np.int64)
        if td.open_set:  # rows that could not be identified (-1) count as errors
            pred = np.where(pred < 0, td.n_classes, pred)
            st = M.class_stats(y_true, pred, groups, n_groups, td.n_classes + 1)
            st = M.ClassStats(st.tp[:, :-1], st.fp[:, :-1], st.fn[:, :-1], st.correct, st.n)
        else:
            st = M.class_stats(y_true, pred, groups, n_groups, td.n_classes)
        val = M.class_metrics(st)
        reps = M.class_metrics(st, boot) if boot is not None else None
        jack = M.class_jackknife(st) if boot is not None else None
    else:
        st = M.reg_stats(y_true, pred, groups, n_groups, td.is_f0)
        val = M.reg_metrics(st, cents=td.is_f0)
        reps = M.reg_metrics(st, boot, cents=td.is_f0) if boot is not None else None
        jack = M.reg_jackknife(st, cents=td.is_f0) if boot is not None else None
    return {k: (float(v), None if reps is None else reps[k], None if jack is None else jack[k]) for k, v in val.items()}


def _chance(td: TaskData, y_train: np.ndarray, y_test: np.ndarray, rs: Resampling) -> dict[str, tuple[float, float]]:
    """metric -> (majority / train-mean predictor, uniform guessing)."""
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
        maj = M.majority_chance(y_train, y_test, td.n_classes)
        uni = M.uniform_chance(y_test, td.n_train_classes, td.n_classes)
        return {k: (maj[k], uni[k]) for k in maj}
    pred = np.full(len(y_test), float(np.mean(y_train)))
    s = M.reg_metrics(M.reg_stats(y_test, pred, rs.units, rs.n_units, td.is_f0), cents=td.is_f0)
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


def target_range(td: TaskData) -> tuple[float, float]:
    """Regression targets: (share of test targets outside the train range [1st, 99th percentile],
    share of the train range [5th, 95th] covered by the test targets' [5th, 95th])."""
    if td.categorical or not len(td.y["test"]):
        return float("nan"), float("nan")
    ytr, yte = td.y["train"], td.y["test"]
    lo, hi = np.quantile(ytr, [0.01, 0.99])
    out = float(np.mean((yte < lo) | (yte > hi)))
    a, b = np.quantile(ytr, [0.05, 0.95])
    c, d = np.quantile(yte, [0.05, 0.95])
    cover = max(0.0, min(b, d) - max(a, c)) / (b - a) if b > a else float("nan")
    return out, float(cover)


def evaluate(jobs: list[Job], fits: list[JobFit], cfg: ProbeConfig,
             mlp_fits: list | None = None) -> list[dict[str, Any]]:
    """Tidy rows of every fitted probe; ``mlp_fits`` (job order, None where not fitted) adds the MLP's rows."""
    rows: list[dict[str, Any]] = []
    names = display_names(list({id(j.store): j.store for j in jobs}.values()))
    boots: dict[int, tuple[Resampling, tuple[float, float]]] = {}
    task_reps: dict[tuple[int, Repr], dict] = {}
    mlp_reps: dict[tuple[int, Repr], dict] = {}
    for i, (job, f) in enumerate(zip(jobs, fits)):
        td, key = job.td, id(job.td)
        if key not in boots:
            boots[key] = (resampling(job.store, td, cfg), target_range(td))
        rs, (outside, cover) = boots[key]
        base = {
            "store": names[id(job.store)], "codec": job.store.codec.get("spec", ""), "representation": job.rep.name,
            "kind": job.rep.kind, "layer": job.rep.layer if job.rep.layer is not None else np.nan,
            "task": td.task, "column": td.column, "n_train": len(td.rows["train"]), "n_test": len(td.rows["test"]),
            "n_test_utterances": len(np.unique(td.groups["test"])), "n_test_units": rs.n_units, "unit": rs.unit,
            "split": td.split_column, "level": td.level, "backend": cfg.backend,
            "test_outside_train": outside, "test_covers_train": cover,
        }

        def emit(probe: str, scores, chance, l2=np.nan, backend=cfg.backend):
            for metric, (v, reps, jack) in scores.items():
                lo, hi = M.bca_ci(v, reps, jack) if reps is not None else (np.nan, np.nan)
                cm, cu = chance.get(metric, (np.nan, np.nan)) if chance else (np.nan, np.nan)
                # Selectivity rows test against 0 (no gain over the control); others against chance.
                bar = M.chance_bar(metric, cm, cu) if chance else 0.0
                p = M.p_above(reps, bar, metric in M.LOWER_IS_BETTER) if reps is not None else np.nan
                rows.append({**base, "probe": probe, "metric": metric, "value": v, "ci_low": lo, "ci_high": hi,
                             "chance_majority": cm, "chance_uniform": cu, "chance": bar if chance else np.nan,
                             "p_value": p, "l2": l2, "backend": backend})

        yt = job.y["test"]
        chance = _chance(td, job.y["train"], yt, rs)
        scores = _scores(td, yt, f.pred_test, rs)
        if td.open_set and f.emb_test is not None:
            scores["eer"] = (M.equal_error_rate(f.emb_test, yt, td.groups["test"], seed=cfg.seed), None, None)
        if not job.control:
            emit("linear", scores, chance, f.l2)
            task_reps[(key, job.rep)] = (scores, chance)
            if f.lookup_test is not None and cfg.lookup:
                emit("lookup", _scores(td, yt, f.lookup_test, rs), chance)
        else:
            emit("control", scores, chance, f.l2)
            found = task_reps.get((key, job.rep))
            if found is not None:
                emit("selectivity", _selectivity(found, scores, chance), None)
        mf = mlp_fits[i] if mlp_fits is not None else None
        if mf is not None:  # the MLP is always fitted in torch, whatever --backend says
            ms = _scores(td, yt, mf.pred_test, rs)
            if not job.control:
                emit("mlp", ms, chance, mf.weight_decay, "torch")
                mlp_reps[(key, job.rep)] = (ms, chance)
            else:
                emit("mlp_control", ms, chance, mf.weight_decay, "torch")
                found = mlp_reps.get((key, job.rep))
                if found is not None:
                    emit("mlp_selectivity", _selectivity(found, ms, chance), None, backend="torch")
    return rows


def primary_metric(categorical: bool) -> str:
    return "macro_f1" if categorical else "r2"

"""``run_probes``: every task x store x representation, with lookup bounds, controls and CIs."""

from __future__ import annotations

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
    "ci_low", "ci_high", "chance_majority", "chance_uniform", "n_train", "n_test", "n_test_utterances",
    "l2", "split", "level", "backend",
]


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
def _test_groups(td: TaskData) -> tuple[np.ndarray, int]:
    _, g = np.unique(td.groups["test"], return_inverse=True)
    return g.reshape(-1), int(g.max()) + 1 if len(g) else 0


def _scores(td: TaskData, y_true: np.ndarray, pred: np.ndarray, groups, n_groups, boot) -> dict[str, tuple[float, np.ndarray | None]]:
    """metric -> (value, bootstrap replicates)."""
    if td.categorical:
        pred = np.asarray(pred, np.int64)
        if td.open_set:  # rows that could not be identified (-1) count as errors
            pred = np.where(pred < 0, td.n_classes, pred)
            st = M.class_stats(y_true, pred, groups, n_groups, td.n_classes + 1)
            st = M.ClassStats(st.tp[:, :-1], st.fp[:, :-1], st.fn[:, :-1], st.correct, st.n)
        else:
            st = M.class_stats(y_true, pred, groups, n_groups, td.n_classes)
        val, reps = M.class_metrics(st), (M.class_metrics(st, boot) if boot is not None else None)
    else:
        st = M.reg_stats(y_true, pred, groups, n_groups, td.is_f0)
        val = M.reg_metrics(st, cents=td.is_f0)
        reps = M.reg_metrics(st, boot, cents=td.is_f0) if boot is not None else None
    return {k: (float(v), None if reps is None else reps[k]) for k, v in val.items()}


def _chance(td: TaskData, y_train: np.ndarray, y_test: np.ndarray, groups, n_groups) -> dict[str, tuple[float, float]]:
    """metric -> (majority / train-mean predictor, uniform guessing)."""
    if td.open_set:
        # Identification among the test classes: guessing the most frequent one, or any one uniformly.
        k = len(np.unique(y_test))
        maj = M.majority_chance(y_test, y_test, td.n_classes)
        return {"accuracy": (maj["accuracy"], 1.0 / k), "macro_f1": (maj["macro_f1"], np.nan), "eer": (0.5, 0.5)}
    if td.categorical:
        maj = M.majority_chance(y_train, y_test, td.n_classes)
        uni = M.uniform_chance(y_test, td.n_train_classes, td.n_classes)
        return {k: (maj[k], uni[k]) for k in maj}
    pred = np.full(len(y_test), float(np.mean(y_train)))
    s = M.reg_metrics(M.reg_stats(y_test, pred, groups, n_groups, td.is_f0), cents=td.is_f0)
    return {k: (float(v), float("nan")) for k, v in s.items()}


def display_names(stores: Sequence[Store]) -> dict[int, str]:
    """Store names for tables and legends; paths where two stores share a name."""
    names = [s.name for s in stores]
    return {id(s): (s.name if names.count(s.name) == 1 else str(s.path)) for s in stores}


def _selectivity(task_found, scores, chance) -> dict[str, tuple[float, np.ndarray | None]]:
    """Selectivity of every shared metric from the task's and the control's (value, replicates) and chance."""
    task, task_chance = task_found
    sel = {}
    for metric in ("accuracy", "macro_f1", "r2"):
        if metric in task and metric in scores:
            (tv, tr), (cv, cr) = task[metric], scores[metric]
            tc, cc = task_chance[metric][0], chance[metric][0]
            sel[metric] = (float(selectivity(tv, cv, tc, cc)), None if tr is None else selectivity(tr, cr, tc, cc))
    return sel


def evaluate(jobs: list[Job], fits: list[JobFit], cfg: ProbeConfig,
             mlp_fits: list | None = None) -> list[dict[str, Any]]:
    """Tidy rows of every fitted probe; ``mlp_fits`` (job order, None where not fitted) adds the MLP's rows."""
    rows: list[dict[str, Any]] = []
    names = display_names(list({id(j.store): j.store for j in jobs}.values()))
    boots: dict[int, tuple] = {}
    task_reps: dict[tuple[int, Repr], dict] = {}
    mlp_reps: dict[tuple[int, Repr], dict] = {}
    for i, (job, f) in enumerate(zip(jobs, fits)):
        td, key = job.td, id(job.td)
        if key not in boots:
            g, n = _test_groups(td)
            w = M.bootstrap_weights(n, cfg.bootstrap, cfg.seed) if cfg.bootstrap and n > 0 else None
            boots[key] = (g, n, w)
        g, n, w = boots[key]
        base = {
            "store": names[id(job.store)], "codec": job.store.codec.get("spec", ""), "representation": job.rep.name,
            "kind": job.rep.kind, "layer": job.rep.layer if job.rep.layer is not None else np.nan,
            "task": td.task, "column": td.column, "n_train": len(td.rows["train"]), "n_test": len(td.rows["test"]),
            "n_test_utterances": n, "split": td.split_column, "level": td.level, "backend": cfg.backend,
        }

        def emit(probe: str, scores, chance, l2=np.nan, backend=cfg.backend):
            for metric, (v, reps) in scores.items():
                lo, hi = M.percentile_ci(reps) if reps is not None else (np.nan, np.nan)
                cm, cu = chance.get(metric, (np.nan, np.nan)) if chance else (np.nan, np.nan)
                rows.append({**base, "probe": probe, "metric": metric, "value": v, "ci_low": lo, "ci_high": hi,
                             "chance_majority": cm, "chance_uniform": cu, "l2": l2, "backend": backend})

        yt = job.y["test"]
        chance = _chance(td, job.y["train"], yt, g, n)
        scores = _scores(td, yt, f.pred_test, g, n, w)
        if td.open_set and f.emb_test is not None:
            scores["eer"] = (M.equal_error_rate(f.emb_test, yt, seed=cfg.seed), None)
        if not job.control:
            emit("linear", scores, chance, f.l2)
            task_reps[(key, job.rep)] = (scores, chance)
            if f.lookup_test is not None and cfg.lookup:
                emit("lookup", _scores(td, yt, f.lookup_test, g, n, w), chance)
        else:
            emit("control", scores, chance, f.l2)
            found = task_reps.get((key, job.rep))
            if found is not None:
                emit("selectivity", _selectivity(found, scores, chance), None)
        mf = mlp_fits[i] if mlp_fits is not None else None
        if mf is not None:  # the MLP is always fitted in torch, whatever --backend says
            ms = _scores(td, yt, mf.pred_test, g, n, w)
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

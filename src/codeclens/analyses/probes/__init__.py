"""Linear probes per RVQ layer, with code-lookup bounds, control tasks and bootstrap CIs
(and optional one-hidden-layer MLP probes, ``mlp=True``).

Python API: :func:`run_probes` (tidy DataFrame), :func:`fit_probe` (one reusable
probe), the ``probes`` analysis (files + result.json) and ``codeclens probe``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ...util.atomic import atomic_path
from ...util.provenance import config_hash
from ...config import to_dict
from .. import ANALYSES
from ..base import Analysis, AnalysisResult, Artifact
from .config import ProbeConfig
from .fitted import FittedProbe, fit_probe
from .run import COLUMNS, open_store_list, run_probes, run_task, run_tasks

__all__ = ["ProbeConfig", "ProbesAnalysis", "FittedProbe", "fit_probe", "run_probes", "COLUMNS"]


@ANALYSES.register("probes")
class ProbesAnalysis(Analysis):
    name = "probes"
    title = "Linear probes per RVQ layer"
    Config = ProbeConfig

    def run(self, stores: Sequence, cfg: ProbeConfig, out: Path, progress: bool = True) -> AnalysisResult:
        stores = open_store_list(stores)
        out = Path(out)
        parts = run_tasks(stores, cfg, lambda task: self._task(stores, task, cfg, out, progress))
        df = pd.concat(parts, ignore_index=True)
        with atomic_path(out / "probes.csv", ".csv") as tmp:
            df.to_csv(tmp, index=False)
        from .figures import heatmap, layer_curves

        layer_curves(df, out / "probes_by_layer")
        heatmap(df, out / "probes_heatmap")
        arts = (
            Artifact("probes.csv", "Every probe: store, representation, task, probe (linear | code-lookup bound, "
                     "accuracy-optimal | control | selectivity; with --mlp also mlp | mlp_control | mlp_selectivity), "
                     "metric, value with a 95% BCa bootstrap interval over the resampled unit (test speakers on "
                     "speaker-disjoint splits, test utterances otherwise), majority and uniform chance, and a "
                     "one-sided bootstrap p-value against the higher chance (selectivity: against 0).", "table"),
            Artifact("probes_by_layer.png", "Test score vs RVQ layer per task (macro-F1 or R²): linear probes with "
                     "95% CIs, code-lookup bound (accuracy-optimal; dash-dot), control task (dotted), MLP probes "
                     "(x markers, with --mlp), chance (the higher of majority and uniform).", "figure"),
            Artifact("probes_heatmap.png", "Representation x task grid of the probe score, per store.", "figure"),
        )
        return AnalysisResult(self.name, self.title, arts, summary(df))

    def _task(self, stores, task: str, cfg: ProbeConfig, out: Path, progress: bool) -> pd.DataFrame:
        """One task's rows, cached under tasks/ so a re-run after an interruption resumes. The key holds each
        store's content fingerprint (codes, tables, labels, manifest): relabelling or re-extracting a store
        makes a new key, so results are never served from data that has changed."""
        ident = {k: v for k, v in to_dict(cfg).items() if k not in ("device", "workers", "task")}
        ident.update(task=task, stores=[(str(s.path), s.fingerprint) for s in stores])
        path = out / "tasks" / f"{task}-{config_hash(ident)}.csv"
        if path.is_file():
            return pd.read_csv(path)
        df = run_task(stores, task, cfg, progress)
        with atomic_path(path, ".csv") as tmp:
            df.to_csv(tmp, index=False)
        return df


ALPHA = 0.05
"""Level of the one-sided tests against chance in summaries (Holm-corrected over representations)."""


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def _warnings(d: pd.DataFrame, task: str) -> list[str]:
    out = []
    outside = d["test_outside_train"].max() if "test_outside_train" in d else np.nan
    cover = d["test_covers_train"].min() if "test_covers_train" in d else np.nan
    if np.isfinite(outside) and outside > 0.1:
        out.append(f"warning: {outside:.0%} of {task} test targets lie outside the training range, so R² there "
                   "measures extrapolation")
    if np.isfinite(cover) and cover < 0.5:
        out.append(f"warning: the test speakers cover only {cover:.0%} of the training range of {task}")
    return out


def summary(df: pd.DataFrame) -> str:
    """Per store and task: the best representation above chance, or that none is; with what was resampled."""
    lines = []
    lin = df[df["probe"] == "linear"]
    for (store, task), d in lin.groupby(["store", "task"], sort=False):
        m = "macro_f1" if "macro_f1" in set(d["metric"]) else "r2"
        d = d[d["metric"] == m]
        if d.empty:
            continue
        unit = str(d["unit"].iloc[0]) if "unit" in d else "utterance"
        cv = ", speaker-fold cross-validation" if str(d["split"].iloc[0]) == "cv_spk" else ""
        p = holm(d["p_value"].to_numpy()) if "p_value" in d else np.full(len(d), np.nan)
        above = d[p < ALPHA]
        tested = np.isfinite(p).any()
        pool = above if len(above) else d
        best = pool.loc[pool["value"].idxmax()]
        ci = (f"95% CI {best['ci_low']:.3f}-{best['ci_high']:.3f} over test {unit}s" if np.isfinite(best["ci_low"])
              else "no interval") + cv
        chance = best.get("chance", np.nan)
        if tested and not len(above):
            lines.append(f"{store}: no representation decodes {task} above chance (best {best['representation']}: "
                         f"{m} {best['value']:.3f}, {ci}; chance {chance:.3f}).")
        else:
            n = f"{len(above)} of {len(d)} representations above chance; " if tested else ""
            sel = df[(df["probe"] == "selectivity") & (df["store"] == store) & (df["task"] == task)
                     & (df["representation"] == best["representation"]) & (df["metric"] == m)]
            ctrl = ""
            if len(sel) and np.isfinite(sel["p_value"].iloc[0]) and sel["p_value"].iloc[0] >= ALPHA:
                ctrl = " but not above its control task"
            lines.append(f"{store}: {task} is best decoded from {best['representation']} ({m} {best['value']:.3f}, "
                         f"{ci}; {n}chance {chance:.3f}){ctrl}.")
        lines += [f"{store}: {w}." for w in _warnings(d, task)]
    return " ".join(lines)

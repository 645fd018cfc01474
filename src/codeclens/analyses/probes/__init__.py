"""Linear probes per RVQ layer, with code-lookup bounds, control tasks and bootstrap CIs
(and optional one-hidden-layer MLP probes, ``mlp=True``).

Python API: :func:`run_probes` (tidy DataFrame), :func:`fit_probe` (one reusable
probe), the ``probes`` analysis (files + result.json) and ``codeclens probe``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ...util.atomic import atomic_path
from ...util.provenance import config_hash
from ...config import to_dict
from .. import ANALYSES
from ..base import Analysis, AnalysisResult, Artifact
from .config import ProbeConfig
from .fitted import FittedProbe, fit_probe
from .run import COLUMNS, open_store_list, run_probes, run_task

__all__ = ["ProbeConfig", "ProbesAnalysis", "FittedProbe", "fit_probe", "run_probes", "COLUMNS"]


@ANALYSES.register("probes")
class ProbesAnalysis(Analysis):
    name = "probes"
    title = "Linear probes per RVQ layer"
    Config = ProbeConfig

    def run(self, stores: Sequence, cfg: ProbeConfig, out: Path, progress: bool = True) -> AnalysisResult:
        stores = open_store_list(stores)
        out = Path(out)
        parts = []
        for task in cfg.task:
            parts.append(self._task(stores, task, cfg, out, progress))
        df = pd.concat(parts, ignore_index=True)
        with atomic_path(out / "probes.csv", ".csv") as tmp:
            df.to_csv(tmp, index=False)
        from .figures import heatmap, layer_curves

        layer_curves(df, out / "probes_by_layer")
        heatmap(df, out / "probes_heatmap")
        arts = (
            Artifact("probes.csv", "Every probe: store, representation, task, probe (linear | lookup bound | control "
                     "| selectivity; with --mlp also mlp | mlp_control | mlp_selectivity), metric, value with 95% "
                     "bootstrap CI over test utterances, chance levels.", "table"),
            Artifact("probes_by_layer.png", "Test score vs RVQ layer per task (macro-F1 or R²): linear probes with "
                     "95% CIs, code-lookup upper bound (dash-dot), control task (dotted), MLP probes (x markers, "
                     "with --mlp), majority chance.", "figure"),
            Artifact("probes_heatmap.png", "Representation x task grid of the probe score, per store.", "figure"),
        )
        return AnalysisResult(self.name, self.title, arts, summary(df))

    def _task(self, stores, task: str, cfg: ProbeConfig, out: Path, progress: bool) -> pd.DataFrame:
        """One task's rows, cached under tasks/ so a re-run after an interruption resumes."""
        ident = {k: v for k, v in to_dict(cfg).items() if k not in ("device", "task")}
        ident.update(task=task, stores=[(str(s.path), s.manifest.get("config_hash"), s.n_frames) for s in stores])
        path = out / "tasks" / f"{task}-{config_hash(ident)}.csv"
        if path.is_file():
            return pd.read_csv(path)
        df = run_task(stores, task, cfg, progress)
        with atomic_path(path, ".csv") as tmp:
            df.to_csv(tmp, index=False)
        return df


def summary(df: pd.DataFrame) -> str:
    """Best representation per store and task, against chance."""
    lines = []
    lin = df[df["probe"] == "linear"]
    for (store, task), d in lin.groupby(["store", "task"], sort=False):
        m = "macro_f1" if "macro_f1" in set(d["metric"]) else "r2"
        d = d[d["metric"] == m]
        if d.empty:
            continue
        best = d.loc[d["value"].idxmax()]
        lines.append(
            f"{store}: {task} is best decoded from {best['representation']} ({m} {best['value']:.3f}, "
            f"95% CI {best['ci_low']:.3f}-{best['ci_high']:.3f}; majority chance {best['chance_majority']:.3f})."
        )
    return " ".join(lines)

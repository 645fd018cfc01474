"""Re-render a finished run's figures from its result tables, without recomputing anything
(``codeclens figures RUN --format pdf``).

Each analysis kind that can redraw its figures from the tables it wrote registers a renderer
here (``@renderer("kind")``: result directory -> written files). Rendering goes through
:func:`codeclens.util.figures.save_figure`, so the formats asked for and the style file apply,
and codecs keep the colours of the study's codec order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import CodeclensError
from ..util.figures import codec_order, figure_formats, use_style

RENDERERS: dict[str, Callable[[Path], list[Path]]] = {}


def renderer(kind: str):
    def deco(fn):
        RENDERERS[kind] = fn
        return fn

    return deco


@renderer("probes")
def probes_figures(out: Path) -> list[Path]:
    from ..analyses.probes.figures import heatmap, layer_curves

    df = pd.read_csv(out / "probes.csv")
    return [*layer_curves(df, out / "probes_by_layer"), *heatmap(df, out / "probes_heatmap")]


@renderer("causal")
def causal_figures(out: Path) -> list[Path]:
    from ..analyses.causal.dose_figures import dose_figure, steering_figure
    from ..analyses.causal.figures import consumer_figure, offsets_figure, shapley_figure

    made: list[Path] = []
    for name, fn in (("decoder_shapley", shapley_figure), ("consumer_effects", consumer_figure),
                     ("consumer_offsets", offsets_figure), ("dose_response", dose_figure), ("steering", steering_figure)):
        if (out / f"{name}.csv").is_file():
            made += fn(pd.read_csv(out / f"{name}.csv"), out / name)
    if (out / "activation_patching.csv").is_file():
        from ..analyses.causal.activation_figures import activation_figure

        made += activation_figure(pd.read_csv(out / "activation_patching.csv", dtype={"layers": str}),
                                  out / "activation_patching")
    return made


@renderer("ablate")
def ablate_figures(out: Path) -> list[Path]:
    from ..analyses.ablate import figures
    from ..analyses.ablate.tables import IDEAL, LABELS

    made: list[Path] = []
    for d in sorted(p for p in out.iterdir() if (p / "effects.csv").is_file()):
        tidy = d / "effects_tidy.csv"
        group = str(pd.read_csv(tidy, usecols=["store"])["store"].iloc[0]) if tidy.is_file() else d.name
        made += [d / f for f, _ in figures.effect_figures(pd.read_csv(d / "effects.csv"), d, group, LABELS, IDEAL)]
        if (d / "voice_conversion.csv").is_file():
            made += [d / f for f, _ in figures.vc_figure(pd.read_csv(d / "voice_conversion.csv"), d, group)]
    return made


@renderer("sae")
def sae_figures(out: Path) -> list[Path]:
    from ..analyses.sae import figures
    from ..analyses.sae.config import SAEStudyConfig
    from ..analyses.sae.study import _nearest

    cfg = _config(out, SAEStudyConfig)
    allres = pd.read_csv(out / "results.csv")
    res = allres[allres["kind"] == "feature"].reset_index(drop=True)
    ref = pd.read_csv(out / "reference_f1.csv")
    chance = dict(zip(ref["store"].astype(str), ref["majority_f1"] - ref["f1_ref"]))
    made = [figures.delta_f1_vs_s(res, chance, out / "delta_f1_vs_s.png"),
            figures.position_magnitude(res, _nearest(cfg.s, cfg.table_s), out / "position_magnitude.png")]
    for name, fn in (("density", figures.density), ("training", figures.training_curves), ("bitrate", figures.bitrate)):
        if (out / f"{name}.csv").is_file():
            made.append(fn(pd.read_csv(out / f"{name}.csv"), out / f"{name}.png"))
    return made


def _config(out: Path, cls):
    """The analysis' config, rebuilt from the config.json written beside its results."""
    from ..config import build

    raw = json.loads((out / "config.json").read_text())
    names = {f.name for f in __import__("dataclasses").fields(cls) if f.init}
    return build(cls, {k: v for k, v in raw.items() if k in names}, str(out / "config.json"))


@renderer("tokens")
def tokens_figures(out: Path) -> list[Path]:
    from ..analyses.tokens import TokensAnalysis, TokensConfig

    cfg = _config(out, TokensConfig)
    metrics = pd.read_csv(out / "token_metrics.csv")
    curves = pd.read_csv(out / "association_curve.csv")
    titles = list(dict.fromkeys(metrics["store"].astype(str)))
    n_classes = {str(k): int(v) for k, v in metrics.groupby("store")["n_labels"].first().items()}
    desc = ", ".join(sorted(set(metrics["label"].astype(str))))
    TokensAnalysis._curve_figure(curves, titles, n_classes, cfg, out / "association_curve.png", desc)
    TokensAnalysis._metrics_figure(metrics, titles, out / "token_metrics.png", desc)
    return [out / "association_curve.png", out / "token_metrics.png"]


@renderer("mi")
def mi_figures(out: Path) -> list[Path]:
    from ..analyses.mi import MIAnalysis, MIConfig

    cfg = _config(out, MIConfig)
    disc = pd.read_csv(out / "mi_discrete.csv")
    club = pd.read_csv(out / "mi_club.csv") if (out / "mi_club.csv").is_file() else pd.DataFrame()
    titles = list(dict.fromkeys(disc["store"].astype(str)))
    MIAnalysis._figure(disc, club, titles, cfg, out / "mi.png")
    return [out / "mi.png"]


@renderer("tsne")
def tsne_figures(out: Path) -> list[Path]:
    from ..analyses.tsne import TsneAnalysis, TsneConfig

    return TsneAnalysis.redraw(out, _config(out, TsneConfig))


def rerender(run_dir: str | Path, formats: tuple[str, ...], style: str | None = None,
             log=print) -> tuple[list[Path], list[str]]:
    """Redraw every figure a renderer exists for; returns (files written, step ids skipped)."""
    import os

    from .runrecord import read_run

    run = read_run(run_dir)
    if style is not None:
        if not Path(style).is_file():
            raise CodeclensError(f"{style}: no such style file")
        os.environ["CODECLENS_MPLSTYLE"] = str(Path(style).resolve())
    use_style()
    written, skipped = [], []
    with figure_formats(formats), codec_order(run.codec_labels):
        for s, out in run.analysis_steps():
            fn = RENDERERS.get(run.kinds.get(s["group"], ""))
            if fn is None or not (out / "result.json").is_file():
                skipped.append(s["id"])
                continue
            files = fn(out)
            log(f"{s['id']}: {len(files)} files")
            written.extend(files)
    return written, skipped

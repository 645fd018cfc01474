"""Token <-> label association per RVQ layer (Sadok et al. 2025, §2.1) and codebook usage.

For every layer k of every store, the codes of k are counted against a
discrete frame label (content units, phones, speakers) into a co-occurrence
matrix. From it: the ranked association curve (each code's label
distribution sorted from most to least associated, averaged over codes,
weighted by code frequency and unweighted, in %), top-1 association, purity,
PNMI (HuBERT's I(label; code) / H(label)), H(label | code), and codebook usage
(perplexity, dead codes). The shared store helpers used by the ``mi`` and
``tsne`` analyses live here too.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import CodeclensError
from ..util.atomic import atomic_path
from . import ANALYSES
from .base import Analysis, AnalysisResult, Artifact
from . import framestream as fs
from . import infotheory as it


# -- helpers shared by tokens / mi / tsne ------------------------------------------
def parse_layers(text: str, n_layers: int) -> list[int]:
    """1-based layers from ``all``, ``*``, ``3``, ``1-8`` or ``1,3,5-6``; out of range -> error."""
    text = str(text).replace(" ", "")
    if text in ("all", "*", ""):
        return list(range(1, n_layers + 1))
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CodeclensError(f"bad layer list '{text}': expected e.g. 1-8, 1,3,5 or all")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a < 1 or b < a:
            raise CodeclensError(f"bad layer range '{part}' (layers are 1-based)")
        if b > n_layers:
            raise CodeclensError(f"layer {b} asked for but the codec has {n_layers} layers")
        out.extend(range(a, b + 1))
    return list(dict.fromkeys(out))


def label_column_name(store: Any, name: str) -> str:
    """The column behind a label name: ``unit`` falls back to ``phone`` when the store has no units.

    Reads the frame table's schema only, never the table.
    """
    cols = set(fs.frame_column_names(store)) | set(store.utterances.columns)
    if name == "unit" and "unit" not in cols and "phone" in cols:
        return "phone"
    return name


def real_valued_message(store: Any, col: str) -> str:
    return (f"{store.path}: label column '{col}' is real-valued, not a discrete label "
            "(the mi analysis handles continuous attributes)")


def layer_codes(store: Any, layer: int) -> np.ndarray:
    """int64 codes of a 1-based layer for all frames."""
    if not 1 <= layer <= store.n_layers:
        raise CodeclensError(f"layer {layer} out of range: the store has {store.n_layers} layers")
    return np.asarray(store.codes[:, layer - 1], dtype=np.int64)


def store_labels(stores: Sequence[Any]) -> list[str]:
    """Short distinct panel titles for stores (their names, made unique)."""
    names: list[str] = []
    for s in stores:
        n = str(s.name)
        while n in names:
            n = f"{n}'"
        names.append(n)
    return names


def save_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)


def save_figure(fig: Any, path: Path) -> list[Path]:
    """PNG for the report, SVG and PDF for papers, in the run's figure style; the files written."""
    from ..util.figures import save_figure as save

    return save(fig, path)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..util.figures import use_style

    use_style()

    return plt


# -- the analysis ------------------------------------------------------------------
#: A statistic is "above its null" when it exceeds the shuffled mean by this many null standard deviations.
Z_NULL = 3.0


@dataclasses.dataclass(frozen=True)
class TokensConfig:
    label: str = "unit"
    """Discrete frame label: unit (content units; phones when the store has none), phone, speaker, or any column."""
    layers: str = "all"
    """1-based layers: all, 1-8, 1,3,5."""
    max_rank: int = 10
    """Ranks shown in the association-curve figure (tables keep every rank)."""
    min_count: int = 10
    """Per-code statistics (top-1 association, ranked curves) use codes with at least this many frames."""
    n_shuffles: int = 10
    """Shuffled-label tables for the null of PNMI and top-1 association (0: no null, no correction)."""
    seed: int = 0
    """Seed of the shuffled-label tables."""
    save_cooccurrence: bool = True
    """Save the per-layer code x label co-occurrence counts (cooccurrence.parquet)."""

    def __post_init__(self):
        if not self.label:
            raise ValueError("label must be a column name")
        if self.max_rank < 1:
            raise ValueError("max_rank must be >= 1")
        if self.min_count < 1:
            raise ValueError("min_count must be >= 1")
        if self.n_shuffles < 0:
            raise ValueError("n_shuffles must be >= 0")


@dataclasses.dataclass(frozen=True)
class LayerTokenStats:
    """Association and usage statistics of one layer against one label."""

    layer: int
    n_frames: int
    n_codes: int
    n_labels: int
    used_codes: int
    counted_codes: int
    """Codes with at least ``min_count`` frames (those the per-code statistics average over)."""
    min_count: int
    top1_pct: float
    top1_weighted_pct: float
    top1_null_pct: float
    """Mean top-1 association on shuffled labels: what an uninformative layer scores here."""
    label_purity: float
    code_purity: float
    pnmi_raw: float
    """Plug-in I(label; code) / H(label): biased upwards when codes x labels is large against the frames."""
    pnmi_null: float
    """Mean plug-in PNMI on shuffled labels (the estimator's bias under independence)."""
    pnmi_null_sd: float
    pnmi_corrected: float
    """Adjusted for chance: ``(pnmi_raw - pnmi_null) / (1 - pnmi_null)``; ~0 for a layer without
    information at any corpus size, 1 for codes that determine the label."""
    above_null: bool
    """pnmi_raw exceeds pnmi_null by more than Z_NULL null standard deviations."""
    mi_bits: float
    mi_corrected_bits: float
    h_label_bits: float
    h_label_given_code_bits: float
    perplexity: float
    dead_fraction: float
    majority_pct: float


def layer_token_stats(
    counts: np.ndarray, layer: int, min_count: int = 1, n_shuffles: int = 0, seed: int = 0
) -> LayerTokenStats:
    """All per-layer numbers from a ``[codes, labels]`` count matrix, with a shuffled-label null."""
    code_n = counts.sum(axis=1)
    label_n = counts.sum(axis=0)
    n = int(counts.sum())
    hy = it.entropy(label_n)
    mi = it.mutual_information(counts)
    null_mi, null_top1 = [], []
    for t in it.null_tables(counts, n_shuffles, seed):
        null_mi.append(it.mutual_information(t))
        null_top1.append(it.top1_association(t, min_count=min_count))
    nan = float("nan")
    mi_null = float(np.mean(null_mi)) if null_mi else nan
    sd_null = float(np.std(null_mi, ddof=1)) if len(null_mi) > 1 else nan
    pn = mi / hy if hy > 0 else nan
    pn_null = mi_null / hy if hy > 0 else nan
    return LayerTokenStats(
        layer=layer, n_frames=n, n_codes=counts.shape[0], n_labels=int((label_n > 0).sum()),
        used_codes=int((code_n > 0).sum()), counted_codes=int((code_n >= min_count).sum()), min_count=min_count,
        top1_pct=it.top1_association(counts, min_count=min_count),
        top1_weighted_pct=it.top1_association(counts, weighted=True, min_count=min_count),
        top1_null_pct=float(np.nanmean(null_top1)) if null_top1 and not np.isnan(null_top1).all() else nan,
        label_purity=it.label_purity(counts), code_purity=it.code_purity(counts),
        pnmi_raw=pn, pnmi_null=pn_null, pnmi_null_sd=sd_null / hy if hy > 0 else nan,
        pnmi_corrected=(pn - pn_null) / (1.0 - pn_null) if pn_null < 1 else nan,
        above_null=bool(mi - mi_null > Z_NULL * max(sd_null, 1e-12)),
        mi_bits=mi / it.LN2, mi_corrected_bits=(mi - mi_null) / it.LN2, h_label_bits=hy / it.LN2,
        h_label_given_code_bits=it.conditional_entropy(counts) / it.LN2,
        perplexity=it.perplexity(code_n), dead_fraction=it.dead_fraction(code_n),
        majority_pct=100.0 * float(label_n.max()) / max(n, 1),
    )


@ANALYSES.register("tokens")
class TokensAnalysis(Analysis):
    name = "tokens"
    title = "Token-label association per RVQ layer"
    Config = TokensConfig

    def run(self, stores, cfg: TokensConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from tqdm.auto import tqdm

        if not stores:
            raise CodeclensError("tokens: no store given")
        out = Path(out)
        titles = store_labels(stores)
        metric_rows, curve_rows, cooc_parts = [], [], []
        columns: dict[str, str] = {}
        n_classes: dict[str, int] = {}
        for store, title in zip(stores, titles):
            layers = parse_layers(cfg.layers, store.n_layers)
            col = label_column_name(store, cfg.label)
            # One streamed pass counts every layer at once: memory is the chunk and the tables.
            tables, classes = fs.count_codes_by_label(store, layers, col, real_message=real_valued_message(store, col))
            if not len(classes) or not tables[0].any():
                raise CodeclensError(f"{store.path}: label column '{col}' has no values")
            columns[title], n_classes[title] = col, len(classes)
            for layer, counts in tqdm(list(zip(layers, tables)), desc=f"tokens {title}", disable=not progress,
                                      leave=False):
                st = layer_token_stats(counts, layer, cfg.min_count, cfg.n_shuffles, cfg.seed + layer)
                metric_rows.append({"store": title, "codec": store.codec.get("spec", ""), "label": col,
                                    **dataclasses.asdict(st)})
                w = it.ranked_association(counts, weighted=True, min_count=cfg.min_count)
                u = it.ranked_association(counts, weighted=False, min_count=cfg.min_count)
                curve_rows.append(pd.DataFrame({"store": title, "layer": layer, "rank": np.arange(1, len(w) + 1),
                                                "weighted_pct": w, "unweighted_pct": u}))
                if cfg.save_cooccurrence:
                    k_idx, c_idx = np.nonzero(counts)
                    cooc_parts.append(pd.DataFrame({
                        "store": title, "layer": layer, "code": k_idx.astype(np.int32),
                        "label": classes[c_idx].astype(str), "count": counts[k_idx, c_idx],
                    }))
        metrics = pd.DataFrame(metric_rows)
        curves = pd.concat(curve_rows, ignore_index=True)
        save_csv(metrics, out / "token_metrics.csv")
        save_csv(curves, out / "association_curve.csv")
        null = (f"shuffled-label null: {cfg.n_shuffles} tables with the observed code and label counts and no "
                "dependence (labels permuted across frames)")
        arts = [
            Artifact("token_metrics.csv", "Per layer: PNMI = I(label;code)/H(label) raw (plug-in), its "
                     f"{null} (mean, sd) and the value adjusted for chance, (raw - null) / (1 - null); "
                     "top-1 association (codes with >= "
                     f"{cfg.min_count} frames, unweighted and frequency-weighted, %) and its null; label and code "
                     "purity; MI and H(label|code) in bits; codebook perplexity and dead-code fraction.", "table"),
            Artifact("association_curve.csv", "Ranked association: mean share (%) of a code's frames on its "
                     f"r-th most associated label (codes with >= {cfg.min_count} frames), weighted by code "
                     "frequency and unweighted.", "table"),
        ]
        if cfg.save_cooccurrence:
            with atomic_path(out / "cooccurrence.parquet", ".parquet") as tmp:
                pd.concat(cooc_parts, ignore_index=True).to_parquet(tmp, index=False)
            arts.append(Artifact("cooccurrence.parquet", "Non-zero code x label co-occurrence counts per layer.",
                                 "table"))
        label_desc = ", ".join(sorted(set(columns.values())))
        self._curve_figure(curves, titles, n_classes, cfg, out / "association_curve.png", label_desc)
        arts.append(Artifact(
            "association_curve.png",
            f"Ranked association of codes with {label_desc} labels (Sadok et al. 2025, Fig. 2): for each code with "
            f"at least {cfg.min_count} frames the label distribution sorted from most to least associated, averaged "
            f"over codes weighted by code frequency (top) and unweighted (bottom); one curve per RVQ layer, one "
            f"panel per store. Dotted: uniform label distribution.", "figure"))
        self._metrics_figure(metrics, titles, out / "token_metrics.png", label_desc)
        arts.append(Artifact(
            "token_metrics.png",
            f"Per layer: top-1 association with {label_desc} (dashed: majority-label rate; dotted: shuffled-label "
            f"null), bias-corrected PNMI ((raw - null) / (1 - null), null: mean PNMI on shuffled labels; "
            f"0: no information; faint dashed: raw plug-in PNMI), "
            f"H({label_desc} | code) and codebook usage (perplexity / codebook size; dashed: dead-code fraction).",
            "figure"))
        return AnalysisResult(self.name, self.title, tuple(arts), summary=self._summary(metrics, columns, cfg))

    # -- figures ---------------------------------------------------------------
    @staticmethod
    def _curve_figure(curves, titles, n_classes, cfg, path, label_desc) -> None:
        plt = pyplot()
        n = len(titles)
        fig, axes = plt.subplots(2, n, figsize=(4.2 * n + 0.8, 6.4), squeeze=False, sharey="row")
        for j, title in enumerate(titles):
            d = curves[(curves["store"] == title) & (curves["rank"] <= cfg.max_rank)]
            layers = sorted(d["layer"].unique())
            cmap = plt.get_cmap("viridis")
            for row, (colname, kind) in enumerate((("weighted_pct", "weighted"), ("unweighted_pct", "unweighted"))):
                ax = axes[row, j]
                for i, layer in enumerate(layers):
                    dd = d[d["layer"] == layer]
                    ax.plot(dd["rank"], dd[colname], marker="o", ms=3, color=cmap(i / max(len(layers) - 1, 1)),
                            label=f"layer {layer}")
                ax.axhline(100.0 / n_classes[title], color="grey", ls=":", lw=1, label="uniform")
                ax.set_xlabel(f"rank of associated {label_desc} label")
                if j == 0:
                    ax.set_ylabel(f"mean share of code's frames (%)\n[{kind} over codes]")
                ax.set_title(f"{title} ({kind})", fontsize=10)
                ax.grid(alpha=0.3)
            axes[0, j].legend(fontsize=7, ncol=2)
        fig.suptitle(f"Code-{label_desc} association by rank", fontsize=11)
        fig.tight_layout()
        save_figure(fig, path)

    @staticmethod
    def _metrics_figure(metrics, titles, path, label_desc) -> None:
        plt = pyplot()
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
        for t in titles:
            d = metrics[metrics["store"] == t]
            line = axes[0].plot(d["layer"], d["top1_pct"], marker="o", label=t)[0]
            axes[0].plot(d["layer"], d["majority_pct"], ls="--", color=line.get_color(), lw=1)
            axes[0].plot(d["layer"], d["top1_null_pct"], ls=":", color=line.get_color(), lw=1)
            axes[1].plot(d["layer"], d["pnmi_corrected"], marker="o", color=line.get_color(), label=t)
            axes[1].plot(d["layer"], d["pnmi_raw"], ls="--", color=line.get_color(), lw=1, alpha=0.5)
            axes[2].plot(d["layer"], d["h_label_given_code_bits"], marker="o", label=t)
            axes[3].plot(d["layer"], d["perplexity"] / d["n_codes"], marker="o", color=line.get_color(), label=t)
            axes[3].plot(d["layer"], d["dead_fraction"], ls="--", color=line.get_color(), lw=1)
        labels = [("top-1 association (%)", "top-1 association"),
                  ("PNMI (bias-corrected)", "PNMI = I(label;code)/H(label), adjusted for chance"),
                  (f"H({label_desc} | code) (bits)", "conditional entropy"),
                  ("fraction of codebook", "usage: perplexity/K, dead (dashed)")]
        for ax, (yl, tl) in zip(axes, labels):
            ax.set_xlabel("RVQ layer")
            ax.set_ylabel(yl)
            ax.set_title(tl, fontsize=10)
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[1].set_ylim(min(-0.02, float(metrics["pnmi_corrected"].min()) - 0.02), 1.02)
        axes[1].axhline(0.0, color="grey", lw=0.8)
        axes[3].set_ylim(0, 1.02)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, path)

    @staticmethod
    def _summary(metrics: pd.DataFrame, columns: dict[str, str], cfg: TokensConfig) -> str:
        parts = []
        corrected = cfg.n_shuffles > 0
        key = "pnmi_corrected" if corrected else "pnmi_raw"
        for t, d in metrics.groupby("store", sort=False):
            best = d.loc[d[key].idxmax()]
            note = " (no unit column: phones used as units)" if cfg.label == "unit" and columns[t] != "unit" else ""
            usage = (f"codebook perplexity {d['perplexity'].min():.0f}-{d['perplexity'].max():.0f} of "
                     f"{int(d['n_codes'].max())} codes.")
            if corrected and not d["above_null"].any():
                parts.append(f"{t}{note}: no layer above the shuffled-label baseline (corrected PNMI "
                             f"{d[key].min():.3f}-{d[key].max():.3f}, raw {d['pnmi_raw'].min():.3f}-"
                             f"{d['pnmi_raw'].max():.3f} is estimator bias); {usage}")
                continue
            what = "bias-corrected PNMI" if corrected else "PNMI (raw plug-in, no null)"
            extra = (f", raw {best['pnmi_raw']:.3f}, shuffled {best['pnmi_null']:.3f}" if corrected else "")
            n_above = f"; {int(d['above_null'].sum())} of {len(d)} layers above the null" if corrected else ""
            parts.append(
                f"{t}{note}: highest {what} at layer {int(best['layer'])} ({best[key]:.3f}{extra}; top-1 "
                f"association {best['top1_pct']:.1f}% vs {best['top1_null_pct']:.1f}% shuffled); {what} ranges "
                f"{d[key].min():.3f}-{d[key].max():.3f} over layers{n_above}; {usage}"
            )
        return " ".join(parts)

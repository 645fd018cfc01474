"""Figures of the SAE study (matplotlib, Agg): ΔF1 vs sparsity, position vs magnitude,
activation density, training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ...util.figures import codec_color, save_figure, use_style  # noqa: E402

use_style()

FEATURE_NAMES = {"z": "z (full)", "position": "z_pos (position)", "magnitude": "z_mag (magnitude)"}


def _save(fig, path: Path) -> list[Path]:
    save_figure(fig, path)  # PNG for the report, SVG and PDF for papers
    return [path]


def delta_f1_vs_s(results: pd.DataFrame, chance: dict[str, float], path: Path, feature: str = "z") -> Path:
    """One panel per q; x = sparsity s (dense → sparse, as in the paper); one line per store.
    The dotted line of the same colour is ΔF1 of always predicting the majority class."""
    df = results[results["feature"] == feature]
    qs = sorted(df["q"].unique())
    fig, axes = plt.subplots(1, len(qs), figsize=(3.6 * len(qs), 3.4), sharey=True, squeeze=False)
    stores = list(dict.fromkeys(df["store"]))
    for ax, q in zip(axes[0], qs):
        for i, st in enumerate(stores):
            d = df[(df["q"] == q) & (df["store"] == st)].sort_values("s", ascending=False)
            c = codec_color(str(st), [str(x) for x in stores])
            xs = np.arange(len(d))
            ax.plot(xs, 100 * d["delta_f1"], "o-", color=c, label=st)
            if "delta_f1_low" in d.columns:  # 95% interval over test speakers and SAE seeds
                ax.fill_between(xs, 100 * d["delta_f1_low"], 100 * d["delta_f1_high"], color=c, alpha=0.15, lw=0)
            if st in chance:
                ax.axhline(100 * chance[st], color=c, ls=":", lw=1)
            ax.set_xticks(xs, [f"{s:g}" for s in d["s"]])
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.set_title(f"q = d_z/d = {q:g}")
        ax.set_xlabel("relative sparsity s (k = ⌈s·d⌉)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"ΔF1 (%) of {FEATURE_NAMES[feature]}")
    axes[0][-1].legend(fontsize=8, title="store (dotted: majority class)", title_fontsize=7)
    fig.suptitle("ΔF1 = macro-F1(SAE codes) − macro-F1(u); 0 = no loss (dashed); bands: 95% intervals over "
                 "test speakers and SAE seeds", fontsize=10, y=1.04)
    return _save(fig, path)[0]


def position_magnitude(results: pd.DataFrame, s: float, path: Path) -> Path:
    """ΔF1 of z, z_pos and z_mag against q at one sparsity, one panel per store."""
    df = results[np.isclose(results["s"], s)]
    stores = list(dict.fromkeys(df["store"]))
    fig, axes = plt.subplots(1, len(stores), figsize=(4 * len(stores), 3.4), sharey=True, squeeze=False)
    for ax, st in zip(axes[0], stores):
        d = df[df["store"] == st]
        for feat, marker in (("z", "o"), ("position", "s"), ("magnitude", "^")):
            e = d[d["feature"] == feat].sort_values("q")
            if "delta_f1_low" in e.columns:
                err = 100 * np.vstack([e["delta_f1"] - e["delta_f1_low"], e["delta_f1_high"] - e["delta_f1"]])
                ax.errorbar(np.arange(len(e)), 100 * e["delta_f1"], yerr=np.clip(err, 0, None), fmt=marker + "-",
                            capsize=2, label=FEATURE_NAMES[feat])
            else:
                ax.plot(np.arange(len(e)), 100 * e["delta_f1"], marker + "-", label=FEATURE_NAMES[feat])
            ax.set_xticks(np.arange(len(e)), [f"{q:g}" for q in e["q"]])
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.set_title(st, fontsize=9)
        ax.set_xlabel("latent ratio q")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ΔF1 (%)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Position vs magnitude at s = {s:g}", fontsize=10, y=1.03)
    return _save(fig, path)[0]


def density(dens: pd.DataFrame, path: Path) -> Path:
    """Activation density per ordered latent group; dashed = uniform use (k / d_z)."""
    stores = list(dict.fromkeys(dens["store"]))
    fig, axes = plt.subplots(1, len(stores), figsize=(4 * len(stores), 3.2), sharey=True, squeeze=False)
    for ax, st in zip(axes[0], stores):
        d = dens[dens["store"] == st].sort_values("group")
        ax.bar(d["group"] + 1, d["density"], color="tab:blue")
        ax.axhline(float(d["uniform"].iloc[0]), color="k", ls="--", lw=1, label="uniform k/d_z")
        ax.set_title(f"{st}\nq={d['q'].iloc[0]:g}, s={d['s'].iloc[0]:g}", fontsize=9)
        ax.set_xlabel("latent group (ordered)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("activation density (test set)")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)[0]


def training_curves(history: pd.DataFrame, path: Path) -> Path:
    """Monitor (or train) MSE per epoch, one panel per store, one line per configuration."""
    stores = list(dict.fromkeys(history["store"]))
    fig, axes = plt.subplots(1, len(stores), figsize=(4.2 * len(stores), 3.3), squeeze=False)
    col = "monitor_mse" if "monitor_mse" in history.columns and history["monitor_mse"].notna().any() else "train_mse"
    for ax, st in zip(axes[0], stores):
        d = history[history["store"] == st]
        for tag, e in d.groupby("config", sort=False):
            ax.plot(e["epoch"], e[col], lw=1, label=tag)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(st, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(col.replace("_", " ") + " (||u − û||²)")
    axes[0][-1].legend(fontsize=6, ncol=2)
    return _save(fig, path)[0]


def monosemantic(summary: pd.DataFrame, path: Path) -> Path:
    """Fraction of monosemantic latents per representation (x) and attribute (bars)."""
    stores = list(dict.fromkeys(summary["store"]))
    fig, axes = plt.subplots(len(stores), 1, figsize=(7, 3.2 * len(stores)), squeeze=False)
    for ax, st in zip(axes[:, 0], stores):
        d = summary[summary["store"] == st]
        reps = list(dict.fromkeys(d["repr"]))
        attrs = list(dict.fromkeys(d["attribute"]))
        w = 0.8 / max(len(attrs), 1)
        for i, a in enumerate(attrs):
            e = d[d["attribute"] == a].set_index("repr").reindex(reps)
            ax.bar(np.arange(len(reps)) + i * w - 0.4 + w / 2, e["fraction"], w, label=a)
        ax.set_xticks(np.arange(len(reps)), reps, rotation=30, ha="right")
        ax.set_ylabel("monosemantic latents (fraction)")
        ax.set_ylim(0, 1)
        ax.set_title(st, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    return _save(fig, path)[0]


def bitrate(table: pd.DataFrame, path: Path) -> Path:
    """ΔF1 of z against bitrate, one panel per codec family and sparsity, one line per q (cf. Table 3)."""
    fams = list(dict.fromkeys(table["family"]))
    cols = [c for c in table.columns if "kbps_s" in c]
    ss = sorted({c.split("_s", 1)[1] for c in cols}, key=float)
    fig, axes = plt.subplots(len(fams), len(ss), figsize=(3.8 * len(ss), 3.2 * len(fams)), squeeze=False,
                             sharey=True)
    for i, fam in enumerate(fams):
        t = table[table["family"] == fam]
        for j, s in enumerate(ss):
            ax = axes[i][j]
            cs = [c for c in cols if c.endswith(f"_s{s}") and t[c].notna().any()]
            rates = [float(c.split("kbps")[0]) for c in cs]
            order = np.argsort(rates)
            for _, r in t.iterrows():
                ax.plot([rates[o] for o in order], [r[cs[o]] for o in order], "o-", label=f"q={r['q']:g}")
            ax.axhline(0, color="k", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_xticks([rates[o] for o in order], [f"{rates[o]:g}" for o in order])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xlabel("bitrate (kbps)")
            ax.set_title(f"{fam}, s = {s}%", fontsize=9)
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel("ΔF1 (%) of z")
    axes[0][-1].legend(fontsize=8)
    return _save(fig, path)[0]

"""Figures of the causal analysis: Shapley bars, consumer effects, time-offset curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...util.figures import codec_color, save_figure, use_style


def _plt():
    use_style()
    import matplotlib.pyplot as plt

    return plt


def finish_with_legend(fig, axes, path: Path, ncol: int) -> list[Path]:
    """One legend under the panels (from the first panel's lines), then save."""
    h, l = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    if h:
        fig.legend(h, l, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(ncol, len(h)), frameon=False)
    return save_figure(fig, path)


def shapley_figure(df: pd.DataFrame, path: Path) -> list[Path]:
    """Rows: decoder measures; columns: absent = drop / mean; grouped bars per codec."""
    plt = _plt()
    measures = list(dict.fromkeys(df["measure"]))
    absents = list(dict.fromkeys(df["absent"]))
    stores = list(dict.fromkeys(df["store"]))
    fig, axes = plt.subplots(len(measures), len(absents), figsize=(5.8 * len(absents), 2.6 * len(measures)),
                             squeeze=False, sharex=True)
    w = 0.8 / max(len(stores), 1)
    for i, m in enumerate(measures):
        for j, a in enumerate(absents):
            ax = axes[i][j]
            for si, s in enumerate(stores):
                g = df[(df["measure"] == m) & (df["absent"] == a) & (df["store"] == s)].sort_values("layer")
                if g.empty:
                    continue
                x = g["layer"].to_numpy() + (si - (len(stores) - 1) / 2) * w
                err = np.vstack([g["value"] - g["ci_low"], g["ci_high"] - g["value"]])
                ax.bar(x, g["value"], width=w, color=codec_color(str(s), stores), label=str(s),
                       yerr=np.where(np.isfinite(err), err, 0), capsize=2, error_kw={"lw": 0.8})
            ax.axhline(0, color="black", lw=0.6)
            ax.set_title(f"{m} (absent = {a})")
            ax.set_ylabel("Shapley value")
            if i == len(measures) - 1:
                ax.set_xlabel("RVQ layer")
    return finish_with_legend(fig, axes, path, 4)


def consumer_figure(df: pd.DataFrame, path: Path) -> list[Path]:
    """Flip rate vs patched layer: one panel per patch mode, a line per (codec, consumer)."""
    plt = _plt()
    d = df[df["measure"] == "flip_rate"]
    modes = list(dict.fromkeys(d["mode"]))
    stores = list(dict.fromkeys(d["store"]))
    styles = ["-", "--", ":", "-."]
    consumers = list(dict.fromkeys(d["consumer"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(4.2 * len(modes), 3.6), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes):
        for s in stores:
            for ci, c in enumerate(consumers):
                g = d[(d["mode"] == mode) & (d["store"] == s) & (d["consumer"] == c)].sort_values("layer")
                if g.empty:
                    continue
                col = codec_color(str(s), stores)
                ax.plot(g["layer"], g["value"], styles[ci % len(styles)], marker="o", color=col, label=f"{s}: {c}")
                ax.fill_between(g["layer"], g["ci_low"], g["ci_high"], color=col, alpha=0.12, lw=0)
        ax.set_title(f"patch = {mode}")
        ax.set_xlabel("patched RVQ layer")
    axes[0][0].set_ylabel("decisions flipped")
    return finish_with_legend(fig, axes, path, 3)


def offsets_figure(df: pd.DataFrame, path: Path) -> list[Path]:
    """KL vs offset from one patched frame (mode drop), a line per layer; a panel per (codec, consumer)."""
    plt = _plt()
    d = df[df["mode"] == (df["mode"].iloc[0] if "drop" not in set(df["mode"]) else "drop")]
    panels = list(dict.fromkeys(zip(d["store"], d["consumer"])))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.4), squeeze=False)
    for ax, (s, c) in zip(axes[0], panels):
        g = d[(d["store"] == s) & (d["consumer"] == c)]
        for k, gk in g.groupby("layer"):
            gk = gk.sort_values("offset")
            ax.plot(gk["offset"], gk["value"], marker=".", label=f"layer {k}")
        ax.axvline(0, color="grey", lw=0.7, ls=":")
        ax.set_title(f"{s}: {c}")
        ax.set_xlabel("frames after the patched frame")
        ax.set_ylabel("KL (nats)")
    return finish_with_legend(fig, axes, path, 8)

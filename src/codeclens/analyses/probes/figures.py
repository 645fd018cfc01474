"""Figures of a probing run: metric vs layer (one panel per task) and a layer x task heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LABELS = {"macro_f1": "macro-F1", "accuracy": "accuracy", "r2": "R²", "mae": "MAE", "mae_cents": "MAE (cents)"}


def primary(df: pd.DataFrame, task: str) -> str:
    metrics = set(df.loc[df["task"] == task, "metric"])
    return "macro_f1" if "macro_f1" in metrics else "r2"


def _save(fig, path: Path) -> list[Path]:
    fig.savefig(path.with_suffix(".png"), dpi=130, bbox_inches="tight")
    fig.savefig(path.with_suffix(".svg"), bbox_inches="tight")
    plt.close(fig)
    return [path.with_suffix(".png"), path.with_suffix(".svg")]


def layer_curves(df: pd.DataFrame, path: str | Path) -> list[Path]:
    """Primary metric vs layer; stores overlaid (one colour each), chance/control/lookup lines."""
    path = Path(path)
    tasks = list(dict.fromkeys(df["task"]))
    stores = list(dict.fromkeys(df["store"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        metric = primary(df, task)
        d = df[(df["task"] == task) & (df["metric"] == metric)]
        for si, store in enumerate(stores):
            c = colors[si % len(colors)]
            ds = d[d["store"] == store]
            if ds.empty:
                continue
            lin = ds[ds["probe"] == "linear"]
            for kind, style in (("layer", "-"), ("cumulative", "--"), ("codes", ":")):
                k = lin[lin["kind"] == kind].sort_values("layer")
                if len(k):
                    ax.plot(k["layer"], k["value"], style, marker="o", ms=3, color=c, label=f"{store} {kind}:k")
                    ax.fill_between(k["layer"], k["ci_low"], k["ci_high"], color=c, alpha=0.15, lw=0)
            lat = lin[lin["kind"] == "latent"]
            if len(lat):
                x = (d["layer"].max() if d["layer"].notna().any() else 0) + 1
                ax.errorbar([x], lat["value"], yerr=[lat["value"] - lat["ci_low"], lat["ci_high"] - lat["value"]],
                            fmt="*", ms=9, color=c, label=f"{store} latent (x={x:g})")
            mlp = ds[ds["probe"] == "mlp"]
            for kind in ("layer", "cumulative"):
                k = mlp[mlp["kind"] == kind].sort_values("layer")
                if len(k):
                    ax.plot(k["layer"], k["value"], lw=0.9, ls=(0, (5, 2)), marker="x", ms=4, color=c, alpha=0.8,
                            label=f"{store} MLP {kind}:k")
            mlat = mlp[mlp["kind"] == "latent"]
            if len(mlat):
                x = (d["layer"].max() if d["layer"].notna().any() else 0) + 1
                ax.plot([x] * len(mlat), mlat["value"], "X", ms=7, color=c, alpha=0.8, label=f"{store} MLP latent")
            look = ds[(ds["probe"] == "lookup")].sort_values("layer")
            if len(look):
                ax.plot(look["layer"], look["value"], "-.", lw=1, color=c, label=f"{store} code lookup (accuracy-optimal)")
            ctrl = ds[(ds["probe"] == "control") & (ds["kind"] == "layer")].sort_values("layer")
            if len(ctrl):
                ax.plot(ctrl["layer"], ctrl["value"], ":", lw=1.2, color=c, alpha=0.8, label=f"{store} control task")
            # Chance: the better of always-majority and uniform guessing (for macro-F1 the latter is higher).
            chance = lin["chance"].to_numpy(float) if "chance" in lin else np.fmax(
                lin["chance_majority"].to_numpy(float), lin["chance_uniform"].to_numpy(float))
            chance = chance[np.isfinite(chance)]
            if len(chance):
                ax.axhline(float(chance.mean()), color=c, lw=0.8, ls=(0, (1, 3)), alpha=0.9)
        ax.axhline(np.nan, color="grey", lw=0.8, ls=(0, (1, 3)), label="chance (higher of majority and uniform guess)")
        ax.set_title(task)
        ax.set_xlabel("RVQ layer k")
        ax.set_ylabel(f"test {LABELS.get(metric, metric)}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        h, l = ax.get_legend_handles_labels()
        for hh, ll in zip(h, l):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)), fontsize=8,
               frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def heatmap(df: pd.DataFrame, path: str | Path) -> list[Path]:
    """Representation x task grid of the primary metric, one panel per store."""
    path = Path(path)
    lin = df[df["probe"] == "linear"]
    tasks = list(dict.fromkeys(lin["task"]))
    stores = list(dict.fromkeys(lin["store"]))
    reps = list(dict.fromkeys(lin["representation"]))
    fig, axes = plt.subplots(1, len(stores), figsize=(1.3 * len(tasks) * len(stores) + 3.0, 0.38 * len(reps) + 1.6),
                             squeeze=False, sharey=True)
    im = None
    for ax, store in zip(axes[0], stores):
        grid = np.full((len(reps), len(tasks)), np.nan)
        for j, task in enumerate(tasks):
            m = primary(df, task)
            d = lin[(lin["store"] == store) & (lin["task"] == task) & (lin["metric"] == m)]
            for _, r in d.iterrows():
                grid[reps.index(r["representation"]), j] = r["value"]
        im = ax.imshow(np.clip(grid, 0, 1), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i in range(len(reps)):
            for j in range(len(tasks)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(tasks)), [f"{t}\n({LABELS.get(primary(df, t))})" for t in tasks], fontsize=8)
        ax.set_yticks(range(len(reps)), reps, fontsize=8)
        ax.set_title(store, fontsize=9)
        ax.set_xlabel("task")
    axes[0][0].set_ylabel("representation")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test score (macro-F1 / R², clipped to [0, 1])")
    return _save(fig, path)

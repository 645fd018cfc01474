"""Figures of a probing run: metric vs layer (one panel per task) and a layer x task heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ...util.figures import codec_color, save_figure, use_style  # noqa: E402

LABELS = {"macro_f1": "macro-F1", "accuracy": "accuracy", "r2": "R²", "mae": "MAE", "mae_cents": "MAE (cents)"}


def primary(df: pd.DataFrame, task: str) -> str:
    metrics = set(df.loc[df["task"] == task, "metric"])
    return "macro_f1" if "macro_f1" in metrics else "r2"


def _save(fig, path: Path) -> list[Path]:
    return save_figure(fig, path)


def _is_control(ds: pd.DataFrame) -> bool:
    return "codec" in ds.columns and ds["codec"].astype(str).str.contains("random_init=1").any()


def layer_curves(df: pd.DataFrame, path: str | Path) -> list[Path]:
    """Primary metric vs layer, one row of panels per task: the probes per RVQ layer (codecs
    overlaid, one colour each across every figure of a run), the latent in its own narrow panel
    (it is not a layer), and the control task in a panel of its own so its scale never squashes
    the curves that matter. Chance lines are drawn and labelled in each codec's colour."""
    use_style()
    path = Path(path)
    tasks = list(dict.fromkeys(df["task"]))
    stores = list(dict.fromkeys(df["store"]))
    has_lat = bool((df["kind"] == "latent").any())
    has_ctl = bool((df["probe"] == "control").any())
    ratios = [6.0] + ([0.9] if has_lat else []) + ([3.0] if has_ctl else [])
    fig, axes = plt.subplots(len(tasks), len(ratios), figsize=(11.5, 3.5 * len(tasks)), squeeze=False,
                             gridspec_kw={"width_ratios": ratios})
    names: dict[str, tuple[str, bool]] = {}
    styles: dict[str, dict] = {}
    for row, task in zip(axes, tasks):
        ax = row[0]
        lat_ax = row[1] if has_lat else None
        ctl_ax = row[-1] if has_ctl else None
        metric = primary(df, task)
        d = df[(df["task"] == task) & (df["metric"] == metric)]
        for si, store in enumerate(stores):
            c = codec_color(str(store), among=[str(x) for x in stores])
            ds = d[d["store"] == store]
            if ds.empty:
                continue
            control = _is_control(ds)
            names.setdefault(str(store), (c, control))
            mfc = "white" if control else c
            lin = ds[ds["probe"] == "linear"]
            for kind, style in (("layer", "-"), ("cumulative", "--"), ("codes", ":")):
                k = lin[lin["kind"] == kind].sort_values("layer")
                if len(k):
                    ax.plot(k["layer"], k["value"], style, marker="o", color=c, mfc=mfc, lw=1.2 if control else 1.8)
                    styles.setdefault(f"{kind}:k", dict(ls=style, marker="o"))
                    ax.fill_between(k["layer"], k["ci_low"], k["ci_high"], color=c, alpha=0.12, lw=0)
            mlp = ds[ds["probe"] == "mlp"]
            for kind in ("layer", "cumulative"):
                k = mlp[mlp["kind"] == kind].sort_values("layer")
                if len(k):
                    ax.plot(k["layer"], k["value"], lw=0.9, ls=(0, (5, 2)), marker="x", color=c, alpha=0.8)
                    styles.setdefault(f"MLP {kind}:k", dict(ls=(0, (5, 2)), marker="x"))
            look = ds[(ds["probe"] == "lookup")].sort_values("layer")
            if len(look):
                ax.plot(look["layer"], look["value"], "-.", lw=1, color=c)
                styles.setdefault("code-lookup bound (accuracy-optimal)", dict(ls="-.", lw=1))
            chance = lin["chance"].to_numpy(float) if "chance" in lin else np.fmax(
                lin["chance_majority"].to_numpy(float), lin["chance_uniform"].to_numpy(float))
            chance = chance[np.isfinite(chance)]
            if len(chance) and metric != "r2":
                ax.axhline(float(chance.mean()), color=c, lw=0.9, ls=(0, (1, 2)), alpha=0.9)
                styles.setdefault("chance (max of majority, uniform guess)", dict(ls=(0, (1, 2)), lw=0.9))
            lat = lin[lin["kind"] == "latent"]
            if lat_ax is not None and len(lat):
                lat_ax.errorbar([si], lat["value"], yerr=[lat["value"] - lat["ci_low"], lat["ci_high"] - lat["value"]],
                                fmt="*", ms=10, color=c, mfc=mfc)
            ctrl = ds[(ds["probe"] == "control") & (ds["kind"] == "layer")].sort_values("layer")
            if ctl_ax is not None and len(ctrl):
                ctl_ax.plot(ctrl["layer"], ctrl["value"], ":", marker=".", color=c, lw=1.4)
        if metric == "r2":
            ax.axhline(0.0, color="grey", lw=0.9, ls=(0, (1, 2)))
            styles.setdefault("R² = 0 (predicting the train mean)", dict(ls=(0, (1, 2)), lw=0.9, color="grey"))
        ax.set_title(f"{task}: linear probes per layer")
        ax.set_xlabel("RVQ layer k")
        ax.set_ylabel(f"test {LABELS.get(metric, metric)}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if lat_ax is not None:
            lat_ax.set_title("latent")
            lat_ax.set_xticks([])
            lat_ax.set_xlim(-0.7, len(stores) - 0.3)
            lat_ax.set_xlabel("pre-quantisation")
        if ctl_ax is not None:
            ctl_ax.set_title("control task (random labels)")
            ctl_ax.set_xlabel("RVQ layer k")
            ctl_ax.xaxis.get_major_locator().set_params(integer=True)
    from matplotlib.lines import Line2D

    codec_h = [Line2D([], [], color=c, marker="o", mfc="white" if ctl else c, lw=1.2 if ctl else 1.8,
                      label=f"{n} (random-weight control)" if ctl and "random" not in n else n)
               for n, (c, ctl) in names.items()]
    style_h = [Line2D([], [], color=kw.pop("color", "black"), label=l, **kw) for l, kw in styles.items()]
    fig.tight_layout()
    leg = fig.legend(handles=codec_h, loc="upper left", bbox_to_anchor=(0.0, 0.0), ncol=2, frameon=False,
                     title="codec")
    fig.add_artist(leg)
    fig.legend(handles=style_h, loc="upper right", bbox_to_anchor=(1.0, 0.0), ncol=1, frameon=False, title="line")
    return _save(fig, path)


def heatmap(df: pd.DataFrame, path: str | Path) -> list[Path]:
    """Representation x task grid of the primary metric, one panel per store."""
    use_style()
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
        ax.grid(False)
        im = ax.imshow(np.clip(grid, 0, 1), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i in range(len(reps)):
            for j in range(len(tasks)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(tasks)), [f"{t}\n({LABELS.get(primary(df, t))})" for t in tasks], fontsize=9)
        ax.set_yticks(range(len(reps)), reps, fontsize=9)
        ax.set_title(store, fontsize=11)
        ax.set_xlabel("task")
    axes[0][0].set_ylabel("representation")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="test score (macro-F1 / R², clipped to [0, 1])")
    return _save(fig, path)

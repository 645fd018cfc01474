"""Figures of dose-response curves and SAE steering (kept apart from :mod:`.figures`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...util.figures import use_style
from .figures import finish_with_legend

XLABEL = {"fraction": "fraction of frames patched", "alpha": "α (0: clean vectors, 1: donor's)"}
LINES = ["-", "--", ":", "-."]


def dose_figure(df: pd.DataFrame, path: Path) -> list[Path]:
    """Rows: measures; columns: (dose, mode). A line per layer (a dash style per store) with its 95%
    band; the unedited decode (x = 0, effect exactly 0) is drawn as the reference point."""
    use_style()
    import matplotlib.pyplot as plt

    measures = list(dict.fromkeys(df["measure"]))
    panels = list(dict.fromkeys(zip(df["dose"], df["mode"])))
    stores = list(dict.fromkeys(df["store"]))
    layers = sorted(set(df["layer"]))
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(len(measures), len(panels), figsize=(4.2 * len(panels), 2.7 * len(measures)),
                             squeeze=False)
    for i, meas in enumerate(measures):
        for j, (dose, mode) in enumerate(panels):
            ax = axes[i][j]
            for si, s in enumerate(stores):
                for li, k in enumerate(layers):
                    g = df[(df["measure"] == meas) & (df["dose"] == dose) & (df["mode"] == mode) & (df["store"] == s)
                           & (df["layer"] == k)].sort_values("x")
                    if g.empty:
                        continue
                    col = cmap(li / max(len(layers) - 1, 1))
                    x = np.concatenate([[0.0], g["x"].to_numpy(float)])
                    y = np.concatenate([[0.0], g["value"].to_numpy(float)])
                    lo = np.concatenate([[0.0], g["ci_low"].to_numpy(float)])
                    hi = np.concatenate([[0.0], g["ci_high"].to_numpy(float)])
                    label = f"layer {k}" + (f" ({s})" if len(stores) > 1 else "")
                    ax.plot(x, y, LINES[si % len(LINES)], marker="o", ms=3, color=col, label=label)
                    ok = np.isfinite(lo) & np.isfinite(hi)
                    ax.fill_between(x[ok], lo[ok], hi[ok], color=col, alpha=0.12, lw=0)
            ax.axhline(0, color="black", lw=0.6)
            ax.plot([0], [0], "ks", ms=4)
            ax.set_title(f"{meas}: {dose}" + ("" if dose == "alpha" else f" ({mode})"))
            ax.set_xlabel(XLABEL.get(dose, dose))
            ax.set_ylabel(f"Δ {meas} vs unedited")
    return finish_with_legend(fig, axes, path, 8)


def steering_figure(df: pd.DataFrame, path: Path) -> list[Path]:
    """A panel per measure: effect vs the latents' scale s, a line per (store, label); s = 1 is the
    unedited decode (effect exactly 0), drawn as the reference."""
    use_style()
    import matplotlib.pyplot as plt

    measures = list(dict.fromkeys(df["measure"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(4.0 * len(measures), 3.2), squeeze=False)
    for ax, meas in zip(axes[0], measures):
        for (s, lab, rep), g in df[df["measure"] == meas].groupby(["store", "label", "repr"], sort=False):
            g = g.sort_values("scale")
            line, = ax.plot(g["scale"], g["value"], marker="o", ms=3, label=f"{s}: {lab} ({rep})")
            ok = g["ci_low"].notna() & g["ci_high"].notna()
            ax.fill_between(g["scale"][ok], g["ci_low"][ok], g["ci_high"][ok], color=line.get_color(), alpha=0.12, lw=0)
        ax.axhline(0, color="black", lw=0.6)
        ax.plot([1], [0], "ks", ms=4)
        ax.set_title(meas)
        ax.set_xlabel("scale s of the label's latents (0: zeroed, 1: unedited)")
        ax.set_ylabel(f"Δ {meas} vs unedited")
    return finish_with_legend(fig, axes, path, 3)


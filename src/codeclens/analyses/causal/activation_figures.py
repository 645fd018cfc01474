"""Block × layer heatmaps of the activation patching inside the decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...util.figures import save_figure, use_style

# the RMS columns are checks (exact zero / exact donor), not findings: the maps show the measures
SHOWN_EXCLUDED = ("rms_change", "rms_to_donor")


def _set_order(sets) -> list[str]:
    single = sorted((s for s in sets if str(s).isdigit()), key=int)
    return [str(s) for s in single] + sorted(str(s) for s in sets if not str(s).isdigit())


def activation_figure(df: pd.DataFrame, path: Path) -> list[Path]:
    """One panel per (codec, measure), whole-utterance patches: rows = decoder blocks (input at the
    top), columns = the layer set swapped in the donor run, colour = mean change over utterances
    (diverging, centred at 0); cells whose interval excludes 0 (Holm p < 0.05) are outlined."""
    use_style()
    import matplotlib.pyplot as plt

    d = df[(df["window"].astype(str) == "all") & ~df["measure"].isin(SHOWN_EXCLUDED)].copy()
    d["layers"] = d["layers"].astype(str)
    stores = list(dict.fromkeys(d["store"])) if "store" in d.columns else [""]
    measures = list(dict.fromkeys(d["measure"]))
    n_blocks = int(d["block_index"].max()) if len(d) else 1
    fig, axes = plt.subplots(len(stores), max(len(measures), 1), squeeze=False,
                             figsize=(2.2 + 2.6 * max(len(measures), 1), 1.2 + 0.32 * n_blocks * len(stores)))
    for i, s in enumerate(stores):
        ds = d[d["store"] == s] if "store" in d.columns else d
        blocks = ds.drop_duplicates("block_index").sort_values("block_index")
        sets = _set_order(ds["layers"].unique())
        for j, m in enumerate(measures):
            ax = axes[i][j]
            g = ds[ds["measure"] == m]
            grid = g.pivot_table(index="block_index", columns="layers", values="value", aggfunc="first")
            grid = grid.reindex(index=blocks["block_index"], columns=sets)
            vals = grid.to_numpy(float)
            lim = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
            im = ax.imshow(vals, cmap="RdBu_r", vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto")
            sig = g[((g["ci_low"] > 0) | (g["ci_high"] < 0)) & (g["p_holm"] < 0.05)]
            rows = {b: r for r, b in enumerate(blocks["block_index"])}
            for _, c in sig.iterrows():
                ax.add_patch(plt.Rectangle((sets.index(str(c["layers"])) - 0.5, rows[c["block_index"]] - 0.5), 1, 1,
                                           fill=False, lw=1.2, ec="black"))
            ax.set_xticks(range(len(sets)), sets, fontsize=7)
            ax.set_yticks(range(len(blocks)), [f"{int(b)} {n}" for b, n in zip(blocks["block_index"], blocks["block"])]
                          if j == 0 else [""] * len(blocks), fontsize=7)
            ax.set_title(f"{s}: {m}" if s else m, fontsize=9)
            ax.set_xlabel("RVQ layer(s) from the donor")
            if j == 0:
                ax.set_ylabel("decoder block (input → output)")
            fig.colorbar(im, ax=ax, shrink=0.8, label="change")
    fig.tight_layout()
    return save_figure(fig, path)

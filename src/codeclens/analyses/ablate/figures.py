"""Figures of the ablate analysis: effect heatmap, layer profiles, voice conversion by swap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ...util.figures import save_figure, use_style  # noqa: E402

use_style()

KIND_LABEL = {"drop": "drop k", "mean": "mean k", "truncate": "keep 1..k", "only": "only k", "noise": "noise k", "swap": "swap k"}
BOUNDED = ("spk_sim", "voicing_agree", "stoi")
"""Measures in [0, 1] with 1 for identical audio: coloured by the absolute change."""
KIND_COLOR = {"drop": "tab:red", "mean": "tab:brown", "truncate": "tab:blue", "only": "tab:green", "noise": "tab:purple", "swap": "tab:orange"}


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)  # PNG for the report, SVG and PDF for papers


def _single_layer(effects: pd.DataFrame) -> pd.DataFrame:
    e = effects.dropna(subset=["layer"])
    return e[e["kind"].isin(list(KIND_LABEL))]


def effect_figures(effects: pd.DataFrame, out: Path, group: str, labels: dict, ideal: dict) -> list[tuple[str, str]]:
    """Heatmap + layer profiles; returns (file name, caption) pairs."""
    if effects.empty:
        return []
    made = []
    e = _single_layer(effects)
    none = effects[effects["kind"] == "none"].set_index("measure")["mean"].to_dict()
    floor = effects[(effects["intervention"] == "other speaker") & (effects["measure"] == "spk_sim")]["mean"]
    measures = [m for m in labels if m in set(e["measure"]) and m != "spk_sim_donor"]
    if len(e) and measures:
        made.append(_heatmap(e, measures, none, out / "heatmap.png", group, labels, ideal))
        made.append(_profiles(e, measures, none, float(floor.iloc[0]) if len(floor) else None, out / "layer_profiles.png", group, labels, ideal))
    return [m for m in made if m]


def _damage(values: np.ndarray, m: str, none: dict, ideal: dict) -> np.ndarray:
    """Distance from the value identical audio would get (phone accuracy: from the unedited decode)."""
    ref = none.get(m, np.nan) if m == "phone_acc" else ideal.get(m, np.nan)
    if m == "loudness_db":
        return np.abs(values)
    return np.abs(values - ref)


def _heatmap(e: pd.DataFrame, measures: list[str], none: dict, path: Path, group: str, labels: dict, ideal: dict):
    rows = []
    for kind in KIND_LABEL:
        k = e[e["kind"] == kind]
        for layer in sorted(k["layer"].dropna().unique()):
            rows.append((kind, int(layer)))
    if not rows:
        return None
    vals = np.full((len(rows), len(measures)), np.nan)
    undef = np.zeros((len(rows), len(measures)))
    counts = [["" for _ in measures] for _ in rows]
    for i, (kind, layer) in enumerate(rows):
        sub = e[(e["kind"] == kind) & (e["layer"] == layer)].set_index("measure")
        for j, m in enumerate(measures):
            if m in sub.index:
                vals[i, j] = sub.loc[m, "mean"]
                if "undefined_rate" in sub.columns and sub.loc[m, "n_undefined"] > 0:
                    undef[i, j] = sub.loc[m, "undefined_rate"]
                    counts[i][j] = f"{int(sub.loc[m, 'n_undefined'])}/{int(sub.loc[m, 'n'] + sub.loc[m, 'n_undefined'])} undef"
    dmg = np.column_stack([_damage(vals[:, j], m, none, ideal) for j, m in enumerate(measures)])
    # Bounded measures on their own scale (a 0.01 change stays pale); unbounded ones
    # (cents, dB) relative to the largest change in the column.
    scale = np.nanmax(np.where(np.isfinite(dmg), dmg, np.nan), axis=0) if np.isfinite(dmg).any() else np.ones(len(measures))
    for j, m in enumerate(measures):
        if m in BOUNDED:
            scale[j] = 1.0
        elif m == "phone_acc":
            scale[j] = none.get(m, np.nan)
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0
    norm = dmg / scale
    # The undefined rate is a column of its own: a cell whose mean rests on few utterances is not an effect.
    shown = np.column_stack([np.clip(norm, 0, 1), undef.max(axis=1)])
    fig, ax = plt.subplots(figsize=(1.5 + 1.35 * (len(measures) + 1), 0.9 + 0.36 * len(rows)))
    im = ax.imshow(shown, aspect="auto", cmap="Reds", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(measures)):
            txt = f"{vals[i, j]:.3g}" if np.isfinite(vals[i, j]) else "undef"
            if counts[i][j]:
                txt += f"\n{counts[i][j]}"
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="gray", lw=0))
            ax.text(j, i, txt, ha="center", va="center", fontsize=6 if counts[i][j] else 7,
                    color="white" if norm[i, j] > 0.6 else "black")
        ax.text(len(measures), i, f"{shown[i, -1]:.0%}", ha="center", va="center", fontsize=7,
                color="white" if shown[i, -1] > 0.6 else "black")
    ax.axvline(len(measures) - 0.5, color="black", lw=1)
    ax.set_xticks(range(len(measures) + 1), [labels.get(m, m) for m in measures] + ["undefined rate (max)"], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{KIND_LABEL[k].replace('k', str(l))}" if k != "truncate" else f"keep 1..{l}" for k, l in rows], fontsize=7)
    ax.set_xlabel("measurement (against the unedited decode)")
    ax.set_ylabel("intervention (layer, 1-based)")
    ax.set_title(f"{group}: effect of each layer intervention\n(colour: change from identical audio; cos, voicing, STOI absolute;\nphone accuracy relative to unedited; cents, dB relative to column max. Text: mean;\nhatched: some utterances undefined, last column: share undefined)", fontsize=9)
    fig.colorbar(im, ax=ax, label="relative change (0 = none)")
    _save(fig, path)
    return path.name, (f"{group}: layer x measurement effects (numbers: means over the utterances where the measure is defined; "
                       "hatched cells and the last column: the share of utterances where it is undefined). Colour: the change from "
                       "identical audio; absolute for similarity, voicing and STOI, relative to the unedited decode for phone "
                       "accuracy, relative to the largest change in the column for cents and dB")


def _profiles(e: pd.DataFrame, measures: list[str], none: dict, floor: float | None, path: Path, group: str, labels: dict, ideal: dict):
    n = len(measures)
    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, measures):
        sub = e[e["measure"] == m]
        for kind in KIND_LABEL:
            k = sub[sub["kind"] == kind].sort_values("layer")
            if k.empty:
                continue
            x = k["layer"].astype(int).to_numpy()
            ax.plot(x, k["mean"], marker="o", ms=3, color=KIND_COLOR[kind], label=KIND_LABEL[kind])
            ax.fill_between(x, k["ci_lo"], k["ci_hi"], color=KIND_COLOR[kind], alpha=0.15)
        ref = none.get(m) if m == "phone_acc" else ideal.get(m)
        if ref is not None and np.isfinite(ref):
            ax.axhline(ref, color="black", lw=0.8, ls="--", label="unedited" if m == "phone_acc" else "identical audio")
        if m == "spk_sim" and floor is not None and np.isfinite(floor):
            ax.axhline(floor, color="gray", lw=0.8, ls=":", label="other speaker")
        ax.set_xlabel("layer k (1-based)")
        ax.set_ylabel(labels.get(m, m))
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, lab = [], []
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in lab:
                handles.append(h)
                lab.append(l)
    fig.legend(handles, lab, loc="upper center", ncol=min(len(lab), 7), fontsize=8, bbox_to_anchor=(0.5, 1.02))
    fig.suptitle(f"{group}: measurements by layer (mean, 95% CI band over utterances)", y=1.07, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return path.name, f"{group}: every measurement against layer k for each intervention kind, with 95% bootstrap CIs and reference lines"


def _bars(ax, x, vc: pd.DataFrame, col: str, **kw) -> None:
    """Points with their CI; a missing interval draws no bar (NaN error widths would hide the point)."""
    lo = (vc[col] - vc[f"{col}_lo"]).fillna(0).clip(lower=0)
    hi = (vc[f"{col}_hi"] - vc[col]).fillna(0).clip(lower=0)
    ax.errorbar(x, vc[col], yerr=[lo, hi], **kw)


def vc_figure(vc: pd.DataFrame, out: Path, group: str) -> list[tuple[str, str]]:
    if vc.empty or vc["cos_target"].isna().all():
        return []
    vc = vc.reset_index(drop=True)
    content = "content_retention" in vc and vc["content_retention"].notna().any()
    fig, axes = plt.subplots(1, 2 if content else 1, figsize=(max(4.5, 0.55 * len(vc) + 2) * (2 if content else 1), 3.4), squeeze=False)
    ax = axes[0, 0]
    x = np.arange(len(vc))
    _bars(ax, x - 0.1, vc, "cos_target", fmt="o", color="tab:orange", label="COS to target (donor)")
    _bars(ax, x + 0.1, vc, "cos_source", fmt="s", color="tab:blue", label="COS to source")
    fl = vc["cos_source_vs_target_unedited"].iloc[0]
    if np.isfinite(fl):
        ax.axhline(fl, color="gray", ls=":", lw=1, label="source vs target, unedited")
    # Swaps of every layer are the donor itself: marked, never ranked.
    ticks = [f"{t}{' (all)' if a else ''}" for t, a in zip(vc["swapped_layers"], vc["all_layers"])]
    for a in axes[0]:
        a.set_xticks(x, ticks, rotation=45, fontsize=8)
        a.set_xlabel("layers swapped in from the donor (1-based)")
    ax.set_ylabel("speaker similarity (Resemblyzer cos)")
    ax.set_title(f"{group}: voice conversion by layer swap", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    if content:
        _bars(axes[0, 1], x, vc, "content_retention", fmt="o", color="tab:green", label="content retention")
        axes[0, 1].axhline(1.0, color="black", lw=0.8, ls="--")
        axes[0, 1].set_ylabel("phone accuracy / unedited decode's")
        axes[0, 1].set_title("content kept by the swap", fontsize=10)
    fig.tight_layout()
    path = out / "voice_conversion.png"
    _save(fig, path)
    return [(path.name, f"{group}: speaker similarity of swapped decodes to the donor (target) and to the source"
             + (", and content retention" if content else "") + ", 95% speaker-clustered bootstrap CIs (none from one speaker); '(all)': every layer swapped, i.e. the donor itself")]

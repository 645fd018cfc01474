"""ablate's summary text, and the checks that decide whether there is anything to summarise.

Two checks run before any layer is named: the codec's own reconstruction
(original audio vs unedited decode) must be good enough that edits of it say
something about speech, and the content measure must be above chance on the
unedited decode. When either fails the summary says so instead of naming the
layer that "hurts most".
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..stats import paired as st
from .tables import ALPHA, LABELS, best_swap, clusters_of, fmt


@dataclasses.dataclass(frozen=True)
class Checks:
    codec_poor: str = ""
    """Why the codec's reconstruction is too poor to interpret edits ('' when fine or unknown)."""
    content_chance: str = ""
    """Why the content measure cannot be read ('' when it is above chance)."""


def _cell(effects: pd.DataFrame, name: str, m: str) -> pd.Series | None:
    r = effects[(effects["intervention"] == name) & (effects["measure"] == m)]
    return r.iloc[0] if len(r) else None


def run_checks(per_utt: pd.DataFrame, effects: pd.DataFrame, min_codec_spk_sim: float, min_codec_stoi: float,
               n_boot: int = 1000, seed: int = 0, cluster: str = "speaker") -> Checks:
    poor = []
    for m, floor in (("spk_sim", min_codec_spk_sim), ("stoi", min_codec_stoi)):
        c = _cell(effects, "codec (original vs decode)", m)
        if c is not None and np.isfinite(c["mean"]) and c["mean"] < floor:
            poor.append(f"{LABELS[m]} {fmt(c['mean'], c['ci_lo'], c['ci_hi'])} < {floor}")
    chance = ""
    none = per_utt[per_utt["kind"] == "none"]
    if "phone_acc" in none and none["phone_acc"].notna().any() and "phone_chance" in none:
        t = st.paired_test(none["phone_chance"].to_numpy(float), none["phone_acc"].to_numpy(float),
                           clusters_of(none, cluster), n_boot, seed)
        acc = st.cluster_bootstrap(none["phone_acc"].to_numpy(float), clusters_of(none, cluster), n_boot, seed)
        # Above chance means what an effect means here: a positive interval and a sign-flip p < alpha.
        if not (np.isfinite(t.diff.lo) and t.diff.lo > 0 and t.p < ALPHA):
            why = "no interval (fewer than two speakers)" if not np.isfinite(t.diff.lo) else \
                f"accuracy minus chance {fmt(t.diff.mean, t.diff.lo, t.diff.hi)}, sign-flip p {t.p:.3g} over {t.diff.n_clusters} clusters"
            chance = (f"the content measure is not shown above chance on the unedited decode (phone accuracy "
                      f"{fmt(acc.mean, acc.lo, acc.hi)}, majority-phone rate {np.nanmean(none['phone_chance']):.3f}; {why})")
    return Checks("; ".join(poor), chance)


def summary_sentences(store_name: str, roles: pd.DataFrame, vc: pd.DataFrame, checks: Checks) -> list[str]:
    out = []
    if checks.codec_poor:
        out.append(f"{store_name}: nothing to measure: the codec's own reconstruction is poor (original vs unedited "
                   f"decode: {checks.codec_poor}), so no layer roles are named.")
    if checks.content_chance:
        out.append(f"{store_name}: {checks.content_chance}: no content role and no content retention is interpreted.")
    for _, r in roles.iterrows() if not checks.codec_poor else []:
        if r["property"] == "content" and checks.content_chance:
            continue
        if pd.isna(r.get("drop_layer", np.nan)):
            if r.get("drop_excluded"):
                out.append(f"{store_name}: {r['property']}: no drop ranked (too few defined values: layers {r['drop_excluded']}).")
            continue
        k, lab = int(r["drop_layer"]), LABELS.get(r["measure"], r["measure"])
        eff = f"paired change {fmt(r['drop_diff'], r['drop_diff_lo'], r['drop_diff_hi'])}, Holm p {r['drop_p_holm']:.3g}"
        excl = f"; not ranked: layers {r['drop_excluded']}" if r.get("drop_excluded") else ""
        if not (r["drop_p_holm"] < ALPHA):
            out.append(f"{store_name}: {r['property']}: no drop has an effect distinguishable from none "
                       f"(largest: drop {k}, {lab} {eff}){excl}.")
        elif pd.notna(r.get("drop_runner_up", np.nan)) and not bool(r.get("drop_separated", False)):
            out.append(f"{store_name}: {r['property']}: dropping layer {k} hurts ({lab} {eff}) but is not separable from "
                       f"layer {int(r['drop_runner_up'])} (paired difference {fmt(r['drop_vs_runner_up'], r['drop_vs_runner_up_lo'], r['drop_vs_runner_up_hi'])}, "
                       f"Holm p {r['drop_vs_runner_up_p_holm']:.3g}){excl}.")
        else:
            out.append(f"{store_name}: dropping layer {k} hurts {r['property']} most ({lab} {eff}){excl}.")
    best = best_swap(vc)
    if best is not None:
        ret = "" if checks.content_chance or not np.isfinite(best["content_retention"]) else \
            f", content retention {fmt(best['content_retention'], best['content_retention_lo'], best['content_retention_hi'])}"
        out.append(f"{store_name}: best voice conversion by swap (ranked on {best['ranked_on'].replace('_', ' ')}, swaps of "
                   f"every layer excluded) is '{best['intervention']}': COS to target "
                   f"{fmt(best['cos_target'], best['cos_target_lo'], best['cos_target_hi'])}{ret} "
                   f"(unedited source vs target: {best['cos_source_vs_target_unedited']:.3f}).")
    return out

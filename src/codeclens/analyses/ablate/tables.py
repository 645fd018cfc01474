"""ablate's tables from per-utterance rows: effects, layer roles, voice conversion.

All inference is paired (see :mod:`codeclens.analyses.stats.paired` and
docs/ablate.md): every edit was measured on the same utterances as the unedited
decode, so effects are per-utterance differences against it, intervals come
from a bootstrap over clusters (speakers by default) and p-values from
cluster sign-flip tests, Holm-corrected within each family.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..stats import paired as st

COLUMNS = {
    "speaker": ("spk_sim",),
    "pitch": ("f0_rmse_cents", "voicing_agree"),
    "stoi": ("stoi",),
    "mcd": ("mcd_db",),
    "loudness": ("loudness_db",),
    "phone": ("phone_acc",),
    "wer": ("wer",),
}
"""Result columns of each measure group."""

LABELS = {
    "spk_sim": "speaker similarity (cos)",
    "spk_sim_donor": "similarity to donor (cos)",
    "f0_rmse_cents": "F0 RMSE (cents)",
    "voicing_agree": "voicing agreement",
    "stoi": "STOI",
    "mcd_db": "mel-cepstral distance (dB)",
    "loudness_db": "loudness change (dB)",
    "phone_acc": "phone accuracy (re-encoded)",
    "wer": "WER vs unedited decode",
}

# Value of each measure for audio identical to the reference; "damage" is the distance from it.
IDEAL = {"spk_sim": 1.0, "spk_sim_donor": 1.0, "f0_rmse_cents": 0.0, "voicing_agree": 1.0, "stoi": 1.0,
         "mcd_db": 0.0, "loudness_db": 0.0, "wer": 0.0}

PROPERTIES = (
    ("speaker", "spk_sim", "lower"),
    ("pitch", "f0_rmse_cents", "higher"),
    ("voicing", "voicing_agree", "lower"),
    ("content", "phone_acc", "lower"),
    ("intelligibility", "stoi", "lower"),
    ("spectrum", "mcd_db", "higher"),
)
"""(property, measure, direction in which removal hurts)."""

KEYS = ["kind", "intervention", "layers", "layer"]
EDIT_KINDS = ("drop", "mean", "truncate", "only", "swap", "noise")
ALPHA = 0.05


def measure_columns(df: pd.DataFrame) -> list[str]:
    order = [c for cols in COLUMNS.values() for c in cols] + ["spk_sim_donor"]
    return [c for c in order if c in df.columns and df[c].notna().any()]


def clusters_of(df: pd.DataFrame, cluster: str) -> np.ndarray:
    """Cluster label of each row: its speaker (``cluster="speaker"``) or its utterance."""
    if cluster == "speaker" and "speaker" in df.columns and (df["speaker"].astype(str) != "").all():
        return df["speaker"].astype(str).to_numpy()
    return df["utt"].astype(str).to_numpy()


def _baseline(per_utt: pd.DataFrame, m: str) -> pd.Series:
    """Per-utterance value an edit's ``m`` is paired with: the unedited decode's, or for the
    similarity to the donor, the unedited source's similarity to that donor."""
    if m == "spk_sim_donor":
        ref = per_utt[(per_utt["kind"] == "reference") & (per_utt["intervention"] == "other speaker")]
        return ref.set_index("utt")["spk_sim"] if "spk_sim" in ref else pd.Series(dtype=float)
    none = per_utt[per_utt["kind"] == "none"]
    return none.set_index("utt")[m]


def _applies(g: pd.DataFrame, kind: str, m: str, measured: set[str]) -> bool:
    if kind in EDIT_KINDS:
        return m in measured or (m == "spk_sim_donor" and kind == "swap")
    return bool(g[m].notna().any())


def effect_table(per_utt: pd.DataFrame, n_boot: int, seed: int, cluster: str = "speaker") -> pd.DataFrame:
    """Tidy: one row per (intervention, measure): mean with a cluster-bootstrap CI, defined and
    undefined counts, and the paired difference against the unedited decode (``diff``, its CI,
    sign-flip ``p`` and Holm-adjusted ``p_holm`` over every such test of the store)."""
    df = per_utt.copy()
    df["layer"] = df["layer"].astype("float")
    mcols = measure_columns(df)
    measured = {m for m in mcols if df.loc[df["kind"] == "none", m].notna().any()} if mcols else set()
    rows = []
    for key, g in df.groupby(KEYS, sort=False, dropna=False):
        kind = key[0]
        cl = clusters_of(g, cluster)
        for m in mcols:
            if not _applies(g, kind, m, measured):
                continue
            e = st.cluster_bootstrap(g[m].to_numpy(float), cl, n_boot, seed)
            r: dict[str, Any] = {**dict(zip(KEYS, key)), "measure": m, "mean": e.mean, "ci_lo": e.lo, "ci_hi": e.hi,
                                 "n": e.n, "n_undefined": e.n_undefined, "undefined_rate": e.undefined_rate,
                                 "n_clusters": e.n_clusters}
            if kind in EDIT_KINDS:
                base = _baseline(df, m).reindex(g["utt"]).to_numpy(float)
                t = st.paired_test(base, g[m].to_numpy(float), cl, n_boot, seed)
                r.update(diff=t.diff.mean, diff_lo=t.diff.lo, diff_hi=t.diff.hi, p=t.p)
            rows.append(r)
    out = pd.DataFrame(rows)
    if len(out):
        out["layer"] = out["layer"].astype("Int64")
        if "p" not in out:
            out["p"] = np.nan
        out["p_holm"] = st.holm(out["p"].to_numpy(float))
    return out


def fmt(m: float, lo: float = np.nan, hi: float = np.nan) -> str:
    """``mean [lo, hi]`` with enough decimals that the interval's width shows two digits."""
    if not np.isfinite(m):
        return "undefined"
    w = hi - lo if np.isfinite(lo) and np.isfinite(hi) else np.nan
    if np.isfinite(w) and w > 0:
        d = int(min(8, max(0, -np.floor(np.log10(w)) + 1)))
    else:
        d = int(min(8, max(2, 3 - np.floor(np.log10(abs(m)))))) if m != 0 else 2
    if not np.isfinite(w):
        return f"{m:.{d}f} (no interval)"
    return f"{m:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def wide_table(effects: pd.DataFrame) -> pd.DataFrame:
    """Intervention x measure, cells ``mean [lo, hi]`` (+ ``; k/n undefined`` when any are)."""
    if effects.empty:
        return pd.DataFrame()
    e = effects.copy()
    e["cell"] = [fmt(m, lo, hi) + (f"; {nu}/{n + nu} undefined" if nu else "")
                 for m, lo, hi, n, nu in zip(e["mean"], e["ci_lo"], e["ci_hi"], e["n"], e["n_undefined"])]
    order = list(dict.fromkeys(e["intervention"]))
    w = e.pivot_table(index="intervention", columns="measure", values="cell", aggfunc="first")
    known = [c for cols in COLUMNS.values() for c in cols] + ["spk_sim_donor"]
    cols = [c for c in known if c in w.columns]
    w = w.reindex(order)[cols]
    w.columns = [LABELS.get(c, c) for c in w.columns]
    und = e.groupby("intervention", sort=False)["undefined_rate"].max().reindex(order)
    w["undefined rate (max over measures)"] = [f"{x:.2f}" for x in und]
    return w.reset_index()


def _values(per_utt: pd.DataFrame, name: str, m: str, utts: Sequence[int]) -> np.ndarray:
    g = per_utt[per_utt["intervention"] == name].set_index("utt")
    return g[m].reindex(utts).to_numpy(float) if m in g else np.full(len(utts), np.nan)


def _rank_layers(per_utt: pd.DataFrame, effects: pd.DataFrame, kind: str, m: str, worse: str, n_boot: int,
                 seed: int, min_defined: float, cluster: str, prefix: str) -> dict[str, Any]:
    """The layer whose ``kind`` edit hurts ``m`` most, tested against every other layer (paired,
    Holm over the comparisons); cells with too few defined values are not ranked."""
    e = effects[(effects["measure"] == m) & (effects["kind"] == kind)].dropna(subset=["layer"])
    if e.empty:
        return {}
    ok = e[(e["n"] >= 2) & (e["undefined_rate"] <= 1 - min_defined) & e["diff"].notna()]
    out: dict[str, Any] = {f"{prefix}_excluded": ", ".join(f"{int(r.layer)} ({int(r.n_undefined)}/{int(r.n + r.n_undefined)} undefined)"
                                                          for r in e.drop(index=ok.index).itertuples())}
    if ok.empty:
        return out
    sign = -1.0 if worse == "lower" else 1.0  # harm = sign * diff
    d = ok.loc[(sign * ok["diff"]).idxmax()]
    out.update({f"{prefix}_layer": int(d["layer"]), f"{prefix}_mean": d["mean"], f"{prefix}_ci_lo": d["ci_lo"],
                f"{prefix}_ci_hi": d["ci_hi"], f"{prefix}_diff": d["diff"], f"{prefix}_diff_lo": d["diff_lo"],
                f"{prefix}_diff_hi": d["diff_hi"], f"{prefix}_p_holm": d["p_holm"]})
    rest = ok.drop(index=d.name)
    if rest.empty:
        return out
    g = per_utt[per_utt["intervention"] == d["intervention"]].sort_values("utt")
    utts, cl = list(g["utt"]), clusters_of(g, cluster)
    worst = _values(per_utt, d["intervention"], m, utts)
    tests = [st.paired_test(_values(per_utt, r["intervention"], m, utts), worst, cl, n_boot, seed) for _, r in rest.iterrows()]
    adj = st.holm([t.p for t in tests])
    i = int(np.argmax(sign * rest["diff"].to_numpy(float)))  # the runner-up: the next most harmful layer
    out.update({f"{prefix}_runner_up": int(rest["layer"].iloc[i]),
                f"{prefix}_vs_runner_up": tests[i].diff.mean, f"{prefix}_vs_runner_up_lo": tests[i].diff.lo,
                f"{prefix}_vs_runner_up_hi": tests[i].diff.hi, f"{prefix}_vs_runner_up_p_holm": adj[i],
                # Separated: worse than every other layer, each paired test Holm-significant in the harmful direction.
                f"{prefix}_separated": bool(all(np.isfinite(a) and a < ALPHA and sign * t.diff.mean > 0 for a, t in zip(adj, tests)))})
    return out


def layer_contrasts(per_utt: pd.DataFrame, effects: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                    cluster: str = "speaker", kinds: Sequence[str] = ("drop", "mean", "only")) -> pd.DataFrame:
    """Every pair of layers (a < b) under the same edit kind, per measure: the per-utterance paired
    difference (layer b's edit minus layer a's) with a clustered interval, sign-flip p, and Holm
    over the pairs of that (kind, measure)."""
    rows = []
    for (kind, m), e in effects[effects["kind"].isin(list(kinds))].dropna(subset=["layer"]).groupby(["kind", "measure"], sort=False):
        e = e.sort_values("layer")
        fam = []
        for i in range(len(e)):
            for j in range(i + 1, len(e)):
                a, b = e.iloc[i], e.iloc[j]
                g = per_utt[per_utt["intervention"] == a["intervention"]].sort_values("utt")
                utts = list(g["utt"])
                t = st.paired_test(_values(per_utt, a["intervention"], m, utts), _values(per_utt, b["intervention"], m, utts),
                                   clusters_of(g, cluster), n_boot, seed)
                fam.append({"kind": kind, "measure": m, "layer_a": int(a["layer"]), "layer_b": int(b["layer"]),
                            "diff_b_minus_a": t.diff.mean, "diff_lo": t.diff.lo, "diff_hi": t.diff.hi,
                            "n": t.diff.n, "n_clusters": t.diff.n_clusters, "p": t.p})
        for r, adj in zip(fam, st.holm([r["p"] for r in fam])):
            r["p_holm"] = adj
        rows += fam
    return pd.DataFrame(rows)


def layer_roles(per_utt: pd.DataFrame, effects: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                min_defined: float = 0.8, cluster: str = "speaker") -> pd.DataFrame:
    """Per property: the layer whose drop (and mean ablation) hurts it most, with paired tests
    against the unedited decode and against every other layer, and the single layer that keeps
    most of it."""
    rows = []
    for prop, m, worse in PROPERTIES:
        e = effects[effects["measure"] == m]
        if e[e["kind"].isin(["drop", "mean", "only"])].empty:
            continue
        row: dict[str, Any] = {"property": prop, "measure": m}
        none = e[e["kind"] == "none"]
        row["unedited"] = float(none["mean"].iloc[0]) if len(none) else np.nan
        for kind, prefix in (("drop", "drop"), ("mean", "mean_ablation")):
            row.update(_rank_layers(per_utt, effects, kind, m, worse, n_boot, seed, min_defined, cluster, prefix))
        only = e[e["kind"] == "only"].dropna(subset=["layer"])
        only = only[(only["n"] >= 2) & (only["undefined_rate"] <= 1 - min_defined)]
        if len(only):
            o = only.loc[only["mean"].idxmax() if worse == "lower" else only["mean"].idxmin()]
            row.update(best_single_layer=int(o["layer"]), only_mean=o["mean"], only_ci_lo=o["ci_lo"], only_ci_hi=o["ci_hi"])
        rows.append(row)
    return pd.DataFrame(rows)


def voice_conversion_table(per_utt: pd.DataFrame, n_layers: int, n_boot: int = 1000, seed: int = 0,
                           cluster: str = "speaker", min_defined: float = 0.8) -> pd.DataFrame:
    """Swaps as voice conversion (Sadok et al. Table 1 control column), each with intervals:
    COS to the target (donor) and the source, content retention (per-utterance phone accuracy /
    the unedited decode's), and the joint score ``donor gain x retention`` they are ranked on, where
    donor gain = (COS to target - unedited source-vs-target COS) / (1 - that floor). Swaps of every
    layer are the donor itself: listed, never ranked."""
    sw = per_utt[per_utt["kind"] == "swap"]
    if sw.empty:
        return pd.DataFrame()
    rows = []
    for name in dict.fromkeys(sw["intervention"]):
        g = sw[sw["intervention"] == name]
        utts = list(g["utt"])
        cl = clusters_of(g, cluster)
        tgt = _values(per_utt, name, "spk_sim_donor", utts)
        floor = _values(per_utt, "other speaker", "spk_sim", utts)
        ph, ph0 = _values(per_utt, name, "phone_acc", utts), _values(per_utt, "none", "phone_acc", utts)
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = (tgt - floor) / (1.0 - floor)
            ret = np.where(ph0 > 0, ph / ph0, np.nan)
        est = {k: st.cluster_bootstrap(v, cl, n_boot, seed) for k, v in (
            ("cos_target", tgt), ("cos_source", _values(per_utt, name, "spk_sim", utts)), ("donor_gain", gain),
            ("content_retention", ret), ("joint", gain * ret), ("stoi_vs_source", _values(per_utt, name, "stoi", utts)))}
        r: dict[str, Any] = {"swapped_layers": g["layers"].iloc[0], "intervention": name,
                             "all_layers": len(str(g["layers"].iloc[0])) > 0 and _covers_all(str(g["layers"].iloc[0]), n_layers)}
        for k, e in est.items():
            r.update({k: e.mean, f"{k}_lo": e.lo, f"{k}_hi": e.hi})
        for k in ("donor_gain", "joint"):
            r[f"{k}_undefined_rate"] = est[k].undefined_rate
        r["cos_source_vs_target_unedited"] = float(np.nanmean(floor)) if np.isfinite(floor).any() else np.nan
        r["n"] = est["cos_target"].n
        rows.append(r)
    return rank_swaps(pd.DataFrame(rows), min_defined=min_defined)


def rank_swaps(vc: pd.DataFrame, use_content: bool = True, min_defined: float = 0.8) -> pd.DataFrame:
    """Rank swaps (1 = best) on the joint score, or on donor gain alone when there is no
    content measure (or it cannot be read); swaps of every layer, and swaps whose score is
    undefined for more than ``1 - min_defined`` of the utterances, get no rank."""
    vc = vc.copy()
    score = "joint" if use_content and vc["joint"].notna().any() else "donor_gain"
    vc["ranked_on"] = score if vc[score].notna().any() else ""
    elig = ~vc["all_layers"].astype(bool) & vc[score].notna() & (vc[f"{score}_undefined_rate"] <= 1 - min_defined)
    vc["rank"] = pd.array([pd.NA] * len(vc), dtype="Int64")
    vc.loc[elig, "rank"] = vc.loc[elig, score].rank(ascending=False, method="min").astype(int)
    return vc


def _covers_all(layers: str, n_layers: int) -> bool:
    from .interventions import parse_layers

    return len(parse_layers(layers, n_layers)) == n_layers


def best_swap(vc: pd.DataFrame) -> pd.Series | None:
    """The top-ranked swap (never one of every layer), or None."""
    if vc.empty or vc["rank"].isna().all():
        return None
    return vc.loc[vc["rank"].astype(float).idxmin()]

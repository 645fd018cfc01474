"""``sae-latents`` (beyond the paper): frame-level SAEs per layer, latents probed for attributes.

For each representation (default: every layer), one TopK SAE is trained on the
frames of the SAE speakers; on held-out frames every latent is scored against
every attribute:
- categorical (phone, speaker, ...): purity = max_c P(c | latent active), its best
  class, recall P(active | c) and lift = purity / P(c);
- continuous (F0, loudness): Spearman correlation of the activation with the value
  over the frames where it is defined (voiced frames for F0).
A latent is monosemantic for an attribute when its purity reaches ``purity``
(at least ``min_active`` active frames) or |rho| reaches ``rho`` *and* its score beats the
highest score the same latent reaches under ``null_shuffles`` shuffled labellings (a class
with a base rate of 0.9 makes any latent 0.9-pure; the shuffled null says so). Labels that
are constant within utterances (speaker) are shuffled between utterances, others between
frames. Purity is also reported calibrated against the base rate: (purity − P(c)) / (1 − P(c)).
SAE and probe frames come from different speakers (checked).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...config import to_dict
from ...errors import CodeclensError
from ...util.atomic import atomic_path
from ...util.provenance import config_hash
from ..base import AnalysisResult, Artifact
from ..infotheory import is_missing
from .config import LatentProbeConfig
from .io import load_sae, read_meta, save_sae
from .sweep import SAEConfig, StoreSource, TrainConfig, train_sweep

DEFAULT_ATTRIBUTES = ("phone", "speaker", "f0_hz", "f0")


def attribute_kind(values: np.ndarray) -> str:
    """'continuous' for floats with many distinct values, else 'categorical'."""
    v = pd.Series(values)
    if pd.api.types.is_float_dtype(v) and v.nunique(dropna=True) > 20:
        return "continuous"
    return "categorical"


def _rank(x: np.ndarray) -> np.ndarray:
    return pd.Series(x).rank(method="average").to_numpy()


def _shuffles(n: int, groups: np.ndarray | None, values: np.ndarray, n_null: int, seed: int) -> list[np.ndarray]:
    """Row permutations of the null: whole utterances swap labels when the label is constant
    within every utterance (a frame shuffle would make utterance-bound latents look pure)."""
    rng = np.random.default_rng([seed, 29])
    out = []
    if groups is not None and len(groups) == n:
        g = pd.Series(values.astype(str)).groupby(groups).nunique()
        if (g <= 1).all():
            uniq, first, inv = np.unique(groups, return_index=True, return_inverse=True)
            for _ in range(n_null):
                perm = rng.permutation(len(uniq))
                # row i takes the label of the first row of the utterance its utterance maps to
                out.append(first[perm][inv])
            return out
    return [rng.permutation(n) for _ in range(n_null)]


def _purity(act_ok: np.ndarray, inv: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    onehot = np.zeros((len(inv), n_classes))
    onehot[np.arange(len(inv)), inv] = 1
    counts = act_ok.T.astype(np.float64) @ onehot  # [d_z, C] active frames per class
    tot = counts.sum(1)
    return counts, np.where(tot > 0, counts.max(1) / np.maximum(tot, 1), 0.0)


def _std_ranks(z_ok: np.ndarray) -> np.ndarray:
    """Column ranks standardised (constant columns: 0), so Spearman ρ with a standardised rank
    vector r is ``std_ranks.T @ r / n``."""
    r = pd.DataFrame(z_ok).rank(method="average").to_numpy()
    sd = r.std(0)
    return np.where(sd > 0, (r - r.mean(0)) / np.where(sd > 0, sd, 1), 0.0)


def probe_latents(z: np.ndarray, attrs: dict[str, np.ndarray], min_active: int = 20,
                  valid: dict[str, np.ndarray] | None = None, groups: np.ndarray | None = None,
                  null_shuffles: int = 0, seed: int = 0) -> pd.DataFrame:
    """One row per (latent, attribute): density, the monosemanticity statistics and, with
    ``null_shuffles``, the latent's best score under shuffled labels (``null_score``).
    ``groups``: utterance of each row (for the utterance-level shuffle)."""
    z = np.asarray(z)
    act = z > 0
    n_act = act.sum(0)
    rows = []
    for name, values in attrs.items():
        ok = np.ones(len(z), bool) if not valid or name not in valid else valid[name]
        kind = attribute_kind(values)
        null = np.full(z.shape[1], np.nan)
        g_ok = None
        if kind == "categorical":
            # Unlabelled frames (None, NaN, '') are no class: counting them would make "nan" a
            # label a latent can be pure for (and mixed str/float labels cannot be sorted).
            ok = ok & ~is_missing(values)
            lab = np.asarray(values, dtype=object)[ok].astype(str)
            classes, inv = np.unique(lab, return_inverse=True)
            counts, _ = _purity(act[ok], inv, len(classes))
            per_class = np.bincount(inv, minlength=len(classes)).astype(float)
            base = per_class / max(len(inv), 1)
            g_ok = None if groups is None else np.asarray(groups)[ok]
            if null_shuffles:
                null = np.max([_purity(act[ok], inv[p], len(classes))[1]
                               for p in _shuffles(len(inv), g_ok, lab, null_shuffles, seed)], axis=0)
        else:
            x = np.asarray(values, dtype=np.float64)
            ok = ok & np.isfinite(x)
            rx = _rank(x[ok])
            rx = (rx - rx.mean()) / (rx.std() + 1e-12)
            if null_shuffles:
                g_ok = None if groups is None else np.asarray(groups)[ok]
                alive = n_act >= min_active
                zr = _std_ranks(z[ok][:, alive])
                nz = np.zeros(z.shape[1])
                for p in _shuffles(len(rx), g_ok, x[ok], null_shuffles, seed):
                    nz[alive] = np.maximum(nz[alive], np.abs(zr.T @ rx[p] / len(rx)))
                null = np.where(alive, nz, np.nan)
        for j in np.flatnonzero(n_act >= min_active):
            rec: dict[str, Any] = {"latent": int(j), "attribute": name, "kind": kind,
                                   "density": float(act[:, j].mean()), "n_active": int(n_act[j])}
            if kind == "categorical":
                tot = counts[j].sum()
                if tot < min_active:
                    continue
                c = int(np.argmax(counts[j]))
                purity = counts[j, c] / tot
                rec.update(best=str(classes[c]), purity=purity, recall=counts[j, c] / per_class[c],
                           lift=purity / base[c], base_rate=base[c],
                           calibrated=(purity - base[c]) / (1 - base[c]) if base[c] < 1 else 0.0, score=purity)
            else:
                rz = _rank(z[ok, j])
                sd = rz.std()
                rho = float(((rz - rz.mean()) / sd * rx).mean()) if sd > 0 else 0.0
                rec.update(best="+" if rho >= 0 else "-", rho=rho, score=abs(rho))
            rec["null_score"] = float(null[j])
            rows.append(rec)
    return pd.DataFrame(rows)


class LatentRunner:
    """Runs the study for :class:`codeclens.analyses.sae.LatentProbeAnalysis`."""

    name = "sae-latents"
    title = "Frame-level SAE latents per layer: which are monosemantic for phone, speaker, F0?"

    def run(self, stores: Sequence[Any], cfg: LatentProbeConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from ..club import torch_threads

        with torch_threads(cfg.threads):
            return self._run(stores, cfg, out, progress)

    def _run(self, stores, cfg: LatentProbeConfig, out: Path, progress: bool) -> AnalysisResult:
        from ...util.device import resolve_device
        from .study import _unique_labels, _unique_names
        from .figures import monosemantic

        device = resolve_device(None if cfg.device == "auto" else cfg.device)
        out = Path(out)
        all_rows, summary_rows = [], []
        for store, sname, slabel in zip(stores, _unique_names([s.name for s in stores]),
                                        _unique_labels([s.name for s in stores])):
            reps = store.reprs(cfg.repr)
            if any(r.pooled for r in reps):
                raise CodeclensError("sae-latents works on frame-level representations (no mean(...))")
            attrs = list(cfg.attributes) or [a for a in DEFAULT_ATTRIBUTES if a in store.label_columns()]
            if not attrs:
                raise CodeclensError(f"{store.path}: none of {', '.join(DEFAULT_ATTRIBUTES)} in the store; "
                                     f"pass --attributes from: {', '.join(store.label_columns())}")
            values = {a: store.frame_column(a) for a in attrs}
            utts = store.utterances
            if cfg.split_column not in utts.columns:
                raise CodeclensError(f"{store.path}: no split column '{cfg.split_column}'")
            split = utts[cfg.split_column].astype(str).to_numpy()[store.frame_utt]
            train_rows = np.flatnonzero(split == cfg.train_split)
            probe_rows = np.flatnonzero(split == cfg.probe_split)
            if "speaker" in utts.columns:
                spk = utts["speaker"].astype(str).to_numpy()[store.frame_utt]
                shared = set(spk[train_rows]) & set(spk[probe_rows])
                if shared:
                    raise CodeclensError(f"{store.path}: split column '{cfg.split_column}' puts speaker(s) "
                                         f"{', '.join(sorted(shared)[:3])} in both '{cfg.train_split}' and "
                                         f"'{cfg.probe_split}'; sae-latents needs speaker-disjoint splits (e.g. split_spk)")
            if not len(train_rows) or not len(probe_rows):
                raise CodeclensError(f"{store.path}: splits '{cfg.train_split}'/'{cfg.probe_split}' have no frames")
            if len(probe_rows) > cfg.max_frames:
                probe_rows = np.sort(np.random.default_rng(cfg.seed).choice(probe_rows, cfg.max_frames, replace=False))
            valid = {}
            for a in attrs:
                if a.startswith("f0") and "voiced" in store.frames.columns:
                    valid[a] = store.frame_column("voiced")[probe_rows].astype(bool)
            train = TrainConfig(cfg.lr, cfg.eps, cfg.batch_size, cfg.aux_k, normalize=cfg.normalize)
            sc = SAEConfig(cfg.q, cfg.s, cfg.epochs)
            for rep in reps:
                d = out / "stores" / sname / "saes" / rep.name.replace(":", "")
                fp = config_hash({"store": store.fingerprint, "repr": rep.name,
                                  "train": to_dict(train), "sae": dataclasses.asdict(sc), "seed": cfg.seed,
                                  "rows": hashlib.sha256(train_rows.astype(np.int64).tobytes()).hexdigest()[:16]})
                try:
                    meta = read_meta(d)
                    sae, meta = load_sae(d, device) if meta.get("fingerprint") == fp else (None, None)
                except CodeclensError:
                    sae = None
                if sae is None:
                    [m] = train_sweep([sc], StoreSource(store, rep, train_rows), train, cfg.seed, device,
                                      progress=progress)
                    save_sae(d, m.sae, {"fingerprint": fp, "q": sc.q, "s": sc.s, "epochs": sc.epochs,
                                        "repr": rep.name, "store": store.name, "history": m.history})
                    sae = m.sae
                from .study import encode_np

                z, _ = encode_np(sae, store.materialize(rep, probe_rows), device)
                df = probe_latents(z, {a: values[a][probe_rows] for a in attrs}, cfg.min_active,
                                   {a: v for a, v in valid.items()}, groups=store.frame_utt[probe_rows],
                                   null_shuffles=cfg.null_shuffles, seed=cfg.seed)
                alive = int(((z > 0).sum(0) >= cfg.min_active).sum())
                for a in attrs:
                    e = df[df["attribute"] == a] if len(df) else df
                    thr = cfg.rho if len(e) and e["kind"].iloc[0] == "continuous" else cfg.purity
                    mono = (e["score"] >= thr) & ~(e["score"] <= e["null_score"]) if len(e) else e
                    n_mono = int(mono.sum()) if len(e) else 0
                    n_null = int((e["null_score"] >= thr).sum()) if len(e) else 0
                    summary_rows.append({"store": slabel, "repr": rep.name, "attribute": a, "d_z": sae.shape.d_z,
                                         "k": sae.k, "scored_latents": alive, "monosemantic": n_mono,
                                         "fraction": n_mono / max(alive, 1),
                                         "over_threshold_raw": int((e["score"] >= thr).sum()) if len(e) else 0,
                                         "null_over_threshold": n_null,
                                         "best_score": float(e["score"].max()) if len(e) else np.nan,
                                         "best_null_score": float(e["null_score"].max()) if len(e) else np.nan})
                if len(df):
                    df.insert(0, "repr", rep.name)
                    df.insert(0, "store", slabel)
                    all_rows.append(df)
        latents = pd.concat(all_rows, ignore_index=True) if all_rows else pd.DataFrame()
        summ = pd.DataFrame(summary_rows)
        arts = []
        for df, fname, cap in ((summ, "monosemantic.csv", "Per representation and attribute: latents scored, "
                                "monosemantic latents (purity / |rho| over threshold and above the latent's shuffled-label null), "
                                "latents over threshold before / under the null, best score and best null score."),
                               (latents, "latents.csv", "Every scored latent x attribute: density, best class, "
                                "purity, recall, lift (categorical) or Spearman rho (continuous).")):
            with atomic_path(out / fname, ".csv") as tmp:
                df.to_csv(tmp, index=False)
            arts.append(Artifact(fname, cap, "table"))
        if len(summ):
            p = monosemantic(summ, out / "monosemantic.png")
            arts.insert(0, Artifact(p.name, "Fraction of scored latents that are monosemantic for each "
                                    "attribute, per representation.", "figure"))
        text = []
        for (st, a), e in summ.groupby(["store", "attribute"], sort=False):
            top = e.loc[e["fraction"].idxmax()]
            if top["monosemantic"] == 0:
                text.append(f"{st}: no latent is monosemantic for {a} (best score {e['best_score'].max():.2f}).")
            else:
                text.append(f"{st}: {a} is most often carried by single latents in {top['repr']} "
                            f"({top['monosemantic']}/{top['scored_latents']} latents).")
        return AnalysisResult(self.name, self.title, tuple(arts), " ".join(text))

"""``sae-latents`` (beyond the paper): frame-level SAEs per layer, latents probed for attributes.

For each representation (default: every layer), one TopK SAE is trained on the
frames of the SAE speakers; on held-out frames every latent is scored against
every attribute:
- categorical (phone, speaker, ...): purity = max_c P(c | latent active), its best
  class, recall P(active | c) and lift = purity / P(c);
- continuous (F0, loudness): Spearman correlation of the activation with the value
  over the frames where it is defined (voiced frames for F0).
A latent is monosemantic for an attribute when its purity reaches ``purity``
(at least ``min_active`` active frames) or |rho| reaches ``rho``.
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


def probe_latents(z: np.ndarray, attrs: dict[str, np.ndarray], min_active: int = 20,
                  valid: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per (latent, attribute): density and the monosemanticity statistics."""
    z = np.asarray(z)
    act = z > 0
    n_act = act.sum(0)
    rows = []
    for name, values in attrs.items():
        ok = np.ones(len(z), bool) if not valid or name not in valid else valid[name]
        kind = attribute_kind(values)
        if kind == "categorical":
            # Unlabelled frames (None, NaN, '') are no class: counting them would make "nan" a
            # label a latent can be pure for (and mixed str/float labels cannot be sorted).
            ok = ok & ~is_missing(values)
            lab = np.asarray(values, dtype=object)[ok].astype(str)
            classes, inv = np.unique(lab, return_inverse=True)
            onehot = np.zeros((len(lab), len(classes)))
            onehot[np.arange(len(lab)), inv] = 1
            counts = act[ok].T.astype(np.float64) @ onehot  # [d_z, C] active frames per class
            base = onehot.mean(0)
            per_class = onehot.sum(0)
        else:
            x = np.asarray(values, dtype=np.float64)
            ok = ok & np.isfinite(x)
            rx = _rank(x[ok])
            rx = (rx - rx.mean()) / (rx.std() + 1e-12)
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
                           lift=purity / base[c], score=purity)
            else:
                rz = _rank(z[ok, j])
                sd = rz.std()
                rho = float(((rz - rz.mean()) / sd * rx).mean()) if sd > 0 else 0.0
                rec.update(best="+" if rho >= 0 else "-", rho=rho, score=abs(rho))
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
        from .study import _unique_names
        from .figures import monosemantic

        device = resolve_device(None if cfg.device == "auto" else cfg.device)
        out = Path(out)
        all_rows, summary_rows = [], []
        for store, sname in zip(stores, _unique_names([s.name for s in stores])):
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
                                   {a: v for a, v in valid.items()})
                alive = int(((z > 0).sum(0) >= cfg.min_active).sum())
                for a in attrs:
                    e = df[df["attribute"] == a] if len(df) else df
                    thr = cfg.rho if len(e) and e["kind"].iloc[0] == "continuous" else cfg.purity
                    n_mono = int((e["score"] >= thr).sum()) if len(e) else 0
                    summary_rows.append({"store": sname, "repr": rep.name, "attribute": a, "d_z": sae.shape.d_z,
                                         "k": sae.k, "scored_latents": alive, "monosemantic": n_mono,
                                         "fraction": n_mono / max(alive, 1),
                                         "best_score": float(e["score"].max()) if len(e) else np.nan})
                if len(df):
                    df.insert(0, "repr", rep.name)
                    df.insert(0, "store", sname)
                    all_rows.append(df)
        latents = pd.concat(all_rows, ignore_index=True) if all_rows else pd.DataFrame()
        summ = pd.DataFrame(summary_rows)
        arts = []
        for df, fname, cap in ((summ, "monosemantic.csv", "Per representation and attribute: latents scored, "
                                "monosemantic latents (purity / |rho| over threshold) and the best score."),
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

"""Geometry of one RVQ layer with t-SNE (Sadok et al. 2025, §2.1-2.3, Figs. 3-5).

Three views of layer k, embedded with openTSNE using one perplexity and one
seed for all of them:

* the codebook table ``[K, D]``, each code coloured by the phone class
  (vowel, stop, fricative, ...) that most of its frames carry;
* utterance means of ``layer:k`` vectors, coloured by speaker;
* the codes that co-occur with one frequent vowel (a phone, or a content unit
  whose frames are mostly vowels), coloured by the mean F0 of those
  co-occurring voiced frames.

t-SNE needs perplexity < n/3; the perplexity used is the requested one or
less, the same for every panel, and views with too few points are skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CodeclensError
from ..labels.phones import CLASSES, normalize_phone, phone_class
from ..util.atomic import write_json
from . import ANALYSES
from . import infotheory as it
from .base import Analysis, AnalysisResult, Artifact
from .tokens import label_column_name, layer_codes, pyplot, save_csv, save_figure

FIGURE_META = "tsne_figure.json"
"""Perplexity used, store name, vowel and views of the figure (read by :func:`redraw`)."""

CLASS_COLOURS = {
    "vowel": "#d62728", "stop": "#1f77b4", "affricate": "#9467bd", "fricative": "#2ca02c", "nasal": "#ff7f0e",
    "approximant": "#8c564b", "silence": "#7f7f7f", "other": "#bcbd22", "unused": "#e0e0e0",
}


def embed(x: np.ndarray, perplexity: float, seed: int = 0) -> np.ndarray:
    """2-D openTSNE embedding, deterministic for a seed (single thread, PCA initialisation)."""
    from openTSNE import TSNE

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 4:
        raise ValueError("t-SNE needs at least 4 points")
    if not 0 < perplexity < len(x) / 3:
        raise ValueError(f"perplexity {perplexity} must be in (0, n/3) = (0, {len(x) / 3:.1f})")
    init = "pca" if x.shape[1] >= 2 and np.ptp(x, axis=0).max() > 0 else "random"
    tsne = TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=1, initialization=init,
                neighbors="exact" if len(x) < 1000 else "auto", negative_gradient_method="auto", verbose=False)
    return np.asarray(tsne.fit(x), dtype=np.float64)


def common_perplexity(requested: float, sizes: list[int]) -> float:
    """The requested perplexity, lowered so that it is below n/3 for every panel size n."""
    if not sizes:
        raise ValueError("no panel to embed")
    return float(min(requested, (min(sizes) - 1) / 3.0))


def frame_phone_classes(store: Any) -> np.ndarray | None:
    """Phone class per frame (object array, None when unlabelled), or None if the store has no phones."""
    cols = set(store.frames.columns)
    if "phone_class" in cols:
        v = store.frame_column("phone_class").astype(object)
    elif "phone" in cols:
        ph = pd.Series(store.frame_column("phone"), dtype=object)
        codes, uniques = pd.factorize(ph, use_na_sentinel=True)
        canon = [None if it.is_missing(np.array([p], dtype=object))[0] else normalize_phone(str(p)) for p in uniques]
        names = [None if c is None else phone_class(c) for c in canon]  # noise markers: missing
        v = np.array(names + [None], dtype=object)[codes]
    else:
        return None
    v[it.is_missing(v)] = None
    return v


@dataclasses.dataclass(frozen=True)
class TsneConfig:
    layer: int = 1
    """1-based RVQ layer."""
    perplexity: float = 30.0
    """t-SNE perplexity for all panels (lowered to below n/3 of the smallest panel when needed)."""
    seed: int = 0
    """Random seed (t-SNE is deterministic for a seed)."""
    vowel_label: str = "phone"
    """Label whose vowel selects frames for the pitch view: phone, or unit (content units)."""
    vowel: str = ""
    """Which vowel (a value of vowel_label); empty: the most frequent value whose frames are mostly vowels."""
    min_frames: int = 2
    """Pitch view: a code needs this many voiced frames on the vowel to be plotted."""
    min_points: int = 10
    """Views with fewer points are skipped (they would force a tiny common perplexity)."""
    max_utterances: int = 3000
    """At most this many utterances in the speaker view (seeded subsample)."""

    def __post_init__(self):
        if self.layer < 1:
            raise ValueError("layer is 1-based (>= 1)")
        if self.perplexity <= 0:
            raise ValueError("perplexity must be > 0")
        if self.min_frames < 1 or self.min_points < 4 or self.max_utterances < 4:
            raise ValueError("need min_frames >= 1, min_points >= 4 and max_utterances >= 4")


@ANALYSES.register("tsne")
class TsneAnalysis(Analysis):
    name = "tsne"
    title = "Codebook geometry (t-SNE)"
    Config = TsneConfig
    per = "store"  # the study runner gives one store per run: one embedding per codec

    def run(self, stores, cfg: TsneConfig, out: Path, progress: bool = True) -> AnalysisResult:
        if len(stores) != 1:
            raise CodeclensError("tsne: give exactly one store (run once per codec)")
        store = stores[0]
        out = Path(out)
        codes = layer_codes(store, cfg.layer)
        K = int(store.codebook_sizes[cfg.layer - 1])
        notes: list[str] = []
        views: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}

        # 1. codebook table coloured by dominant phone class
        table = store.tables[cfg.layer - 1]
        usage = np.bincount(codes, minlength=K)
        cls = frame_phone_classes(store)
        code_df = pd.DataFrame({"code": np.arange(K), "frames": usage})
        if cls is not None:
            keep, ids, names = it.encode_labels(cls)
            counts = it.cooccurrence(codes[keep], ids, K, len(names))
            dom = np.where(counts.sum(axis=1) > 0, names[counts.argmax(axis=1)].astype(object), "unused")
            code_df["phone_class"] = dom
            code_df["class_share"] = np.where(usage > 0, counts.max(axis=1) / np.maximum(counts.sum(axis=1), 1), 0)
        else:
            code_df["phone_class"] = np.where(usage > 0, "other", "unused")
            notes.append("the store has no phone labels, so codes are not coloured by phone class")
        views["codebook"] = (table, code_df)

        # 2. utterance means coloured by speaker
        pooled = store.pooled(f"mean(layer:{cfg.layer})")
        u = store.utterances
        sel = np.arange(len(u))
        if len(sel) > cfg.max_utterances:
            sel = np.sort(np.random.default_rng(cfg.seed).choice(sel, cfg.max_utterances, replace=False))
        spk = u["speaker"].astype(str).to_numpy() if "speaker" in u.columns else np.full(len(u), "?")
        utt_df = pd.DataFrame({"utterance": u["id"].astype(str).to_numpy()[sel], "speaker": spk[sel]})
        views["speakers"] = (pooled[sel], utt_df)

        # 3. codes co-occurring with one frequent vowel, coloured by mean F0
        pitch = self._pitch_view(store, codes, cfg, notes)
        vowel = pitch.attrs["vowel"] if pitch is not None else ""
        if pitch is not None:
            views["pitch"] = (table[pitch["code"].to_numpy()], pitch)

        small = [k for k, (x, _) in views.items() if len(x) < cfg.min_points]
        for k in small:
            notes.append(f"the {k} view has only {len(views[k][0])} points (< min_points={cfg.min_points}); skipped")
            del views[k]
        if not views:
            raise CodeclensError("tsne: every view has too few points to embed")
        perp = common_perplexity(cfg.perplexity, [len(x) for x, _ in views.values()])
        if perp < cfg.perplexity:
            notes.append(f"perplexity lowered from {cfg.perplexity:g} to {perp:.2f} (must be < n/3 for the smallest view)")
        arts = []
        for key, (x, df) in views.items():
            xy = embed(x, perp, cfg.seed)
            df = df.assign(x=xy[:, 0], y=xy[:, 1])
            views[key] = (x, df)
            save_csv(df, out / f"tsne_{key}.csv")
            arts.append(Artifact(f"tsne_{key}.csv", f"t-SNE coordinates of the {key} view (layer {cfg.layer}).", "table"))
        # What the figure needs beyond the coordinate tables, so `codeclens figures` redraws it without t-SNE.
        write_json(out / FIGURE_META, {"perplexity": perp, "store": store.name, "vowel": vowel, "views": list(views)})
        self._figure({k: d for k, (_, d) in views.items()}, cfg, perp, store.name, vowel, out / "tsne.png")
        cap = (f"t-SNE of RVQ layer {cfg.layer} of {store.name} (openTSNE, perplexity {perp:.2f}, seed {cfg.seed}, "
               f"same for all panels; cf. Sadok et al. 2025 Figs. 3-5). ")
        parts = {"codebook": "Codebook vectors coloured by the phone class most of their frames carry (grey: unused)",
                 "speakers": "utterance-mean vectors coloured by speaker",
                 "pitch": f"codes co-occurring with {cfg.vowel_label} '{vowel}', coloured by the mean F0 of those "
                          "voiced frames"}
        cap += "; ".join(parts[k] for k in views) + "."
        arts.insert(0, Artifact("tsne.png", cap, "figure"))
        summary = self._summary(views, cfg, perp) + (" Notes: " + "; ".join(notes) + "." if notes else "")
        return AnalysisResult(self.name, self.title, tuple(arts), summary=summary)

    # -- pitch view -------------------------------------------------------------------
    @staticmethod
    def _pitch_view(store: Any, codes: np.ndarray, cfg: TsneConfig, notes: list[str]) -> pd.DataFrame | None:
        cols = set(store.frames.columns) | set(store.utterances.columns)
        f0_col = "f0_hz" if "f0_hz" in cols else ("f0" if "f0" in cols else None)
        if f0_col is None:
            notes.append("no F0 column (f0_hz): pitch view skipped")
            return None
        col = label_column_name(store, cfg.vowel_label)
        keep, ids, names = it.encode_labels(store.frame_column(col))
        rows = np.flatnonzero(keep)
        if cfg.vowel:
            hit = np.flatnonzero(names.astype(str) == cfg.vowel)
            if not len(hit):
                raise CodeclensError(f"tsne: {col} '{cfg.vowel}' does not occur in the store")
            target = int(hit[0])
        else:
            cls = frame_phone_classes(store)
            if cls is None:
                notes.append("no phone classes to find a vowel (give --vowel): pitch view skipped")
                return None
            is_vowel = np.array([c == "vowel" for c in cls[rows]])
            n_label = np.bincount(ids, minlength=len(names))
            n_vowel = np.bincount(ids[is_vowel], minlength=len(names))
            cand = np.flatnonzero(n_vowel * 2 > n_label)
            if not len(cand):
                notes.append(f"no {col} value whose frames are mostly vowels: pitch view skipped")
                return None
            target = int(cand[np.argmax(n_label[cand])])
        f0 = np.asarray(store.frame_column(f0_col), dtype=np.float64)
        voiced = np.isfinite(f0) & (f0 > 0)
        if "voiced" in cols:
            voiced &= np.asarray(store.frame_column("voiced"), dtype=bool)
        sel = rows[(ids == target) & voiced[rows]]
        if not len(sel):
            notes.append(f"{col} '{names[target]}' has no voiced frames: pitch view skipped")
            return None
        c = codes[sel]
        n = np.bincount(c)
        s1 = np.bincount(c, weights=f0[sel])
        s2 = np.bincount(c, weights=f0[sel] ** 2)
        used = np.flatnonzero(n >= cfg.min_frames)
        mean = s1[used] / n[used]
        sd = np.sqrt(np.maximum(s2[used] / n[used] - mean**2, 0.0))
        df = pd.DataFrame({"code": used, "frames": n[used], "mean_f0_hz": mean, "sd_f0_hz": sd})
        df.attrs["vowel"] = str(names[target])
        return df

    # -- figure and summary --------------------------------------------------------------
    @staticmethod
    def _figure(views: dict[str, pd.DataFrame], cfg: TsneConfig, perp: float, name: str, vowel: str,
                path: Path) -> list[Path]:
        plt = pyplot()
        fig, axes = plt.subplots(1, len(views), figsize=(5.4 * len(views), 5.0), squeeze=False)
        for ax, (key, df) in zip(axes[0], views.items()):
            if key == "codebook":
                order = [c for c in (*CLASSES, "other", "unused") if c in set(df["phone_class"])]
                for c in order:
                    d = df[df["phone_class"] == c]
                    ax.scatter(d["x"], d["y"], s=14, color=CLASS_COLOURS.get(c, "black"), label=f"{c} ({len(d)})",
                               alpha=0.85, edgecolors="none")
                ax.legend(fontsize=7, title="dominant phone class", title_fontsize=7, markerscale=1.5)
                ax.set_title(f"codebook of layer {cfg.layer}", fontsize=10)
            elif key == "speakers":
                spk = sorted(df["speaker"].unique())
                cmap = plt.get_cmap("tab10" if len(spk) <= 10 else "tab20")
                for i, s in enumerate(spk):
                    d = df[df["speaker"] == s]
                    ax.scatter(d["x"], d["y"], s=16, color=cmap(i % cmap.N), label=s, alpha=0.85, edgecolors="none")
                if len(spk) <= 20:
                    ax.legend(fontsize=6, title="speaker", title_fontsize=7, ncol=2)
                else:
                    ax.text(0.01, 0.01, f"{len(spk)} speakers (colours repeat)", transform=ax.transAxes, fontsize=7)
                ax.set_title(f"utterance means of layer {cfg.layer}", fontsize=10)
            else:
                sc = ax.scatter(df["x"], df["y"], c=df["mean_f0_hz"], cmap="plasma", s=18, edgecolors="none")
                fig.colorbar(sc, ax=ax, label="mean F0 of co-occurring frames (Hz)")
                ax.set_title(f"codes on {cfg.vowel_label} '{vowel}' ({len(df)} codes)",
                             fontsize=10)
            ax.set_xlabel("t-SNE 1")
            ax.set_ylabel("t-SNE 2")
        fig.suptitle(f"{name}, layer {cfg.layer}: t-SNE (perplexity {perp:.2f}, seed {cfg.seed})", fontsize=11)
        fig.tight_layout()
        return save_figure(fig, path)

    @staticmethod
    def redraw(out: Path, cfg: TsneConfig) -> list[Path]:
        """The figure again from ``tsne_<view>.csv`` and :data:`FIGURE_META` (no embedding is recomputed);
        [] for a run written before the metadata existed."""
        import json

        if not (out / FIGURE_META).is_file():
            return []
        meta = json.loads((out / FIGURE_META).read_text())
        views = {k: pd.read_csv(out / f"tsne_{k}.csv", dtype={"speaker": str, "utterance": str}) for k in meta["views"]}
        return TsneAnalysis._figure(views, cfg, float(meta["perplexity"]), meta["store"], meta["vowel"], out / "tsne.png")

    @staticmethod
    def _summary(views, cfg: TsneConfig, perp: float) -> str:
        """Neighbourhood agreement in the embedding: how often a point's 5 nearest neighbours share its label."""
        parts = [f"Layer {cfg.layer}, perplexity {perp:.2f}."]
        for key, col in (("codebook", "phone_class"), ("speakers", "speaker")):
            if key not in views:
                continue
            df = views[key][1]
            df = df[df[col] != "unused"] if col == "phone_class" else df
            if len(df) > 6:
                agree = knn_agreement(df[["x", "y"]].to_numpy(), df[col].astype(str).to_numpy())
                parts.append(f"{key}: {100 * agree:.0f}% of 5-nearest neighbours share the {col.replace('_', ' ')}.")
        return " ".join(parts)


def knn_agreement(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Mean share of each point's k nearest neighbours (in the embedding) carrying its label."""
    from sklearn.neighbors import NearestNeighbors

    # Querying the fitted points themselves (no X) leaves each point out of its own neighbours.
    idx = NearestNeighbors(n_neighbors=min(k, len(xy) - 1)).fit(xy).kneighbors(return_distance=False)
    return float((labels[idx] == labels[:, None]).mean())

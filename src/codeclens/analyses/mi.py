"""Mutual information between each RVQ layer and speech attributes (Sadok et al. 2025, §2.4).

Two estimates per layer and attribute:

* discrete: plug-in I(codes of layer k; label) from the co-occurrence counts,
  with the Miller-Madow bias correction and a shuffled-label baseline (what
  the estimator reports when there is no information). Continuous attributes
  (F0) enter as quantile bins, which gives a lower bound on I(code; F0).
* variational: on the layer's vectors (``layer:k``, or ``cumulative:k``), a
  CLUB upper bound and an InfoNCE / Barber-Agakov lower bound from one fitted
  q(y|x) (see :mod:`codeclens.analyses.club`), trained on the store's training
  utterances and scored on held-out ones.

F0 is used on voiced frames only and as log F0 (MI is unchanged by the
invertible log, a Gaussian q fits it better). All values are in bits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CodeclensError
from ..util.device import resolve_device
from . import ANALYSES
from . import infotheory as it
from .base import Analysis, AnalysisResult, Artifact
from .club import BracketConfig, mi_bracket
from .tokens import label_column_name, layer_codes, parse_layers, pyplot, save_csv, save_figure, store_labels


@dataclasses.dataclass(frozen=True)
class MIConfig:
    targets: tuple[str, ...] = ("phone", "speaker", "f0")
    """Attributes: any frame/utterance column; 'f0' means f0_hz on voiced frames; 'unit' falls back to phone."""
    layers: str = "all"
    """1-based layers: all, 1-8, 1,3,5."""
    repr: str = "layer"
    """Vectors for the variational bracket: layer (layer:k alone) or cumulative (sum of layers 1..k)."""
    club: bool = True
    """Fit the variational [lower, upper] bracket (turn off for the discrete estimates only)."""
    n_shuffles: int = 10
    """Label permutations for the shuffled baseline."""
    f0_bins: int = 16
    """Quantile bins of a continuous target for the discrete (plug-in) estimate."""
    max_train: int = 20000
    """At most this many training frames per fit (seeded subsample)."""
    max_test: int = 10000
    """At most this many held-out frames per fit."""
    steps: int = 400
    """Optimizer steps per variational fit."""
    hidden: int = 128
    """Hidden units of q(y|x)."""
    batch_size: int = 512
    """Minibatch size of the variational fit."""
    lr: float = 3e-3
    """Learning rate of the variational fit."""
    nce_pairs: int = 2048
    """Held-out pairs for InfoNCE (caps the lower bound at log2 of this, in bits)."""
    threads: int = 1
    """Torch CPU threads per variational fit (0: torch default); small fits run fastest on one."""
    seed: int = 0
    """Seed for shuffles, subsamples and fits."""
    device: str = "auto"
    """Torch device (auto: CUDA when present)."""

    def __post_init__(self):
        if not self.targets:
            raise ValueError("give at least one target")
        if self.repr not in ("layer", "cumulative"):
            raise ValueError("repr must be 'layer' or 'cumulative'")
        if self.n_shuffles < 0 or self.f0_bins < 2:
            raise ValueError("n_shuffles must be >= 0 and f0_bins >= 2")
        if self.max_train < 10 or self.max_test < 10:
            raise ValueError("max_train and max_test must be >= 10")
        self.bracket  # noqa: B018 (validates the fit budget)

    @property
    def bracket(self) -> BracketConfig:
        return BracketConfig(hidden=self.hidden, steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                             nce_pairs=self.nce_pairs, seed=self.seed, cpu_threads=self.threads)


@dataclasses.dataclass(frozen=True)
class Target:
    """One attribute resolved against a store."""

    name: str
    column: str
    discrete: bool
    rows: np.ndarray
    """Frame rows that have a value."""
    ids: np.ndarray
    """Integer label (discrete) or quantile bin (continuous) per row."""
    n_classes: int
    values: np.ndarray | None = None
    """Real values per row (continuous targets; log F0 for F0)."""


def resolve_target(store: Any, name: str, n_bins: int) -> Target:
    """Find the column of a target, drop missing values, choose discrete or continuous."""
    cols = set(store.frames.columns) | set(store.utterances.columns)
    col = label_column_name(store, name)
    if name == "f0":
        col = "f0_hz" if "f0_hz" in cols else "f0"
    raw = store.frame_column(col)
    is_f0 = col in ("f0_hz", "f0")
    continuous = is_f0 or it.is_real_valued(raw)
    if not continuous:
        keep, ids, classes = it.encode_labels(raw)
        rows = np.flatnonzero(keep)
        if len(classes) < 2:
            raise CodeclensError(f"{store.path}: target '{name}' ({col}) has fewer than 2 classes")
        return Target(name, col, True, rows, ids, len(classes))
    v = np.asarray(raw, dtype=np.float64)
    keep = np.isfinite(v)
    if is_f0:
        keep &= v > 0
        if "voiced" in cols:
            keep &= np.asarray(store.frame_column("voiced"), dtype=bool)
        v = np.log2(np.where(keep, v, 1.0))
    rows = np.flatnonzero(keep)
    if len(rows) < 20:
        raise CodeclensError(f"{store.path}: target '{name}' ({col}) has only {len(rows)} usable frames")
    vals = v[rows]
    edges = np.unique(np.quantile(vals, np.linspace(0, 1, n_bins + 1)[1:-1]))
    ids = np.searchsorted(edges, vals, side="right")
    return Target(name, col, False, rows, ids.astype(np.int64), len(edges) + 1, vals)


def split_rows(store: Any, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out frame rows by utterance: the store's ``split_utt`` or a seeded 80/20 split."""
    utt = store.frame_utt[rows]
    u = store.utterances
    if "split_utt" in u.columns:
        split = u["split_utt"].astype(str).to_numpy()[utt]
        tr, te = rows[split == "train"], rows[split != "train"]
        if len(tr) >= 10 and len(te) >= 10:
            return tr, te
    rng = np.random.default_rng(seed)
    held = rng.random(len(u)) < 0.2
    tr, te = rows[~held[utt]], rows[held[utt]]
    if len(tr) < 10 or len(te) < 10:
        raise CodeclensError(f"{store.path}: too few frames to split into training and held-out utterances")
    return tr, te


def _subsample(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= n else np.sort(rng.choice(rows, size=n, replace=False))


@ANALYSES.register("mi")
class MIAnalysis(Analysis):
    name = "mi"
    title = "Mutual information per RVQ layer"
    Config = MIConfig

    def run(self, stores, cfg: MIConfig, out: Path, progress: bool = True) -> AnalysisResult:
        from tqdm.auto import tqdm

        if not stores:
            raise CodeclensError("mi: no store given")
        out = Path(out)
        device = resolve_device(None if cfg.device == "auto" else cfg.device)
        titles = store_labels(stores)
        disc_rows, club_rows = [], []
        for store, title in zip(stores, titles):
            layers = parse_layers(cfg.layers, store.n_layers)
            targets = [resolve_target(store, t, cfg.f0_bins) for t in cfg.targets]
            jobs = [(layer, t) for layer in layers for t in targets]
            bar = tqdm(jobs, desc=f"mi {title}", disable=not progress, leave=False)
            for layer, tgt in bar:
                disc_rows.append({"store": title, "layer": layer, **self._discrete(store, layer, tgt, cfg)})
                if cfg.club:
                    club_rows.append({"store": title, "layer": layer, **self._bracket(store, layer, tgt, cfg, device)})
        disc = pd.DataFrame(disc_rows)
        save_csv(disc, out / "mi_discrete.csv")
        arts = [Artifact(
            "mi_discrete.csv", "Plug-in MI (bits) between each layer's codes and each attribute: raw, "
            "Miller-Madow corrected, and the mean/sd of the same estimators on shuffled labels; continuous "
            f"attributes in {cfg.f0_bins} quantile bins.", "table")]
        club = pd.DataFrame(club_rows)
        if cfg.club:
            save_csv(club, out / "mi_club.csv")
            arts.append(Artifact(
                "mi_club.csv", f"Variational MI bracket (bits) on {cfg.repr}:k vectors: upper bound = CLUB, capped "
                "by H(codes) (and H(label) for discrete attributes) since the vectors are functions of the codes; "
                "lower bound = InfoNCE (continuous) / Barber-Agakov (discrete), one-sided 95%; q(y|x) fitted on "
                "training utterances and scored on held-out ones.", "table"))
        self._figure(disc, club, titles, cfg, out / "mi.png")
        arts.append(Artifact(
            "mi.png", "Mutual information per RVQ layer and attribute, in bits (cf. Sadok et al. 2025, Fig. 6). "
            "Left: plug-in MI of the codes with Miller-Madow correction (bars) and the shuffled-label baseline "
            "(black ticks). Right: variational bracket on the layer's vectors: solid bar up to the lower bound, "
            "hatched up to the upper bound (CLUB, capped by H(codes)). F0 uses voiced frames; binned F0 in the left panel is a lower "
            "bound on I(code; F0).", "figure"))
        return AnalysisResult(self.name, self.title, tuple(arts), summary=self._summary(disc, club, cfg))

    # -- estimates ----------------------------------------------------------------
    @staticmethod
    def _discrete(store, layer: int, tgt: Target, cfg: MIConfig) -> dict[str, Any]:
        codes = layer_codes(store, layer)[tgt.rows]
        K = int(store.codebook_sizes[layer - 1])
        counts = it.cooccurrence(codes, tgt.ids, K, tgt.n_classes)
        sh_plug, sh_mm = [], []
        for c in it.shuffled_cooccurrences(codes, tgt.ids, K, tgt.n_classes, cfg.n_shuffles, cfg.seed + layer):
            sh_plug.append(it.mutual_information(c))
            sh_mm.append(it.mutual_information(c, miller_madow=True))
        b = 1.0 / it.LN2
        nan = float("nan")
        return {
            "target": tgt.name, "column": tgt.column, "binned": not tgt.discrete, "n_frames": int(len(codes)),
            "n_codes_used": int((counts.sum(axis=1) > 0).sum()), "n_classes": tgt.n_classes,
            "h_target_bits": it.entropy(counts.sum(axis=0)) * b,
            "mi_plugin_bits": it.mutual_information(counts) * b,
            "mi_mm_bits": it.mutual_information(counts, miller_madow=True) * b,
            "shuffle_plugin_mean_bits": float(np.mean(sh_plug)) * b if sh_plug else nan,
            "shuffle_mm_mean_bits": float(np.mean(sh_mm)) * b if sh_mm else nan,
            "shuffle_mm_sd_bits": float(np.std(sh_mm)) * b if sh_mm else nan,
        }

    @staticmethod
    def _bracket(store, layer: int, tgt: Target, cfg: MIConfig, device) -> dict[str, Any]:
        rng = np.random.default_rng(cfg.seed + 1000 * layer)
        tr, te = split_rows(store, tgt.rows, cfg.seed)
        tr, te = _subsample(tr, cfg.max_train, rng), _subsample(te, cfg.max_test, rng)
        # tgt.rows is sorted, so searchsorted maps frame rows back to target positions.
        i_tr, i_te = np.searchsorted(tgt.rows, tr), np.searchsorted(tgt.rows, te)
        rep = f"{cfg.repr}:{layer}"
        x_tr, x_te = store.materialize(rep, tr), store.materialize(rep, te)
        if tgt.discrete:
            y_tr, y_te = tgt.ids[i_tr], tgt.ids[i_te]
        else:
            y_tr, y_te = tgt.values[i_tr], tgt.values[i_te]
        # X is a function of the codes, so I(X; Y) <= H(codes) caps CLUB (Miller-Madow: errs high, stays a cap).
        k = layer if cfg.repr == "cumulative" else 1
        cols = np.arange(layer - k, layer)
        codes = np.asarray(store.codes[tgt.rows][:, cols], dtype=np.int64)
        _, code_ids = np.unique(codes, axis=0, return_inverse=True)
        h_x = it.miller_madow_entropy(np.bincount(code_ids.ravel()))
        br = mi_bracket(x_tr, y_tr, x_te, y_te, tgt.discrete, cfg.bracket, device, upper_cap=h_x,
                        groups=store.frame_utt[tr])
        b = 1.0 / it.LN2
        return {
            "target": tgt.name, "column": tgt.column, "repr": rep, "kind": "discrete" if tgt.discrete else "continuous",
            "lower_bits": br.lower * b, "upper_bits": br.upper * b, "club_bits": br.club * b, "h_codes_bits": h_x * b,
            "consistent": br.consistent, "lower_point_bits": br.lower_point * b,
            "lower_se_bits": br.lower_se * b, "lower_cap_bits": br.lower_cap * b, "lower_method": br.lower_method,
            "heldout_loglik_nats": br.log_likelihood, "n_train": br.n_train, "n_test": br.n_test,
        }

    # -- figure and summary ----------------------------------------------------------
    @staticmethod
    def _figure(disc: pd.DataFrame, club: pd.DataFrame, titles, cfg: MIConfig, path: Path) -> None:
        plt = pyplot()
        ncol = 2 if cfg.club else 1
        fig, axes = plt.subplots(len(titles), ncol, figsize=(6.2 * ncol, 3.6 * len(titles)), squeeze=False)
        colors = plt.get_cmap("tab10")
        for i, title in enumerate(titles):
            d = disc[disc["store"] == title]
            layers = sorted(d["layer"].unique())
            targets = list(dict.fromkeys(d["target"]))
            w = 0.8 / len(targets)
            ax = axes[i, 0]
            for j, t in enumerate(targets):
                dd = d[d["target"] == t].set_index("layer").loc[layers]
                x = np.arange(len(layers)) + (j - (len(targets) - 1) / 2) * w
                lab = t + (" (binned)" if bool(dd["binned"].iloc[0]) else "")
                ax.bar(x, dd["mi_mm_bits"], w, color=colors(j), label=lab)
                ax.scatter(x, dd["shuffle_mm_mean_bits"], marker="_", s=120, color="black", zorder=3,
                           label="shuffled labels" if j == 0 else None)
            ax.set_title(f"{title}: I(codes; attribute), Miller-Madow", fontsize=10)
            if ncol == 2:
                c = club[club["store"] == title]
                ax2 = axes[i, 1]
                for j, t in enumerate(targets):
                    cc = c[c["target"] == t].set_index("layer").loc[layers]
                    x = np.arange(len(layers)) + (j - (len(targets) - 1) / 2) * w
                    lo, up = cc["lower_bits"].to_numpy(), cc["upper_bits"].to_numpy()
                    ax2.bar(x, lo, w, color=colors(j), label=f"{t}: lower")
                    ax2.bar(x, np.maximum(up - lo, 0), w, bottom=lo, color=colors(j), alpha=0.35, hatch="//",
                            edgecolor=colors(j), label=f"{t}: up to upper")
                ax2.set_title(f"{title}: variational bracket on {cfg.repr}:k", fontsize=10)
            for ax_ in axes[i]:
                ax_.set_xticks(np.arange(len(layers)), [str(l) for l in layers])
                ax_.set_xlabel("RVQ layer")
                ax_.set_ylabel("mutual information (bits)")
                ax_.grid(axis="y", alpha=0.3)
                ax_.set_ylim(0, max(ax_.get_ylim()[1], 1e-3) * 1.35)  # room for the legend above the bars
                ax_.legend(fontsize=7, ncol=2, loc="upper right")
        fig.tight_layout()
        save_figure(fig, path)

    @staticmethod
    def _summary(disc: pd.DataFrame, club: pd.DataFrame, cfg: MIConfig) -> str:
        parts = []
        for (store, target), d in disc.groupby(["store", "target"], sort=False):
            best = d.loc[d["mi_mm_bits"].idxmax()]
            s = (f"{store}/{target}: code MI peaks at layer {int(best['layer'])} ({best['mi_mm_bits']:.2f} bits, "
                 f"shuffled {best['shuffle_mm_mean_bits']:.3f})")
            if cfg.club and len(club):
                c = club[(club["store"] == store) & (club["target"] == target)]
                cb = c.loc[c["lower_bits"].idxmax()]
                s += (f"; variational bracket largest at layer {int(cb['layer'])} "
                      f"[{cb['lower_bits']:.2f}, {cb['upper_bits']:.2f}] bits")
            parts.append(s + ".")
        return " ".join(parts)

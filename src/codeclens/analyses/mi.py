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
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import CodeclensError
from ..util.device import resolve_device
from . import ANALYSES
from . import framestream as fs
from . import infotheory as it
from .base import Analysis, AnalysisResult, Artifact
from .club import BracketConfig, mi_bracket
from .tokens import Z_NULL, label_column_name, parse_layers, pyplot, save_csv, save_figure, store_labels


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
    """One attribute resolved against a store (no per-frame arrays: those are streamed)."""

    name: str
    column: str
    discrete: bool
    edges: np.ndarray | None = None
    """Continuous targets: inner quantile-bin edges of the (log2 for F0) values."""
    is_f0: bool = False
    """F0: voiced frames only (f0 > 0 and the ``voiced`` column when present), as log2 F0."""
    voiced_column: bool = False
    n_valid: int = 0
    """Continuous targets: frames with a value."""

    @property
    def n_classes(self) -> int:
        return len(self.edges) + 1 if self.edges is not None else 0


#: Values kept (uniformly at random) to place the quantile-bin edges of a continuous target:
#: exact below this many frames, within ~0.1% of rank above.
QUANTILE_SAMPLE = 1_000_000


def continuous_values(chunk: dict[str, Any], tgt: Target) -> np.ndarray:
    """Per frame of a chunk, the target value (log2 F0 for F0), NaN where there is none."""
    v = chunk["raw:" + tgt.column]
    ok = np.isfinite(v)
    if tgt.is_f0:
        ok &= v > 0
        if tgt.voiced_column:
            f = chunk["voiced"]
            vb = f.uniques.astype(bool)[f.index] & (f.index >= 0)
            ok &= vb
        return np.where(ok, np.log2(np.where(ok, v, 1.0)), np.nan)
    return np.where(ok, v, np.nan)


def resolve_targets(store: Any, names: Sequence[str], n_bins: int, seed: int = 0,
                    chunk: int | None = None) -> list[Target]:
    """Find the column of each target and choose discrete or continuous; quantile edges of continuous ones.

    One streamed pass over the float columns (labels only, no codes): a float column
    with more than 20 distinct values that are not whole numbers is continuous (a
    measurement); whole-number floats are ids upcast by missing values.
    """
    cols = set(fs.frame_column_names(store)) | set(store.utterances.columns)
    out: list[Target | None] = []
    floats: list[tuple[int, Target]] = []
    for name in names:
        col = label_column_name(store, name)
        if name == "f0":
            col = "f0_hz" if "f0_hz" in cols else "f0"
        fs.column_source(store, col)  # a missing column is a one-line error naming the available ones
        is_f0 = col in ("f0_hz", "f0")
        if is_f0 or fs.column_is_float(store, col):
            floats.append((len(out), Target(name, col, False, is_f0=is_f0, voiced_column=is_f0 and "voiced" in cols)))
            out.append(None)
        else:
            out.append(Target(name, col, True))
    if floats:
        samples = {i: fs.Reservoir(QUANTILE_SAMPLE, seed) for i, _ in floats}
        encoders = {i: fs.LabelEncoder(t.column) for i, t in floats if not t.is_f0}
        extra = ["voiced"] if any(t.voiced_column for _, t in floats) else []
        for a, b, values in fs.iter_chunks(store, [c for c in extra], raw=[t.column for _, t in floats],
                                           chunk=chunk):
            rows = np.arange(a, b)
            keys = fs.row_keys(rows, seed)
            for i, t in floats:
                if i in encoders:
                    raw = values["raw:" + t.column]
                    try:
                        encoders[i].ids(fs.Factorized(*_factorize_numeric(raw)))
                    except CodeclensError:
                        del encoders[i]  # a measurement: continuous
                v = continuous_values(values, t)
                samples[i].add(rows, keys, np.isfinite(v), v=v)
        for i, t in floats:
            if i in encoders:
                out[i] = Target(t.name, t.column, True)
                continue
            sample = samples[i].items.get("v", np.zeros(0))
            if samples[i].seen < 20:
                raise CodeclensError(f"{store.path}: target '{t.name}' ({t.column}) has only {samples[i].seen} "
                                     "usable frames")
            edges = np.unique(np.quantile(sample, np.linspace(0, 1, n_bins + 1)[1:-1]))
            out[i] = dataclasses.replace(t, edges=edges, n_valid=samples[i].seen)
    return [t for t in out if t is not None]


def _factorize_numeric(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return np.asarray(codes, np.int64), np.asarray(uniques)


def heldout_utterances(store: Any, seed: int) -> np.ndarray:
    """Held-out flag per utterance: the store's ``split_utt`` (not train), or a seeded 20% when
    that split leaves fewer than 10 frames on either side."""
    u = store.utterances
    n = u["n_frames"].to_numpy()
    if "split_utt" in u.columns:
        held = u["split_utt"].astype(str).to_numpy() != "train"
        if n[~held].sum() >= 10 and n[held].sum() >= 10:
            return held
    return np.random.default_rng(seed).random(len(u)) < 0.2


@dataclasses.dataclass
class _Counted:
    """What one streamed pass gathers for a target: count tables per layer and the bracket's sample."""

    tables: list[np.ndarray]
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    n_classes: int


def count_targets(store: Any, layers: Sequence[int], targets: Sequence[Target], cfg: "MIConfig",
                  chunk: int | None = None) -> list[_Counted]:
    """One streamed pass over codes and labels: per target, ``[codes, classes]`` tables for every
    layer, and uniform samples of at most ``max_train`` training / ``max_test`` held-out frames.

    The samples are the frames with the smallest seeded row keys (:func:`framestream.row_keys`)
    among those with a value of the target: the same frames whatever the chunk size, and the same
    frames for every target that has a value on them."""
    cols = [l - 1 for l in layers]
    sizes = [store.codebook_sizes[l - 1] for l in layers]
    counters = [fs.CodeCounter(layers, sizes) for _ in targets]
    encoders = [fs.LabelEncoder(t.column, max_classes=1 << 62) if t.discrete else None for t in targets]
    res_tr = [fs.Reservoir(cfg.max_train, cfg.seed) for _ in targets]
    res_te = [fs.Reservoir(cfg.max_test, cfg.seed) for _ in targets]
    held = heldout_utterances(store, cfg.seed)
    ends = fs.utterance_ends(store)
    disc = [t.column for t in targets if t.discrete]
    if any(t.voiced_column for t in targets):
        disc.append("voiced")
    raw = [t.column for t in targets if not t.discrete]
    for a, b, values in fs.iter_chunks(store, disc, raw=raw, chunk=chunk):
        codes = fs.code_rows(store, a, b, cols)
        rows = np.arange(a, b)
        keys = fs.row_keys(rows, cfg.seed)
        h = held[fs.utt_of_rows(ends, a, b)]
        for j, t in enumerate(targets):
            if t.discrete:
                ids = encoders[j].ids(values[t.column])
                n_cls = encoders[j].n
                y = ids
            else:
                v = continuous_values(values, t)
                ids = np.where(np.isfinite(v), np.searchsorted(t.edges, np.nan_to_num(v), side="right"), -1)
                n_cls = t.n_classes
                y = v
            keep = ids >= 0
            if keep.all():  # no copy of the chunk's codes
                counters[j].add(codes, ids, n_cls)
            else:
                counters[j].add(codes[keep], ids[keep], n_cls)
            # The sample keeps its frames' codes too: the bracket's vectors are lookups of them, so the
            # fits never read the codes file again.
            res_tr[j].add(rows, keys, keep & ~h, y=y, codes=codes)
            res_te[j].add(rows, keys, keep & h, y=y, codes=codes)
    out = []
    for j, t in enumerate(targets):
        tr, te = res_tr[j].sorted_by("row"), res_te[j].sorted_by("row")
        if t.discrete:
            classes, new = encoders[j].finish()
            if len(classes) < 2:
                raise CodeclensError(f"{store.path}: target '{t.name}' ({t.column}) has fewer than 2 classes")
            for part in (tr, te):
                if part:
                    part["y"] = new[part["y"].astype(np.int64)]
            tables, n_cls = counters[j].tables(len(classes), new), len(classes)
        else:
            tables, n_cls = counters[j].tables(t.n_classes), t.n_classes
        out.append(_Counted(tables, tr, te, n_cls))
    return out


def _lookup(store: Any, codes: np.ndarray, counted_layers: list[int], layer: int, cumulative: bool) -> np.ndarray:
    """``layer:k`` (or ``cumulative:k``) vectors of sampled frames from their codes, as ``Store.materialize``
    computes them (same float32 sums in the same order)."""
    ls = list(range(1, layer + 1)) if cumulative else [layer]
    out = store.tables[ls[0] - 1][codes[:, counted_layers.index(ls[0])].astype(np.int64)].copy()
    for l in ls[1:]:
        out += store.tables[l - 1][codes[:, counted_layers.index(l)].astype(np.int64)]
    return out


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
            targets = resolve_targets(store, cfg.targets, cfg.f0_bins, cfg.seed)
            # cumulative:k's cap needs the code counts of layers 1..k too
            counted_layers = list(range(1, max(layers) + 1)) if cfg.club and cfg.repr == "cumulative" else layers
            counted = count_targets(store, counted_layers, targets, cfg)
            jobs = [(layer, t, c) for layer in layers for t, c in zip(targets, counted)]
            bar = tqdm(jobs, desc=f"mi {title}", disable=not progress, leave=False)
            for layer, tgt, cnt in bar:
                table = cnt.tables[counted_layers.index(layer)]
                disc_rows.append({"store": title, "layer": layer, **self._discrete(table, layer, tgt, cfg)})
                if cfg.club:
                    club_rows.append({"store": title, "layer": layer,
                                      **self._bracket(store, layer, tgt, cnt, counted_layers, cfg, device)})
        disc = pd.DataFrame(disc_rows)
        save_csv(disc, out / "mi_discrete.csv")
        arts = [Artifact(
            "mi_discrete.csv", "Plug-in MI (bits) between each layer's codes and each attribute: raw, "
            f"Miller-Madow corrected, the mean/sd of the same estimators over {cfg.n_shuffles} shuffled-label tables "
            "(same code and label counts, labels permuted across frames: the estimator's value without "
            "information), mi_corrected_bits = raw - shuffled mean, and above_null (raw above the shuffled mean by "
            f"more than {Z_NULL:g} shuffled sd); continuous attributes in {cfg.f0_bins} quantile bins.", "table")]
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
    def _discrete(counts: np.ndarray, layer: int, tgt: Target, cfg: MIConfig) -> dict[str, Any]:
        sh_plug, sh_mm = [], []
        for c in it.null_tables(counts, cfg.n_shuffles, cfg.seed + layer):
            sh_plug.append(it.mutual_information(c))
            sh_mm.append(it.mutual_information(c, miller_madow=True))
        b = 1.0 / it.LN2
        nan = float("nan")
        plug = it.mutual_information(counts)
        mean_plug = float(np.mean(sh_plug)) if sh_plug else nan
        sd_plug = float(np.std(sh_plug, ddof=1)) if len(sh_plug) > 1 else nan
        return {
            "target": tgt.name, "column": tgt.column, "binned": not tgt.discrete, "n_frames": int(counts.sum()),
            "n_codes_used": int((counts.sum(axis=1) > 0).sum()), "n_classes": int(counts.shape[1]),
            "h_target_bits": it.entropy(counts.sum(axis=0)) * b,
            "mi_plugin_bits": plug * b,
            "mi_mm_bits": it.mutual_information(counts, miller_madow=True) * b,
            "shuffle_plugin_mean_bits": mean_plug * b,
            "shuffle_plugin_sd_bits": sd_plug * b,
            "shuffle_mm_mean_bits": float(np.mean(sh_mm)) * b if sh_mm else nan,
            "shuffle_mm_sd_bits": float(np.std(sh_mm, ddof=1)) * b if len(sh_mm) > 1 else nan,
            "mi_corrected_bits": (plug - mean_plug) * b,
            "above_null": bool(plug - mean_plug > Z_NULL * max(sd_plug, 1e-12)) if sh_plug else True,
        }

    @staticmethod
    def _bracket(store, layer: int, tgt: Target, cnt: _Counted, counted_layers: list[int], cfg: MIConfig,
                 device) -> dict[str, Any]:
        tr, te = cnt.train.get("row", np.zeros(0, np.int64)), cnt.test.get("row", np.zeros(0, np.int64))
        if len(tr) < 10 or len(te) < 10:
            raise CodeclensError(f"{store.path}: too few frames to split into training and held-out utterances")
        rep = f"{cfg.repr}:{layer}"
        x_tr, x_te = (_lookup(store, part["codes"], counted_layers, layer, cfg.repr == "cumulative")
                      for part in (cnt.train, cnt.test))
        y_tr, y_te = cnt.train["y"], cnt.test["y"]
        if tgt.discrete:
            y_tr, y_te = y_tr.astype(np.int64), y_te.astype(np.int64)
        # X is a function of the codes, so I(X; Y) <= H(codes) caps CLUB (Miller-Madow: errs high, stays a cap);
        # for cumulative:k, H(codes 1..k) <= sum of the layers' entropies, which streams.
        k = layer if cfg.repr == "cumulative" else 1
        h_x = sum(it.miller_madow_entropy(cnt.tables[counted_layers.index(l)].sum(axis=1))
                  for l in range(layer - k + 1, layer + 1))
        br = mi_bracket(x_tr, y_tr, x_te, y_te, tgt.discrete, cfg.bracket, device, upper_cap=h_x,
                        groups=fs.utt_of_rows_at(fs.utterance_ends(store), tr))
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
            key = "mi_corrected_bits" if cfg.n_shuffles > 0 else "mi_mm_bits"
            best = d.loc[d[key].idxmax()]
            shuffled = f"shuffled {best['shuffle_plugin_mean_bits']:.3f}"
            if cfg.n_shuffles > 0 and not d["above_null"].any():
                s = (f"{store}/{target}: no layer above the shuffled-label baseline (code MI peaks at layer "
                     f"{int(best['layer'])} with {best['mi_plugin_bits']:.3f} bits raw, equal to its {shuffled})")
            else:
                what = "bias-corrected code MI" if cfg.n_shuffles > 0 else "code MI (Miller-Madow, no null)"
                s = (f"{store}/{target}: {what} peaks at layer {int(best['layer'])} ({best[key]:.2f} bits; raw "
                     f"{best['mi_plugin_bits']:.2f}, {shuffled})")
            if cfg.club and len(club):
                c = club[(club["store"] == store) & (club["target"] == target)]
                cb = c.loc[c["lower_bits"].idxmax()]
                if cb["lower_bits"] <= 0:
                    s += "; variational lower bound 0 at every layer"
                else:
                    s += (f"; variational bracket largest at layer {int(cb['layer'])} "
                          f"[{cb['lower_bits']:.2f}, {cb['upper_bits']:.2f}] bits")
            parts.append(s + ".")
        return " ".join(parts)

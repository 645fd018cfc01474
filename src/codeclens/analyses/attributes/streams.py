"""Token streams of the attribute model, all at the codec's frame rate.

The store already labels every codec frame at its time centre (labels are computed
from times at each codec's own rate), so codec tokens and frame attributes share one
clock; a model ``patch`` > 1 then groups consecutive frames into one position, as
AnCoGen patches its streams in time. Streams:

- ``codec``: ``[T, L]`` codes, every RVQ layer of a frame;
- ``content``: HuBERT units (``unit``) or phones, one class per unit/phone;
- ``pitch``: class 0 = unvoiced, class ``1 + round(f0 / step)`` for voiced frames,
  F0 clipped to ``[0, pitch_max_hz]`` (AnCoGen: 0-350 Hz, one class per Hz);
- ``loudness``: RMS dBFS clipped to ``[min, max]`` in ``step`` dB classes;
- ``identity``: per utterance, the top principal components of its Resemblyzer
  embedding, each cut into quantile bins fitted on the training utterances. Not a
  speaker id: any voice, seen or not, has tokens, so conversion works to unseen speakers.

Missing values (no phone, NaN loudness) are :data:`MISSING`: never a training target,
embedded as "unknown" when visible.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...errors import CodeclensError
from .config import StreamConfig

MISSING = -1
"""Class of a frame without a value for a stream."""


def pitch_classes(f0_hz: np.ndarray, voiced: np.ndarray, cfg: StreamConfig) -> np.ndarray:
    f0 = np.asarray(f0_hz, dtype=np.float64)
    v = np.asarray(voiced, dtype=bool) & np.isfinite(f0)
    top = int(round(cfg.pitch_max_hz / cfg.pitch_step_hz))
    k = np.clip(np.rint(np.nan_to_num(f0) / cfg.pitch_step_hz), 0, top).astype(np.int64)
    return np.where(v, 1 + k, 0)


def n_pitch_classes(cfg: StreamConfig) -> int:
    return 2 + int(round(cfg.pitch_max_hz / cfg.pitch_step_hz))


def pitch_hz(classes: np.ndarray, cfg: StreamConfig) -> np.ndarray:
    """Centre frequency of each class (NaN for unvoiced)."""
    c = np.asarray(classes, dtype=np.float64)
    return np.where(c >= 1, (c - 1) * cfg.pitch_step_hz, np.nan)


def loudness_classes(db: np.ndarray, cfg: StreamConfig) -> np.ndarray:
    x = np.asarray(db, dtype=np.float64)
    k = np.clip(np.rint((np.nan_to_num(x, nan=cfg.loudness_min_db) - cfg.loudness_min_db) / cfg.loudness_step_db),
                0, n_loudness_classes(cfg) - 1).astype(np.int64)
    return np.where(np.isfinite(x), k, MISSING)


def n_loudness_classes(cfg: StreamConfig) -> int:
    return 1 + int(round((cfg.loudness_max_db - cfg.loudness_min_db) / cfg.loudness_step_db))


def loudness_db(classes: np.ndarray, cfg: StreamConfig) -> np.ndarray:
    return cfg.loudness_min_db + np.asarray(classes, dtype=np.float64) * cfg.loudness_step_db


# -- identity ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IdentityQuantizer:
    """Projection of a speaker embedding onto its top principal components, then quantile bins."""

    mean: np.ndarray
    """``[D]`` mean training embedding."""
    components: np.ndarray
    """``[k, D]`` principal axes."""
    edges: np.ndarray
    """``[k, bins - 1]`` inner bin edges per component."""

    @classmethod
    def fit(cls, emb: np.ndarray, dims: int, bins: int, speakers: Sequence[Any] | None = None) -> "IdentityQuantizer":
        """Axes from ``emb [n, D]``; with ``speakers`` (one label per row, two or more speakers) the
        principal axes of the speaker *means*, so the tokens follow who speaks rather than what is
        said (on a few speakers, the top axes of single utterances are mostly content and noise)."""
        emb = np.asarray(emb, dtype=np.float64)
        if len(emb) < 2:
            raise CodeclensError("identity tokens need at least two training utterances")
        mean = emb.mean(0)
        basis = emb
        if speakers is not None:
            spk = np.asarray([str(s) for s in speakers])
            names = np.unique(spk)
            if len(names) >= 2:
                basis = np.stack([emb[spk == n].mean(0) for n in names])
                mean = basis.mean(0)
        _, sv, vt = np.linalg.svd(basis - mean, full_matrices=False)
        comp = vt[: min(dims, int(np.sum(sv > 1e-8 * max(sv.max(), 1e-30))))]
        if comp.shape[0] < dims:  # fewer speakers (or utterances) than dims: pad with unused axes
            comp = np.vstack([comp, np.zeros((dims - comp.shape[0], emb.shape[1]))])
        z = (emb - mean) @ comp.T
        edges = np.quantile(z, np.arange(1, bins) / bins, axis=0).T
        return cls(mean.astype(np.float32), comp.astype(np.float32), np.ascontiguousarray(edges, np.float32))

    def __call__(self, emb: np.ndarray) -> np.ndarray:
        """``[n, D]`` (or ``[D]``) embeddings -> ``[n, k]`` (or ``[k]``) int tokens."""
        e = np.asarray(emb, dtype=np.float64)
        one = e.ndim == 1
        z = (np.atleast_2d(e) - self.mean) @ self.components.T
        tok = np.stack([np.searchsorted(self.edges[d], z[:, d], side="right") for d in range(z.shape[1])], axis=1)
        return tok[0] if one else tok.astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"identity.mean": self.mean, "identity.components": self.components, "identity.edges": self.edges}

    @classmethod
    def from_arrays(cls, a: dict[str, Any]) -> "IdentityQuantizer":
        return cls(*(np.asarray(a[f"identity.{k}"], np.float32) for k in ("mean", "components", "edges")))


# -- vocabulary and per-utterance streams --------------------------------------------

@dataclasses.dataclass(frozen=True)
class Vocab:
    """Class counts of every stream (what the network's embeddings and heads are sized by)."""

    codebook_sizes: tuple[int, ...]
    content_source: str = ""
    """``unit`` or ``phone`` (the store column content tokens come from)."""
    content_classes: tuple[str, ...] = ()
    """Class names (unit numbers as text, or phone symbols)."""
    n_pitch: int = 0
    n_loudness: int = 0
    identity_dims: int = 0
    identity_bins: int = 0

    def sizes(self, attributes: Sequence[str]) -> dict[str, int]:
        n = {"content": len(self.content_classes), "pitch": self.n_pitch, "loudness": self.n_loudness}
        return {a: n[a] for a in attributes if a != "identity"}

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "codebook_sizes": list(self.codebook_sizes),
                "content_classes": list(self.content_classes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Vocab":
        return cls(**{**d, "codebook_sizes": tuple(d["codebook_sizes"]), "content_classes": tuple(d["content_classes"])})


@dataclasses.dataclass
class Utt:
    """All streams of one utterance."""

    row: int
    codes: np.ndarray
    """``[T, L]``"""
    frames: dict[str, np.ndarray]
    """Frame attributes: name -> ``[T]`` int classes (MISSING where unknown)."""
    identity: np.ndarray | None = None
    """``[k]`` identity tokens."""


def content_source(store, cfg: StreamConfig) -> str:
    cols = store.frames.columns
    has_units = "unit" in cols and bool((store.frames["unit"].to_numpy() >= 0).any())
    has_phones = "phone" in cols and bool(store.frames["phone"].notna().any())
    if cfg.content in ("auto", "units") and has_units:
        return "unit"
    if cfg.content in ("auto", "phones") and has_phones:
        return "phone"
    want = "units (label the store with 'units')" if cfg.content == "units" else "phones or units"
    raise CodeclensError(f"{store.path}: content stream needs {want}; the store has neither")


def _content_labels(store, source: str) -> np.ndarray:
    x = store.frames[source].to_numpy()
    if source == "unit":
        return np.where(x >= 0, x.astype(np.int64).astype(str), None).astype(object)
    return np.where(store.frames[source].notna().to_numpy(), x.astype(str), None).astype(object)


def check_labels(store, cfg: StreamConfig) -> None:
    """One-line error when the store lacks a label a requested stream needs."""
    need = {"pitch": ("f0_hz", "voiced"), "loudness": ("loudness",)}
    for a in cfg.attributes:
        if a == "content":
            content_source(store, cfg)
        for col in need.get(a, ()):
            if col not in store.frames.columns:
                raise CodeclensError(f"{store.path}: the {a} stream needs the '{col}' label; extract with the "
                                     f"{'f0' if a == 'pitch' else a} labeller or drop {a} from --attributes")


def build_vocab(store, cfg: StreamConfig, train_rows: Sequence[int]) -> Vocab:
    check_labels(store, cfg)
    src, classes = "", ()
    if "content" in cfg.attributes:
        src = content_source(store, cfg)
        lab = _content_labels(store, src)
        rows = np.isin(store.frame_utt, np.asarray(train_rows))
        seen = {str(v) for v in lab[rows] if v is not None}
        classes = tuple(sorted(seen, key=(lambda s: int(s)) if src == "unit" else str))
    return Vocab(tuple(store.codebook_sizes), src, classes, n_pitch_classes(cfg), n_loudness_classes(cfg),
                 cfg.identity_dims if "identity" in cfg.attributes else 0,
                 cfg.identity_bins if "identity" in cfg.attributes else 0)


def frame_streams(store, cfg: StreamConfig, vocab: Vocab) -> dict[str, np.ndarray]:
    """Frame attributes of the whole store as int classes ``[n_frames]`` per stream."""
    check_labels(store, cfg)
    out: dict[str, np.ndarray] = {}
    for a in cfg.attributes:
        if a == "content":
            # Categorical codes: -1 (= MISSING) for None and for classes the training split never had.
            cat = pd.Categorical(_content_labels(store, vocab.content_source), categories=list(vocab.content_classes))
            out[a] = np.asarray(cat.codes, dtype=np.int64)
        elif a == "pitch":
            out[a] = pitch_classes(store.frames["f0_hz"].to_numpy(), store.frames["voiced"].to_numpy(), cfg)
        elif a == "loudness":
            out[a] = loudness_classes(store.frames["loudness"].to_numpy(), cfg)
    return out


def utterances(store, cfg: StreamConfig, vocab: Vocab, rows: Sequence[int],
               identity: np.ndarray | None = None) -> list[Utt]:
    """The streams of utterances ``rows``; ``identity`` is ``[n_utterances, k]`` tokens (or None)."""
    fs = frame_streams(store, cfg, vocab)
    u = store.utterances
    off, n = u["frame_offset"].to_numpy(), u["n_frames"].to_numpy()
    out = []
    for r in rows:
        a, b = int(off[r]), int(off[r] + n[r])
        out.append(Utt(int(r), np.asarray(store.codes[a:b], dtype=np.int64), {k: v[a:b] for k, v in fs.items()},
                       None if identity is None else np.asarray(identity[r], dtype=np.int64)))
    return out


def split_rows(store, split: str) -> tuple[str, list[int], list[int]]:
    """(column used, train rows, test rows). ``auto`` prefers the speaker-disjoint split."""
    u = store.utterances
    cols = ("split_spk", "split_utt") if split == "auto" else (split,)
    for c in cols:
        if c in u.columns:
            s = u[c].astype(str).to_numpy()
            tr = [i for i in range(len(u)) if s[i] != "test"]  # train and val both train
            te = [i for i in range(len(u)) if s[i] == "test"]
            if tr and te:
                return c, tr, te
    raise CodeclensError(f"{store.path}: no usable train/test split ({', '.join(cols)}) for the attribute model")

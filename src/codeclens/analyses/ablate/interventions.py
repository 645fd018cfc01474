"""Edits of codec token streams, layer by layer (pure functions on code arrays).

Codes are ``[L, T]`` (one utterance) or ``[..., L, T]`` (a batch); layer
indices here are 0-based, layer *sets* typed by users are 1-based strings such
as ``2-8``, ``3`` or ``1,4-5``.

An edit returns :class:`Edited`: the new codes plus the layers that still
contribute to the decode. Removing a layer cannot be written into the codes
(every code value is some vector), so "drop" and "keep only" edit the layer
mask that :meth:`CodecAdapter.decode` takes, while "swap" and "noise" replace
code values and keep every layer. "mean" (mean ablation) removes a layer from the
mask and names it in ``Edited.mean_layers``: the decode adds that layer's
expected table vector under its code distribution (:func:`expected_vectors`),
the on-distribution counterpart of dropping it to zero.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from ...errors import CodeclensError

KINDS = ("drop", "mean", "truncate", "only", "swap", "noise")
"""Intervention kinds, in display order."""


@dataclasses.dataclass(frozen=True)
class Edited:
    """Codes after an intervention and the layers that contribute to the decode."""

    codes: np.ndarray
    """``[..., L, T]`` codes (a new array; the input is never modified)."""
    layers: tuple[int, ...]
    """0-based layers that contribute (the decoder's layer mask)."""
    mean_layers: tuple[int, ...] = ()
    """0-based layers replaced by their expected table vector (mean ablation; not in ``layers``)."""


@dataclasses.dataclass(frozen=True)
class Intervention:
    """One edit: a kind and the 0-based layer set it acts on."""

    kind: str
    """none | drop | mean | truncate | only | swap | noise"""
    layers: tuple[int, ...] = ()
    """0-based layers edited (for truncate: the kept prefix 0..k-1)."""

    def __post_init__(self):
        if self.kind not in ("none",) + KINDS:
            raise ValueError(f"unknown intervention '{self.kind}'; known: {', '.join(KINDS)}")
        if self.kind != "none" and not self.layers:
            raise ValueError(f"intervention '{self.kind}' needs at least one layer")
        if self.kind == "truncate" and tuple(self.layers) != tuple(range(len(self.layers))):
            raise ValueError("truncate keeps a prefix of layers 1..k")

    @property
    def layer_text(self) -> str:
        """1-based layer set as text (``3``, ``2-8``, ``1,4-5``)."""
        return format_layers(self.layers)

    @property
    def name(self) -> str:
        """Display name: ``drop 3``, ``mean 3``, ``keep 1-4`` (truncate), ``only 2``, ``swap 2-8``, ``noise 1``."""
        if self.kind == "none":
            return "none"
        label = "keep" if self.kind == "truncate" else self.kind
        return f"{label} {self.layer_text}"

    @property
    def slug(self) -> str:
        """File-name-safe name."""
        return re.sub(r"[^A-Za-z0-9_-]+", "_", self.name.replace(" ", "_").replace(",", "+"))

    @property
    def needs_donor(self) -> bool:
        return self.kind == "swap"

    @property
    def single_layer(self) -> int | None:
        """The 1-based layer this intervention is indexed by in per-layer tables, or None
        for a multi-layer set (truncate ``keep 1..k`` is indexed by k)."""
        if self.kind == "truncate":
            return len(self.layers)
        return self.layers[0] + 1 if len(self.layers) == 1 else None


NONE = Intervention("none")


# -- layer sets ------------------------------------------------------------------

def parse_layers(text: str | int | Sequence[int], n_layers: int) -> tuple[int, ...]:
    """1-based layer set (``2-8``, ``3``, ``1,4-5``, ``all``) -> sorted 0-based tuple."""
    if isinstance(text, (int, np.integer)):
        text = str(int(text))
    elif not isinstance(text, str):
        text = ",".join(str(int(t)) for t in text)
    src = text.strip().replace(" ", "")
    if src in ("all", "*", ""):
        if src == "":
            raise CodeclensError("empty layer set")
        return tuple(range(n_layers))
    out: set[int] = set()
    for part in src.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CodeclensError(f"bad layer set '{text}': expected 1-based layers like 3, 2-8 or 1,4-5")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a < 1 or b < a:
            raise CodeclensError(f"bad layer range '{part}' in '{text}' (layers are 1-based, low-high)")
        if b > n_layers:
            raise CodeclensError(f"layer set '{text}' names layer {b} but the codec has {n_layers} layers")
        out.update(range(a - 1, b))
    return tuple(sorted(out))


def format_layers(layers: Sequence[int]) -> str:
    """Sorted 0-based layers -> compact 1-based text (``[1,2,3,5]`` -> ``2-4,6``)."""
    ls = sorted(set(int(l) for l in layers))
    parts, i = [], 0
    while i < len(ls):
        j = i
        while j + 1 < len(ls) and ls[j + 1] == ls[j] + 1:
            j += 1
        parts.append(str(ls[i] + 1) if i == j else f"{ls[i] + 1}-{ls[j] + 1}")
        i = j + 1
    return ",".join(parts)


def parse_interventions(
    items: Sequence[str] | str, n_layers: int, layers: str = "all", swap_mode: str = "both"
) -> list[Intervention]:
    """Expand user intervention names into a list of :class:`Intervention`.

    A bare kind is expanded over each layer k of ``layers``: ``drop`` -> drop k,
    ``truncate`` -> keep 1..k, ``only`` -> only k, ``noise`` -> noise k, ``swap`` ->
    swap k and/or swap k..L (``swap_mode`` single | suffix | both). ``kind:SET``
    (``swap:2-8``, ``drop:1,4-5``) is one intervention on that whole set;
    ``truncate:k`` keeps layers 1..k; ``mean`` sweeps like ``drop``. Items may be one comma-separated string: a
    piece that starts with a digit continues the previous item's layer set.
    """
    if swap_mode not in ("single", "suffix", "both"):
        raise CodeclensError(f"swap mode must be single, suffix or both, got '{swap_mode}'")
    if isinstance(items, str):
        items = [items]
    # Re-join pieces split on commas inside layer sets ("noise:1,4-5").
    joined: list[str] = []
    for piece in (p.strip() for it in items for p in str(it).split(",")):
        if not piece:
            continue
        if piece[0].isdigit() and joined and ":" in joined[-1]:
            joined[-1] += "," + piece
        else:
            joined.append(piece)
    sweep = parse_layers(layers, n_layers)
    out: list[Intervention] = []
    for item in joined:
        kind, sep, set_text = item.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise CodeclensError(f"unknown intervention '{item}'; known: {', '.join(KINDS)} (optionally kind:LAYERS)")
        if sep:
            ls = parse_layers(set_text, n_layers)
            if kind == "truncate":
                if len(ls) != 1:
                    raise CodeclensError(f"truncate:{set_text}: give one layer k (keeps layers 1..k)")
                out.append(Intervention("truncate", tuple(range(ls[0] + 1))))
            else:
                out.append(Intervention(kind, ls))
            continue
        for k in sweep:
            if kind == "truncate":
                out.append(Intervention("truncate", tuple(range(k + 1))))
            elif kind == "swap":
                if swap_mode in ("single", "both"):
                    out.append(Intervention("swap", (k,)))
                if swap_mode in ("suffix", "both"):
                    out.append(Intervention("swap", tuple(range(k, n_layers))))
            else:
                out.append(Intervention(kind, (k,)))
    return list(dict.fromkeys(out))


# -- edits ---------------------------------------------------------------------------

def _check(codes: np.ndarray, layers: Sequence[int]) -> tuple[np.ndarray, int]:
    codes = np.asarray(codes)
    if codes.ndim < 2:
        raise ValueError(f"codes must be [L, T] or [..., L, T], got shape {codes.shape}")
    n_layers = codes.shape[-2]
    bad = [l for l in layers if not 0 <= int(l) < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for codes with {n_layers} layers")
    return codes, n_layers


def drop_layers(codes: np.ndarray, layers: Sequence[int]) -> Edited:
    """Remove the contribution of ``layers`` (the codes are unchanged, the mask shrinks)."""
    codes, n = _check(codes, layers)
    gone = set(int(l) for l in layers)
    return Edited(codes.copy(), tuple(l for l in range(n) if l not in gone))


def mean_layers(codes: np.ndarray, layers: Sequence[int]) -> Edited:
    """Mean ablation: ``layers`` contribute their expected table vector instead of their codes."""
    ed = drop_layers(codes, layers)
    return Edited(ed.codes, ed.layers, tuple(sorted(set(int(l) for l in layers))))


def expected_vectors(tables: Sequence[np.ndarray], distributions: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``E[table_k[c]]`` under layer k's code distribution, one ``[D]`` vector per layer."""
    return [np.asarray(p, np.float64) @ np.asarray(t, np.float64) for t, p in zip(tables, distributions)]


def keep_first(codes: np.ndarray, k: int) -> Edited:
    """Truncation: keep layers 0..k-1 (the codec at a lower bitrate)."""
    codes, n = _check(codes, [k - 1])
    if k < 1:
        raise ValueError("keep_first needs k >= 1")
    return Edited(codes.copy(), tuple(range(k)))


def keep_only(codes: np.ndarray, layers: Sequence[int]) -> Edited:
    """Only ``layers`` contribute."""
    codes, _ = _check(codes, layers)
    return Edited(codes.copy(), tuple(sorted(set(int(l) for l in layers))))


def align_time(codes: np.ndarray, n_frames: int) -> np.ndarray:
    """Crop or loop ``[..., L, T]`` codes along time to exactly ``n_frames`` frames."""
    codes = np.asarray(codes)
    t = codes.shape[-1]
    if t == 0:
        raise ValueError("cannot align an empty code sequence")
    if t >= n_frames:
        return codes[..., :n_frames].copy()
    idx = np.arange(n_frames) % t
    return codes[..., idx]


@dataclasses.dataclass(frozen=True)
class Alignment:
    """How donor frames were mapped onto the source's frames."""

    index: np.ndarray
    """Donor frame used at each source frame (``[T_source]``)."""
    method: str
    """dtw | crop/loop"""
    repeat_frac: float
    """Source frames that reuse the donor frame of the frame before (donor stretched, or looped)."""
    skip_frac: float
    """Donor frames never used (donor compressed, or cropped)."""


def _alignment(index: np.ndarray, n_donor: int, method: str) -> Alignment:
    index = np.asarray(index, dtype=np.int64)
    rep = float(np.mean(index[1:] == index[:-1])) if len(index) > 1 else 0.0
    skip = 1.0 - len(np.unique(index)) / n_donor if n_donor else 0.0
    if method == "crop/loop":
        # A loop restarts the donor: count the frames past its end as repeated material.
        rep = float(max(0, len(index) - n_donor) / len(index)) if len(index) else 0.0
    return Alignment(index, method, rep, skip)


def crop_loop_alignment(n_source: int, n_donor: int) -> Alignment:
    """Donor frame t mod T_donor at source frame t (crop when longer, loop when shorter)."""
    if n_donor == 0:
        raise ValueError("cannot align an empty code sequence")
    return _alignment(np.arange(n_source) % n_donor, n_donor, "crop/loop")


def dtw_path(cost: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-cost monotone path through a ``[T, U]`` cost matrix from (0, 0) to (T-1, U-1),
    steps (1,1), (1,0), (0,1); ties prefer the diagonal."""
    c = np.asarray(cost, dtype=np.float64)
    t, u = c.shape
    acc = np.empty_like(c)
    # Row by row: D[i, j] = min(a_j, c_ij + D[i, j-1]) with a_j = c_ij + min(D[i-1, j-1], D[i-1, j])
    # unrolls to cumsum(c_i) + running min of (a - cumsum(c_i)): no inner Python loop.
    cs = np.cumsum(c[0])
    acc[0] = cs
    for i in range(1, t):
        prev = acc[i - 1]
        a = c[i] + np.minimum(np.concatenate([[np.inf], prev[:-1]]), prev)
        cs = np.cumsum(c[i])
        acc[i] = cs + np.minimum.accumulate(a - cs)
    path = [(t - 1, u - 1)]
    i, j = t - 1, u - 1
    while i > 0 or j > 0:
        steps = [(i - 1, j - 1), (i - 1, j), (i, j - 1)]
        best = min((acc[p] if p[0] >= 0 and p[1] >= 0 else np.inf, n) for n, p in enumerate(steps))
        i, j = steps[best[1]]
        path.append((i, j))
    return path[::-1]


def dtw_alignment(source: np.ndarray, donor: np.ndarray) -> Alignment:
    """Dynamic time warping of ``[T', D]`` donor features onto ``[T, D]`` source features
    (cosine distance); each source frame takes the first donor frame the optimal path pairs it with."""
    s, d = np.asarray(source, np.float64), np.asarray(donor, np.float64)
    if len(s) == 0 or len(d) == 0:
        raise ValueError("cannot align an empty sequence")
    # Zero frames have no direction: their cosine distance to anything is 1.
    sn = s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    dn = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    index = np.full(len(s), -1, dtype=np.int64)
    for i, j in dtw_path(1.0 - sn @ dn.T):
        if index[i] < 0:
            index[i] = j
    return _alignment(index, len(d), "dtw")


def swap_layers(codes: np.ndarray, donor: np.ndarray, layers: Sequence[int]) -> Edited:
    """Replace ``layers`` with the donor's codes (time-aligned by crop/loop); others untouched."""
    codes, n = _check(codes, layers)
    donor = np.asarray(donor)
    if donor.shape[-2] != n:
        raise ValueError(f"donor has {donor.shape[-2]} layers, codes have {n}")
    aligned = align_time(donor, codes.shape[-1])
    out = codes.copy()
    ls = list(sorted(set(int(l) for l in layers)))
    out[..., ls, :] = np.broadcast_to(aligned, out.shape)[..., ls, :]
    return Edited(out, tuple(range(n)))


def code_distributions(codes: np.ndarray, codebook_sizes: Sequence[int]) -> list[np.ndarray]:
    """Empirical code probabilities per layer from ``[N, L]`` frame codes (a store's ``codes``)."""
    codes = codes if isinstance(codes, np.ndarray) else np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(codebook_sizes):
        raise ValueError(f"expected [N, {len(codebook_sizes)}] codes, got {codes.shape}")
    counts = [np.zeros(int(k), dtype=np.float64) for k in codebook_sizes]
    # In chunks, so a memory-mapped store's codes are never loaded whole.
    for a in range(0, codes.shape[0], 1 << 20):
        chunk = np.asarray(codes[a : a + (1 << 20)], dtype=np.int64)
        for l, k in enumerate(codebook_sizes):
            counts[l] += np.bincount(chunk[:, l], minlength=int(k))[: int(k)]
    return [c / c.sum() if c.sum() > 0 else np.full(len(c), 1.0 / len(c)) for c in counts]


def noise_layers(
    codes: np.ndarray, layers: Sequence[int], distributions: Sequence[np.ndarray], rng: np.random.Generator
) -> Edited:
    """Replace ``layers`` with codes drawn i.i.d. from each layer's code distribution."""
    codes, n = _check(codes, layers)
    if len(distributions) != n:
        raise ValueError(f"{len(distributions)} distributions for {n} layers")
    out = codes.copy()
    for l in sorted(set(int(l) for l in layers)):
        p = np.asarray(distributions[l], dtype=np.float64)
        shape = out[..., l, :].shape
        out[..., l, :] = rng.choice(len(p), size=shape, p=p / p.sum())
    return Edited(out, tuple(range(n)))


def apply(
    iv: Intervention,
    codes: np.ndarray,
    donor: np.ndarray | None = None,
    distributions: Sequence[np.ndarray] | None = None,
    rng: np.random.Generator | None = None,
) -> Edited:
    """Apply one intervention to ``[..., L, T]`` codes."""
    codes = np.asarray(codes)
    if iv.kind == "none":
        return Edited(codes.copy(), tuple(range(codes.shape[-2])))
    if iv.kind == "drop":
        return drop_layers(codes, iv.layers)
    if iv.kind == "mean":
        return mean_layers(codes, iv.layers)
    if iv.kind == "truncate":
        return keep_first(codes, len(iv.layers))
    if iv.kind == "only":
        return keep_only(codes, iv.layers)
    if iv.kind == "swap":
        if donor is None:
            raise ValueError("swap needs donor codes")
        return swap_layers(codes, donor, iv.layers)
    if iv.kind == "noise":
        if distributions is None:
            raise ValueError("noise needs per-layer code distributions")
        return noise_layers(codes, iv.layers, distributions, rng if rng is not None else np.random.default_rng(0))
    raise ValueError(f"unknown intervention kind '{iv.kind}'")

"""Edits of codec token streams, layer by layer (pure functions on code arrays).

Codes are ``[L, T]`` (one utterance) or ``[..., L, T]`` (a batch); layer
indices here are 0-based, layer *sets* typed by users are 1-based strings such
as ``2-8``, ``3`` or ``1,4-5``.

An edit returns :class:`Edited`: the new codes plus the layers that still
contribute to the decode. Removing a layer cannot be written into the codes
(every code value is some vector), so "drop" and "keep only" edit the layer
mask that :meth:`CodecAdapter.decode` takes, while "swap" and "noise" replace
code values and keep every layer.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from ...errors import CodeclensError

KINDS = ("drop", "truncate", "only", "swap", "noise")
"""Intervention kinds, in display order."""


@dataclasses.dataclass(frozen=True)
class Edited:
    """Codes after an intervention and the layers that contribute to the decode."""

    codes: np.ndarray
    """``[..., L, T]`` codes (a new array; the input is never modified)."""
    layers: tuple[int, ...]
    """0-based layers that contribute (the decoder's layer mask)."""


@dataclasses.dataclass(frozen=True)
class Intervention:
    """One edit: a kind and the 0-based layer set it acts on."""

    kind: str
    """none | drop | truncate | only | swap | noise"""
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
        """Display name: ``drop 3``, ``keep 1-4`` (truncate), ``only 2``, ``swap 2-8``, ``noise 1``."""
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
    ``truncate:k`` keeps layers 1..k. Items may be one comma-separated string: a
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

"""The codec adapter contract that every codec (built-in or plug-in) implements.

Layer indices in this Python API are 0-based; names seen by users
(``layer:1``, ``--layers 2-8``) are 1-based.

Invariant, tested for every adapter: for any codes ``c`` of shape ``[B, L, T]``,
``sum_l tables()[l][c[:, l]]`` equals ``quantized(c)`` (the codec's own
quantized representation, in the space its decoder consumes), and
``decode(c)`` equals the codec's own decode of ``c``.
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import CodeclensError
from ..spec import Spec


class CodecAdapter(abc.ABC):
    """Base class of codec adapters.

    Subclasses set ``sample_rate`` (Hz), ``frame_rate`` (frames per second),
    ``n_layers``, ``codebook_sizes`` and ``device`` and implement the abstract
    methods. ``spec`` is the spec the adapter was built from (recorded in stores).
    """

    #: Options every adapter accepts besides its own (checked by the loader).
    common_options = ("checkpoint", "random_init", "seed", "device")
    #: Extra spec options this adapter understands.
    options: tuple[str, ...] = ()

    sample_rate: int
    frame_rate: float
    n_layers: int
    codebook_sizes: list[int]
    device: torch.device
    spec: Spec
    #: Seconds by which a frame's effective centre lies after its nominal centre
    #: ``(k + 0.5) / frame_rate`` (negative: earlier). Measured per adapter with
    #: :func:`codeclens.codecs.check.measure_frame_offset`; see docs/labels.md.
    frame_offset: float = 0.0
    #: True when the adapter was built by :meth:`from_spec_for_extraction` without its decoder:
    #: it encodes (codes, latent, tables, quantized) exactly as the full load does, and refuses
    #: to decode (:meth:`require_full_model`).
    extraction_only: bool = False

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: Spec, device: torch.device) -> "CodecAdapter":
        """Build the adapter from a parsed spec (checkpoint, random_init, ...)."""

    @classmethod
    def from_spec_for_extraction(cls, spec: Spec, device: torch.device) -> "CodecAdapter":
        """Build the adapter for encoding only (``load_codec(..., extraction_only=True)``).

        An adapter that can leave its decoder unloaded overrides this, sets
        ``extraction_only = True`` on what it returns and calls :meth:`require_full_model`
        before anything that decodes. The codes must be the very ones :meth:`from_spec`
        gives. This default is the full load: always correct, just not smaller."""
        return cls.from_spec(spec, device)

    def require_full_model(self, what: str = "decode") -> None:
        """Refuse ``what`` (decode, reconstruct, save...) on an extraction-only load, in one line."""
        if self.extraction_only:
            spec = getattr(self, "spec", None) or type(self).__name__
            raise CodeclensError(
                f"codec '{spec}' was loaded for extraction only (encoder and quantizer, no decoder) and cannot "
                f"{what}; load it with load_codec(spec) (extraction_only=False) to {what}"
            )

    @abc.abstractmethod
    def tables(self) -> list[torch.Tensor]:
        """One ``[K_l, D]`` float tensor per layer, all in the decoder's input space."""

    @abc.abstractmethod
    def encode(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``waves [B, N]`` at ``sample_rate`` with valid ``lengths [B]`` ->
        ``(codes [B, L, T] long, n_frames [B] long)``. Frames past ``n_frames`` are padding."""

    def latent(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-quantization latent ``[B, T, D]`` and valid frame counts (optional)."""
        raise NotImplementedError(f"{type(self).__name__} has no pre-quantization latent")

    def encode_with_latent(self, waves: torch.Tensor, lengths: torch.Tensor):
        """``(codes, n_frames, latent, n_latent)``: :meth:`encode` and :meth:`latent` of the
        same input together (what extraction with ``--latent`` needs). Adapters whose codes are
        quantized from that very latent override it to run their encoder once, not twice."""
        codes, n_frames = self.encode(waves, lengths)
        lat, n_lat = self.latent(waves, lengths)
        return codes, n_frames, lat, n_lat

    @abc.abstractmethod
    def quantized(self, codes: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """The codec's own quantized representation ``[B, T, D]`` of ``codes``,
        computed through the codec's own quantizer code (not via ``tables()``)."""

    @abc.abstractmethod
    def decode(self, codes: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """``codes [B, L, T]`` -> ``waves [B, N]``; layers not in ``layers`` contribute nothing."""

    def decode_quantized(self, q: torch.Tensor) -> torch.Tensor:
        """``q [B, T, D]`` in the space of ``quantized`` -> waves (optional; ablate's mean ablation uses it)."""
        raise NotImplementedError(f"{type(self).__name__} cannot decode a quantized representation")

    # -- conveniences shared by all adapters ---------------------------------

    @property
    def dim(self) -> int:
        return int(self.tables()[0].shape[1])

    def lookup(self, codes: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Sum of table lookups ``[B, T, D]`` over ``layers`` (all by default)."""
        tabs = self.tables()
        layers = range(self.n_layers) if layers is None else layers
        out = None
        for l in layers:
            v = tabs[l].to(codes.device)[codes[:, l]]
            out = v if out is None else out + v
        if out is None:
            b, _, t = codes.shape
            return torch.zeros(b, t, self.dim, device=codes.device)
        return out

    def samples_per_frame(self) -> float:
        return self.sample_rate / self.frame_rate

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Effective centre (seconds from the utterance start) of each of ``n_frames`` frames:
        where labels are read. Uniform by default; a chunked codec overrides it."""
        return (np.arange(n_frames, dtype=np.float64) + 0.5) / float(self.frame_rate) + float(self.frame_offset)

    def describe(self) -> dict[str, Any]:
        """What a store's manifest records about this codec."""
        return {
            "spec": str(self.spec),
            "adapter": f"{type(self).__module__}.{type(self).__qualname__}",
            "sample_rate": int(self.sample_rate),
            "frame_rate": float(self.frame_rate),
            "n_layers": int(self.n_layers),
            "codebook_sizes": [int(k) for k in self.codebook_sizes],
            "dim": self.dim,
            "frame_offset_s": float(self.frame_offset),
        }


def layer_mask(n_layers: int, layers: Sequence[int] | None) -> list[int]:
    """Validated sorted list of 0-based layers (all when None)."""
    if layers is None:
        return list(range(n_layers))
    out = sorted(set(int(l) for l in layers))
    bad = [l for l in out if not 0 <= l < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a codec with {n_layers} layers")
    return out


class OneLoader:
    """Mixin (before :class:`CodecAdapter` in the bases) for an adapter whose one
    ``_load(spec, device, extraction_only)`` builds both the full and the extraction-only load."""

    @classmethod
    def from_spec(cls, spec: Spec, device: torch.device):
        return cls._load(spec, device, extraction_only=False)

    @classmethod
    def from_spec_for_extraction(cls, spec: Spec, device: torch.device):
        """Encoder + quantizer only (no decoder): the full load's codes."""
        return cls._load(spec, device, extraction_only=True)

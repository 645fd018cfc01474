"""Configuration of the attribute model (AnCoGen-Codec): streams, network, training, evaluation.

The analysis config is one flat dataclass (so the CLI and a study's TOML take the
same keys) made of three parts that are also usable alone: :class:`StreamConfig`
(how attributes become tokens), :class:`ModelConfig` (the network) and
:class:`TrainConfig` (the schedule). Defaults are the tiny CPU model; ``size =
"base"`` swaps in the GPU preset for LibriSpeech train-clean-100 (:data:`PRESETS`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

ATTRIBUTES = ("content", "pitch", "loudness", "identity")
"""Attribute streams in model order (the codec's tokens are always a stream too)."""


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    attributes: tuple[str, ...] = ATTRIBUTES
    """Attribute streams to model: any of content, pitch, loudness, identity."""
    content: str = "auto"
    """Content tokens: units (the store's ``unit`` column), phones, or auto (units when present)."""
    pitch_max_hz: float = 350.0
    """Top of the pitch scale (AnCoGen: 0-350 Hz); higher F0 falls in the top bin."""
    pitch_step_hz: float = 1.0
    """Width of one pitch class in Hz (AnCoGen: one class per Hz); class 0 is unvoiced."""
    loudness_min_db: float = -80.0
    """Bottom of the loudness scale (RMS dBFS); quieter frames fall in the bottom bin."""
    loudness_max_db: float = 0.0
    """Top of the loudness scale (RMS dBFS)."""
    loudness_step_db: float = 1.0
    """Width of one loudness class in dB."""
    identity_dims: int = 8
    """Identity tokens per utterance: principal components of the Resemblyzer embedding kept."""
    identity_bins: int = 16
    """Classes per identity token (quantile bins of its component over the training utterances)."""

    def __post_init__(self):
        StreamConfig._check(self)

    def _check(self) -> None:
        bad = [a for a in self.attributes if a not in ATTRIBUTES]
        if bad or not self.attributes:
            raise ValueError(f"attributes: unknown {', '.join(bad) or '(none given)'}; known: {', '.join(ATTRIBUTES)}")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError("attributes: each attribute once")
        if self.content not in ("auto", "units", "phones"):
            raise ValueError("content must be auto, units or phones")
        if not (0 < self.pitch_step_hz < self.pitch_max_hz):
            raise ValueError("need 0 < pitch_step_hz < pitch_max_hz")
        if not (self.loudness_step_db > 0 and self.loudness_min_db < self.loudness_max_db):
            raise ValueError("need loudness_step_db > 0 and loudness_min_db < loudness_max_db")
        if self.identity_dims < 1 or self.identity_bins < 2:
            raise ValueError("need identity_dims >= 1 and identity_bins >= 2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    """Width of the transformer."""
    n_heads: int = 4
    """Attention heads."""
    enc_layers: int = 2
    """Encoder layers (they see visible tokens only)."""
    dec_layers: int = 1
    """Decoder layers (visible encodings plus mask tokens)."""
    ff_mult: int = 2
    """Feed-forward width as a multiple of d_model."""
    dropout: float = 0.0
    """Dropout in the transformer layers."""
    patch: int = 1
    """Frames per sequence position (AnCoGen patches streams in time; >1 shortens long sequences)."""
    window: int = 64
    """Frames per training crop and per inference window."""

    def __post_init__(self):
        ModelConfig._check(self)

    def _check(self) -> None:
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError("d_model must be a positive multiple of n_heads")
        if self.enc_layers < 1 or self.dec_layers < 1 or self.ff_mult < 1:
            raise ValueError("need enc_layers, dec_layers, ff_mult >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.patch < 1 or self.window < self.patch or self.window % self.patch:
            raise ValueError("window must be a positive multiple of patch")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    """Optimisation steps."""
    batch_size: int = 16
    """Crops per step."""
    lr: float = 1e-3
    """AdamW learning rate (linear warm-up over the first 5% of steps, then cosine decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    alpha: float = 1.0
    """Dirichlet concentration over the streams for the per-sample masking ratios."""
    p_inference: float = 0.5
    """Probability that a sample uses one of the two inference maskings exactly (all attributes
    masked: analysis; all codec tokens masked: generation) instead of a Dirichlet draw."""
    checkpoint_every: int = 250
    """Steps between checkpoints (a re-run resumes from the last one)."""
    split: str = "auto"
    """Train/test split column: split_spk (speaker-disjoint), split_utt, or auto (split_spk when
    it has train and test utterances)."""
    seed: int = 0
    """Seed of initialisation, crops and masks."""
    device: str = "auto"
    """Torch device (auto = CUDA when present)."""
    threads: int = 0
    """Torch CPU threads while training (0 = leave as is)."""

    def __post_init__(self):
        TrainConfig._check(self)

    def _check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("need steps, batch_size, checkpoint_every >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.alpha <= 0:
            raise ValueError("need lr > 0, weight_decay >= 0, alpha > 0")
        if not 0.0 <= self.p_inference <= 1.0:
            raise ValueError("p_inference must be in [0, 1]")
        if self.split not in ("auto", "split_spk", "split_utt"):
            raise ValueError("split must be auto, split_spk or split_utt")
        if self.threads < 0:
            raise ValueError("threads must be >= 0")


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    # A GPU run on LibriSpeech train-clean-100 (about 100 h; 75 Hz codecs: patch 2).
    "base": {"d_model": 512, "n_heads": 8, "enc_layers": 8, "dec_layers": 4, "ff_mult": 4, "dropout": 0.1,
             "window": 256, "patch": 2, "steps": 200_000, "batch_size": 32, "lr": 3e-4, "checkpoint_every": 2000},
}


@dataclasses.dataclass(frozen=True)
class AttributesConfig(StreamConfig, ModelConfig, TrainConfig):
    """Everything ``codeclens attributes`` and ``[analyses.attributes]`` take."""

    size: str = "tiny"
    """Preset: tiny (CPU, minutes on the demo corpus) or base (GPU, LibriSpeech train-clean-100);
    options given explicitly win over the preset."""
    n_utts: int = 4
    """Test utterances resynthesised and converted (0: analysis only, no decoding)."""
    examples: int = 1
    """Utterances whose audio (original, codec decode, resynthesis, conversion) is saved."""
    max_seconds: float = 3.0
    """Seconds of each utterance resynthesised and converted."""
    max_utts: int = 0
    """Test utterances analysed (0 = all)."""

    def __post_init__(self):
        if self.size not in PRESETS:
            raise ValueError(f"size must be one of {', '.join(PRESETS)}")
        defaults = {f.name: f.default for f in dataclasses.fields(AttributesConfig)}
        for k, v in PRESETS[self.size].items():
            if getattr(self, k) == defaults[k]:
                object.__setattr__(self, k, v)
        StreamConfig._check(self)
        ModelConfig._check(self)
        TrainConfig._check(self)
        if self.n_utts < 0 or self.examples < 0 or self.max_utts < 0 or self.max_seconds <= 0:
            raise ValueError("need n_utts, examples, max_utts >= 0 and max_seconds > 0")

    def part(self, cls: type) -> Any:
        """The :class:`StreamConfig`, :class:`ModelConfig` or :class:`TrainConfig` inside this config."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

"""``encodec:24khz@6kbps`` / ``encodec:48khz@12kbps``: Meta's EnCodec via transformers.

The bandwidth decides how many RVQ layers are used: ``floor(kbps * 1000 /
(frame_rate * log2(codebook_size)))``, i.e. 2/4/8/16/32 layers for 1.5/3/6/12/24
kbps at 24 kHz (75 Hz) and 2/4/8/16 for 3/6/12/24 kbps at 48 kHz (150 Hz).
Tables are the codebooks themselves (no projections), in the decoder's input space.

The 48 kHz model is stereo and, exactly as its own ``encode`` does, cuts an utterance
into 1 s chunks (48000 samples) every ``chunk_stride`` = 47520 samples (1 % overlap),
each normalised by its own RMS ``scale``. Mono input is duplicated to both channels.
Codes are the chunks' codes one after the other: an utterance of N samples has
``sum_c ceil(len_c / 320)`` frames over its chunks (150 per full chunk, so consecutive
chunks share 1.5 frames' worth of audio), and :meth:`EnCodec.frame_times` gives each
frame's true time. ``decode(codes, scales=...)`` is the model's own chunked decode with
linear overlap-add, scaled back by each chunk's ``scale`` (from :meth:`EnCodec.scales`);
without ``scales`` it decodes the normalised audio (unit scale). The output is the
channel mean.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from ..errors import CodeclensError
from ..spec import Spec
from . import CODECS
from ._hf import (
    calibration_option,
    ema_codebook_setter,
    TorchCodec, calibration_batch, hf_class, check_size, init_residual_codebooks, load_hf_config, load_hf_model, seeded,
    want_random,
)
from .base import CodecAdapter, OneLoader

HUB = {24000: "facebook/encodec_24khz", 48000: "facebook/encodec_48khz"}
BANDWIDTHS = {24000: (1.5, 3.0, 6.0, 12.0, 24.0), 48000: (3.0, 6.0, 12.0, 24.0)}
DEFAULT_TARGET = "24khz@6kbps"


def parse_target(target: str) -> tuple[int, float]:
    m = re.fullmatch(r"(24|48)khz(?:@([0-9.]+)kbps)?", (target or DEFAULT_TARGET).lower())
    if not m:
        raise CodeclensError(f"encodec: bad target '{target}'; expected 24khz@{{1.5,3,6,12,24}}kbps or 48khz@{{3,6,12,24}}kbps")
    sr = int(m.group(1)) * 1000
    bw = float(m.group(2)) if m.group(2) else 6.0
    if bw not in BANDWIDTHS[sr]:
        raise CodeclensError(f"encodec:{m.group(1)}khz: bandwidth {bw:g} kbps not one of {', '.join(f'{b:g}' for b in BANDWIDTHS[sr])}")
    return sr, bw


def builtin_config(sample_rate: int, size: str):
    """The architecture of the released checkpoints (size=full) or a few-channel copy (size=tiny)."""
    EncodecConfig = hf_class("EncodecConfig")

    kw = {}
    if sample_rate == 48000:
        # facebook/encodec_48khz: stereo, normalised, non-causal with time group norm.
        kw = dict(sampling_rate=48000, audio_channels=2, normalize=True, chunk_length_s=1.0, overlap=0.01,
                  target_bandwidths=[3.0, 6.0, 12.0, 24.0], norm_type="time_group_norm", use_causal_conv=False)
    if size == "tiny":
        # Same strides, frame rate, codebook size and layer count; far fewer channels.
        kw.update(num_filters=4, hidden_size=16, num_lstm_layers=1)
    return EncodecConfig(**kw)


@CODECS.register("encodec")
class EnCodec(OneLoader, TorchCodec, CodecAdapter):
    options = ("size", "calibration")

    def __init__(self, model, bandwidth: float, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        cfg = model.config
        self.bandwidth = bandwidth
        self.sample_rate = int(cfg.sampling_rate)
        self.hop = int(cfg.hop_length)
        self.frame_rate = self.sample_rate / self.hop
        self.n_layers = int(model.quantizer.get_num_quantizers_for_bandwidth(bandwidth))
        self.codebook_sizes = [int(cfg.codebook_size)] * self.n_layers
        #: decode() restores the input level only given scales() (48 kHz: per-chunk RMS); the store keeps them.
        self.needs_scales = bool(cfg.normalize)

    @classmethod
    def _load(cls, spec: Spec, device: torch.device, extraction_only: bool) -> "EnCodec":
        EncodecConfig, EncodecModel = hf_class("EncodecConfig"), hf_class("EncodecModel")

        sr, bw = parse_target(spec.target)
        size = check_size(spec)
        ckpt = spec.get("checkpoint")
        what = f"encodec:{spec.target or DEFAULT_TARGET}"
        if want_random(spec):
            seed = spec.get("seed", 0, int)
            config = load_hf_config(EncodecConfig, ckpt, what) if ckpt else builtin_config(sr, size)
            with seeded(seed):
                model = EncodecModel(config)
            adapter = cls(model, _check(config, sr, bw, what), device)
            adapter.calibration_seconds = calibration_option(spec)
            adapter.init_codebooks(seed)
            if extraction_only:
                adapter.keep_encoder_only()
            return adapter
        drop = cls.decoder_modules if extraction_only else ()
        model = load_hf_model(EncodecModel, EncodecConfig, ckpt or HUB[sr], what, drop=drop)
        adapter = cls(model, _check(model.config, sr, bw, what), device)
        adapter.extraction_only = extraction_only
        return adapter

    # -- the model's own code paths -------------------------------------------

    def chunks(self, n_samples: int) -> list[tuple[int, int]]:
        """``(offset, length)`` of the chunks the model's own ``encode`` cuts ``n_samples`` into."""
        cfg = self.model.config
        if cfg.chunk_length is None:
            return [(0, n_samples)]
        return [(o, min(cfg.chunk_length, n_samples - o)) for o in range(0, n_samples, cfg.chunk_stride)]

    def frames_for(self, n_samples: int) -> int:
        return sum(math.ceil(n / self.hop) for _, n in self.chunks(n_samples))

    @property
    def _chunk_frames(self) -> int | None:
        cl = self.model.config.chunk_length
        return None if cl is None else math.ceil(cl / self.hop)

    def frame_times(self, n_frames: int) -> np.ndarray:
        """Frame centres in seconds; a chunk starts every ``chunk_stride`` samples (48 kHz)."""
        k = np.arange(n_frames, dtype=np.float64)
        start = k * self.hop
        if self._chunk_frames is not None:
            c, j = np.divmod(np.arange(n_frames), self._chunk_frames)
            start = c * float(self.model.config.chunk_stride) + j * self.hop
        return (start + 0.5 * self.hop) / self.sample_rate + float(self.frame_offset)

    def describe(self):
        d = super().describe()
        cfg = self.model.config
        if cfg.chunk_length is not None:  # frame times are not uniform: say how they are laid out
            d.update(chunk_samples=int(cfg.chunk_length), chunk_stride_samples=int(cfg.chunk_stride))
        if self.needs_scales:
            d["needs_scales"] = True
        return d

    def _stereo(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, None].expand(-1, self.model.config.audio_channels, -1)

    def _scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """The model's per-chunk scale of ``x [B, C, N]`` (its ``_encode_frame`` formula), or None."""
        if not self.model.config.normalize:
            return None
        mono = torch.sum(x, 1, keepdim=True) / x.shape[1]
        return mono.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """One chunk ``x [B, N]`` -> encoder output ``[B, D, T]`` (normalised first, as the model does)."""
        x = self._stereo(x)
        scale = self._scale(x)
        return self.model.encoder(x if scale is None else x / scale)

    def _per_chunk(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn`` on each chunk of ``x [1, N]``, outputs concatenated on their last axis."""
        return torch.cat([fn(x[:, o:o + n]) for o, n in self.chunks(x.shape[-1])], dim=-1)

    def _encode_one(self, x):
        # The model's own per-chunk encoder (normalisation, encoder, quantizer).
        return self._per_chunk(lambda c: self.model._encode_frame(self._stereo(c), self.bandwidth)[0][0], x)

    def _latent_one(self, x):
        return self._per_chunk(self._embed, x)[0].T

    @torch.no_grad()
    def scales(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor | None:
        """``[B, n_chunks]`` per-chunk input scales (what ``decode`` multiplies back), or None
        for a model that does not normalise (24 kHz). Items with fewer chunks are padded with 1."""
        if not self.model.config.normalize:
            return None
        waves = waves.to(self.device, torch.float32)
        per = [[float(self._scale(self._stereo(w[None, o:o + n]))) for o, n in self.chunks(int(m))]
               for w, m in zip(waves, lengths.tolist())]
        out = torch.ones(len(per), max(len(p) for p in per), device=self.device)
        for i, p in enumerate(per):
            out[i, : len(p)] = torch.tensor(p)
        return out

    def _compute_tables(self):
        return [layer.codebook.embed for layer in self.model.quantizer.layers[: self.n_layers]]

    @torch.no_grad()
    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        if layers is None:
            return self.model.quantizer.decode(codes.transpose(0, 1)).transpose(1, 2)
        return self._sum_layers(codes, layers, lambda l, c: self.model.quantizer.layers[l].decode(c))

    def _decode_quantized(self, q):
        return self.model.decoder(q.transpose(1, 2)).mean(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, layers=None, scales: torch.Tensor | None = None) -> torch.Tensor:
        """The model's own decode: per chunk (48 kHz), times the chunk's scale, linear overlap-add."""
        codes = codes.to(self.device)
        return self._chunked_decode(lambda a, b: self.quantized(codes[..., a:b], layers), codes.shape[-1], scales)

    @torch.no_grad()
    def decode_quantized(self, q: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        """``q [B, T, D]`` decoded chunk by chunk exactly as :meth:`decode` decodes codes."""
        q = q.to(self.device, torch.float32)
        return self._chunked_decode(lambda a, b: q[:, a:b], q.shape[1], scales)

    def _chunked_decode(self, q_of, n_frames: int, scales: torch.Tensor | None) -> torch.Tensor:
        self.require_full_model("decode")
        step = self._chunk_frames or n_frames
        outs = []
        for i, a in enumerate(range(0, n_frames, step)):
            y = self.model.decoder(q_of(a, a + step).transpose(1, 2))
            if scales is not None:
                y = y * scales[:, i].to(y)[:, None, None]
            outs.append(y)
        if len(outs) == 1:
            return outs[0].mean(1)
        return self.model._linear_overlap_add(outs, self.model.config.chunk_stride).mean(1)

    def reference_decode(self, codes: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
        """transformers' own ``EncodecModel.decode`` of ``codes [B, L, T]`` (channel mean),
        the codes regrouped into its ``[chunks, B, L, frames]`` layout with the last chunk padded."""
        self.require_full_model("decode")
        codes = codes.to(self.device)
        step = self._chunk_frames or codes.shape[-1]
        parts = list(codes.split(step, dim=-1))
        pad = step - parts[-1].shape[-1]
        parts[-1] = torch.nn.functional.pad(parts[-1], (0, pad))
        s = [None] * len(parts) if scales is None else [scales[:, i:i + 1].to(self.device) for i in range(len(parts))]
        with torch.no_grad():
            return self.model.decode(torch.stack(parts), s, last_frame_pad_length=pad)[0].mean(1)

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        """random_init: every layer's codebook is a sample of residual encoder frames of the
        calibration signal (so codes are spread over the codebook, not all 0)."""
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds).to(self.device)
        resid = self._embed(x)[0].T
        k = self.model.config.codebook_size

        def layer_fns(layer):
            return ema_codebook_setter(layer.codebook), (lambda r: r), (lambda r: layer.decode(layer.encode(r.T[None]))[0].T)

        init_residual_codebooks(resid, [layer_fns(l) for l in self.model.quantizer.layers], k, seed)
        self._table_cache = None


def _check(config, sr: int, bw: float, what: str) -> float:
    if int(config.sampling_rate) != sr:
        raise CodeclensError(f"{what}: checkpoint is a {config.sampling_rate} Hz model, not {sr} Hz")
    if bw not in [float(b) for b in config.target_bandwidths]:
        raise CodeclensError(f"{what}: checkpoint does not support {bw:g} kbps (has {list(config.target_bandwidths)})")
    return bw

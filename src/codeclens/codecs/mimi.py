"""``mimi``: Kyutai's Mimi codec (24 kHz, 12.5 Hz) via transformers.

Mimi's quantizer is split: layer 1 is a *semantic* RVQ (distilled from WavLM in
training) and layers 2.. are an *acoustic* RVQ. Both quantize the same encoder
latent, each in its own projected space, and each has its own (bias-free) output
projection back to the latent the decoder consumes. Tables are therefore
``output_proj(codebook)`` of the RVQ a layer belongs to, so that the sum of one
row per layer equals ``quantizer.decode`` exactly.

``layers=N`` (default 8, as Moshi uses it; at most the checkpoint's 32) sets how many
codebooks are encoded and decoded. An utterance of N samples has ``ceil(N / 1920)``
frames.
"""

from __future__ import annotations

import torch

from ..errors import CodeclensError
from ..spec import Spec
from . import CODECS
from ._hf import (
    calibration_option,
    TorchCodec, calibration_batch, check_size, hf_class, init_residual_codebooks, load_hf_config, load_hf_model,
    seeded, want_random,
)
from .base import CodecAdapter, OneLoader, layer_mask

HUB = "kyutai/mimi"
DEFAULT_LAYERS = 8


def builtin_config(size: str):
    MimiConfig = hf_class("MimiConfig")
    kw = {}
    if size == "tiny":
        # Same strides, frame rate, split and codebook size; few channels, one transformer layer.
        kw = dict(hidden_size=32, num_filters=4, codebook_dim=16, vector_quantization_hidden_dimension=16,
                  num_hidden_layers=1, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                  upsample_groups=32)
    return MimiConfig(**kw)


@CODECS.register("mimi")
class Mimi(OneLoader, TorchCodec, CodecAdapter):
    options = ("size", "layers", "calibration")

    def __init__(self, model, n_layers: int, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        cfg = model.config
        if not cfg.num_semantic_quantizers <= n_layers <= cfg.num_quantizers:
            raise CodeclensError(
                f"mimi: layers={n_layers} must be between {cfg.num_semantic_quantizers} and {cfg.num_quantizers}"
            )
        self.sample_rate = int(cfg.sampling_rate)
        self.hop = int(round(cfg.sampling_rate / cfg.frame_rate))
        self.frame_rate = float(cfg.frame_rate)
        self.n_layers = n_layers
        self.n_semantic = int(cfg.num_semantic_quantizers)
        self.codebook_sizes = [int(cfg.codebook_size)] * n_layers

    @classmethod
    def _load(cls, spec: Spec, device: torch.device, extraction_only: bool) -> "Mimi":
        MimiConfig, MimiModel = hf_class("MimiConfig"), hf_class("MimiModel")
        if spec.target:
            raise CodeclensError(f"mimi takes no target (got 'mimi:{spec.target}'); use mimi?layers=N")
        size = check_size(spec)
        n = spec.get("layers", DEFAULT_LAYERS, int)
        ckpt = spec.get("checkpoint")
        if want_random(spec):
            seed = spec.get("seed", 0, int)
            config = load_hf_config(MimiConfig, ckpt, "mimi") if ckpt else builtin_config(size)
            with seeded(seed):
                model = MimiModel(config)
                _tie_projections(model)
            adapter = cls(model, n, device)
            adapter.calibration_seconds = calibration_option(spec)
            adapter.init_codebooks(seed)
            if extraction_only:
                adapter.keep_encoder_only()
            return adapter
        drop = cls.decoder_modules if extraction_only else ()
        adapter = cls(load_hf_model(MimiModel, MimiConfig, ckpt or HUB, "mimi", drop=drop), n, device)
        adapter.extraction_only = extraction_only
        return adapter

    @property
    def _rvqs(self):
        q = self.model.quantizer
        return q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer

    def _where(self, l: int):
        """(rvq, index inside it) of global layer ``l``."""
        sem, ac = self._rvqs
        return (sem, l) if l < self.n_semantic else (ac, l - self.n_semantic)

    def _encode_one(self, x):
        return self.model.encode(x[:, None], num_quantizers=self.n_layers).audio_codes[0]

    def _latent_one(self, x):
        return self.model.encoder(x[:, None]).latents[0].T

    def _compute_tables(self):
        out = []
        for l in range(self.n_layers):
            rvq, i = self._where(l)
            e = rvq.layers[i].codebook.embed
            out.append(rvq.output_proj(e.T[None])[0].T if rvq.output_proj is not None else e)
        return out

    @torch.no_grad()
    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        if layers is None:
            return self.model.quantizer.decode(codes).transpose(1, 2)
        out = torch.zeros(codes.shape[0], self.dim, codes.shape[2], device=self.device)
        keep = layer_mask(self.n_layers, layers)
        for rvq, lo, hi in ((self._rvqs[0], 0, self.n_semantic), (self._rvqs[1], self.n_semantic, self.n_layers)):
            mine = [l for l in keep if lo <= l < hi]
            if not mine:
                continue
            s = sum(rvq.layers[l - lo].decode(codes[:, l]) for l in mine)
            out = out + (rvq.output_proj(s) if rvq.output_proj is not None else s)
        return out.transpose(1, 2)

    def _decode_quantized(self, q):
        return self.model.decoder(q.transpose(1, 2)).audio_values.squeeze(1)

    def reference_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """transformers' own ``MimiModel.decode``."""
        self.require_full_model("decode")
        with torch.no_grad():
            return self.model.decode(codes.to(self.device)).audio_values.squeeze(1)

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        """random_init: both RVQs quantize the same latent; each one's codebooks are sampled
        from its own projected residual frames of the calibration signal."""
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds or 24.0).to(self.device)
        z = self.model.encoder(x[:, None]).latents  # [1, D, T]
        for j, rvq in enumerate(self._rvqs):
            resid = (rvq.input_proj(z) if rvq.input_proj is not None else z)[0].T

            def layer_fns(vq):
                cb = vq.codebook

                def set_cb(rows):
                    cb.embed_sum.copy_(rows)
                    cb.cluster_usage.fill_(1.0)
                    cb.initialized.fill_(1.0)
                    cb._embed = None  # the model caches embed_sum / usage

                return set_cb, (lambda r: r), (lambda r: vq.decode(vq.encode(r.T[None]))[0].T)

            init_residual_codebooks(resid, [layer_fns(vq) for vq in rvq.layers], self.model.config.codebook_size,
                                    seed + 7919 * j)
        self._table_cache = None


def _tie_projections(model) -> None:
    """random_init: each RVQ's output projection is the transpose of its input projection,
    and both input projections have orthonormal rows spanning complementary subspaces of the
    latent (when they fit: 2 x 256 <= 512 for the released size), so semantic + acoustic
    quantized outputs reconstruct the latent as a trained Mimi's roughly do. Independent
    random projections leave the quantized output unrelated to the latent."""
    q = model.quantizer
    rvqs = [r for r in (q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer)
            if r.input_proj is not None]
    if not rvqs:
        return
    d_code, d_model = rvqs[0].input_proj.weight.shape[:2]
    if d_code * len(rvqs) <= d_model:
        basis, _ = torch.linalg.qr(torch.randn(d_model, d_model))
        parts = [basis[:, i * d_code:(i + 1) * d_code] for i in range(len(rvqs))]
    else:
        parts = [torch.linalg.qr(torch.randn(d_model, d_code))[0] for _ in rvqs]
    with torch.no_grad():
        for rvq, w in zip(rvqs, parts):  # w: [D, d], orthonormal columns
            rvq.input_proj.weight.copy_(w.T[:, :, None])
            rvq.output_proj.weight.copy_(w[:, :, None])

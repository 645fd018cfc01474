"""``dac:16khz`` / ``dac:24khz`` / ``dac:44khz``: Descript Audio Codec via transformers.

DAC's codebooks are factorized: a code indexes a low-dimensional (8-d) codebook,
looked up by cosine similarity, and its vector is then pushed through that layer's
own 1x1 output projection (with bias) into the decoder's space. So a layer's table
is ``out_proj(codebook)``, bias included, and the sum of one row per layer is exactly
``quantizer.from_codes``. A dropped layer contributes neither its vector nor its bias.

Input is zero-padded to a whole number of hops (as DAC's own preprocessing does):
an utterance of N samples has exactly ``ceil(N / hop)`` frames, ``hop`` being the
product of ``downsampling_ratios`` (never the config's ``hop_length``, stale in two
released configs: see :func:`architecture_hop`). Frame rates: 50 Hz
(16 kHz, hop 320), 75 Hz (24 kHz, hop 320), 86.13 Hz (44.1 kHz, hop 512).
"""

from __future__ import annotations

import torch

from ..errors import CodeclensError
from ..spec import Spec
from . import CODECS
from ._hf import (
    calibration_option,
    TorchCodec, calibration_batch, hf_class, check_size, init_residual_codebooks, load_hf_config, load_hf_model, pad_to_hop,
    seeded, variance_preserving_init, want_random,
)
from .base import CodecAdapter, OneLoader

VARIANTS = {
    "16khz": dict(sampling_rate=16000, downsampling_ratios=[2, 4, 5, 8], n_codebooks=12, hub="descript/dac_16khz"),
    "24khz": dict(sampling_rate=24000, downsampling_ratios=[2, 4, 5, 8], n_codebooks=32, hub="descript/dac_24khz"),
    "44khz": dict(sampling_rate=44100, downsampling_ratios=[2, 4, 8, 8], n_codebooks=9, hub="descript/dac_44khz"),
}
DEFAULT_TARGET = "16khz"


def builtin_config(variant: str, size: str):
    DacConfig = hf_class("DacConfig")

    v = dict(VARIANTS[variant])
    v.pop("hub")
    kw = dict(encoder_hidden_size=64, decoder_hidden_size=1536, codebook_size=1024, codebook_dim=8, **v)
    if size == "tiny":
        kw.update(encoder_hidden_size=4, decoder_hidden_size=32)
    return DacConfig(**kw)


@CODECS.register("dac")
class DAC(OneLoader, TorchCodec, CodecAdapter):
    options = ("size", "calibration")

    def __init__(self, model, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        cfg = model.config
        self.sample_rate = int(cfg.sampling_rate)
        self.hop = architecture_hop(cfg)
        self.frame_rate = self.sample_rate / self.hop
        self.n_layers = int(cfg.n_codebooks)
        self.codebook_sizes = [int(cfg.codebook_size)] * self.n_layers

    @classmethod
    def _load(cls, spec: Spec, device: torch.device, extraction_only: bool) -> "DAC":
        DacConfig, DacModel = hf_class("DacConfig"), hf_class("DacModel")

        variant = (spec.target or DEFAULT_TARGET).lower()
        if variant not in VARIANTS:
            raise CodeclensError(f"dac: unknown variant '{spec.target}'; known: {', '.join(VARIANTS)}")
        size = check_size(spec)
        ckpt = spec.get("checkpoint")
        what = f"dac:{variant}"
        if want_random(spec):
            seed = spec.get("seed", 0, int)
            config = load_hf_config(DacConfig, ckpt, what) if ckpt else builtin_config(variant, size)
            _check(config, variant, what)
            with seeded(seed):
                model = DacModel(config)
                _variance_preserving_init(model)
            adapter = cls(model, device)
            adapter.calibration_seconds = calibration_option(spec)
            adapter.init_codebooks(seed)
            if extraction_only:
                adapter.keep_encoder_only()
            return adapter
        drop = cls.decoder_modules if extraction_only else ()
        model = load_hf_model(DacModel, DacConfig, ckpt or VARIANTS[variant]["hub"], what, drop=drop)
        _check(model.config, variant, what)
        adapter = cls(model, device)
        adapter.extraction_only = extraction_only
        return adapter

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(pad_to_hop(x, self.hop)[:, None])

    def _encode_one(self, x):
        return self.model.encode(pad_to_hop(x, self.hop)[:, None]).audio_codes[0]

    def _latent_one(self, x):
        return self._embed(x)[0].T

    def _compute_tables(self):
        return [q.out_proj(q.codebook.weight.T[None])[0].T for q in self.model.quantizer.quantizers]

    @torch.no_grad()
    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        if layers is None:
            return self.model.quantizer.from_codes(codes)[0].transpose(1, 2)
        qs = self.model.quantizer.quantizers
        return self._sum_layers(codes, layers, lambda l, c: qs[l].out_proj(qs[l].codebook(c).transpose(1, 2)))

    def _decode_quantized(self, q):
        return self.model.decoder(q.transpose(1, 2)).squeeze(1)

    def reference_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """transformers' own ``DacModel.decode(audio_codes=...)``."""
        self.require_full_model("decode")
        with torch.no_grad():
            return self.model.decode(audio_codes=codes.to(self.device)).audio_values

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        """random_init: each layer's 8-d codebook is a sample of its input projection of the
        residual encoder frames of the calibration signal."""
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds).to(self.device)
        resid = self._embed(x)[0].T

        def layer_fns(q):
            def set_cb(rows):
                q.codebook.weight.copy_(rows)

            def to_code(r):
                return q.in_proj(r.T[None])[0].T

            return set_cb, to_code, (lambda r: q(r.T[None])[0][0].T)

        init_residual_codebooks(resid, [layer_fns(q) for q in self.model.quantizer.quantizers],
                                self.model.config.codebook_size, seed)
        self._table_cache = None


def architecture_hop(cfg) -> int:
    """Samples per frame: the product of the encoder's strides. The released
    ``descript/dac_16khz`` and ``dac_24khz`` config.json files carry a stale
    ``"hop_length": 512`` (the 44.1 kHz value) although their strides give 320, and
    transformers lets that key override the derived one; the strides are the truth."""
    hop = 1
    for r in cfg.downsampling_ratios:
        hop *= int(r)
    return hop


def _variance_preserving_init(model: torch.nn.Module) -> None:
    """Convolutions: see :func:`variance_preserving_init` (at std 0.02 DAC's latents are ~1e-6)."""
    variance_preserving_init(model)
    # Each quantizer's projections: in_proj has orthonormal rows and out_proj is its
    # transpose, so a layer removes the residual's component in its own random subspace
    # (as a trained DAC roughly learns to). Independent random projections would instead
    # make the residual grow layer after layer.
    for q in model.quantizer.quantizers:
        d_code, d_model = q.in_proj.weight.shape[:2]
        w, _ = torch.linalg.qr(torch.randn(d_model, d_code))  # [D, d], orthonormal columns
        with torch.no_grad():
            q.in_proj.weight.copy_(w.T[:, :, None])
            q.out_proj.weight.copy_(w[:, :, None])


def _check(config, variant: str, what: str) -> None:
    want = VARIANTS[variant]["sampling_rate"]
    if int(config.sampling_rate) != want:
        raise CodeclensError(f"{what}: checkpoint is a {config.sampling_rate} Hz model, not {want} Hz")

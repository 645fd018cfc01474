"""``xcodec:4kbps`` (or 0.5/1/1.5/2 kbps): X-codec via transformers (16 kHz, 50 Hz).

X-codec concatenates a DAC-style acoustic encoding with a projection of a
self-supervised model's features (HuBERT or WavLM), mixes them with a linear layer
and quantizes the result with a plain Euclidean RVQ; the acoustic decoder reads the
RVQ output through another linear layer. Tables are the RVQ codebooks (the space
the quantizer outputs, before that linear read-out), so the sum of one row per layer
is ``quantizer.decode`` exactly, as for EnCodec.

Bandwidth -> layers: 1/2/3/4/8 for 0.5/1/1.5/2/4 kbps (10-bit codes at 50 Hz).
Input is zero-padded to a whole number of hops, so N samples give ``ceil(N / 320)``
frames. Default checkpoint: ``hf-audio/xcodec-hubert-librispeech``; any of the
``hf-audio/xcodec-*`` repositories (or a local save_pretrained copy) loads.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..errors import CodeclensError
from ..spec import Spec
from . import CODECS
from ._hf import (
    calibration_option,
    ema_codebook_setter,
    TorchCodec, calibration_batch, check_size, hf_class, init_residual_codebooks, load_hf_config, load_hf_model,
    pad_to_hop, seeded, variance_preserving_init, want_random,
)
from .base import CodecAdapter

HUB = "hf-audio/xcodec-hubert-librispeech"
DEFAULT_TARGET = "4kbps"


def builtin_config(size: str):
    XcodecConfig = hf_class("XcodecConfig")
    if size == "tiny":
        return XcodecConfig(
            acoustic_model_config=dict(encoder_hidden_size=4, decoder_hidden_size=32, hidden_size=16),
            semantic_model_config=dict(
                model_type="hubert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, conv_dim=[8] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            ),
        )
    return XcodecConfig()


def parse_target(target: str) -> float:
    m = re.fullmatch(r"([0-9.]+)kbps", (target or DEFAULT_TARGET).lower())
    if not m:
        raise CodeclensError(f"xcodec: bad target '{target}'; expected e.g. xcodec:4kbps")
    return float(m.group(1))


#: Frame-centre offsets of the two halves (s). The acoustic (DAC) half is centred; the
#: semantic half's HuBERT/WavLM frame k sees samples [320k - 160, 320k + 240) of the input
#: (padded by hop/2 = 160 each side, 400-sample receptive field, stride 320), centred at
#: 320k + 40: 120 samples = 7.5 ms before the nominal centre 320k + 160. Measured in tests.
HALF_OFFSETS = {"acoustic": 0.0, "semantic": -0.0075}


@CODECS.register("xcodec")
class XCodec(TorchCodec, CodecAdapter):
    options = ("size", "calibration")
    #: A frame mixes both halves: its centre is taken midway between theirs.
    frame_offset = 0.5 * (HALF_OFFSETS["acoustic"] + HALF_OFFSETS["semantic"])

    def __init__(self, model, bandwidth: float, device: torch.device):
        cfg = model.config
        if bandwidth not in [float(b) for b in cfg.target_bandwidths]:
            raise CodeclensError(f"xcodec: bandwidth {bandwidth:g} kbps not one of {list(cfg.target_bandwidths)}")
        self.model = model.to(device).eval()
        self.device = device
        self.bandwidth = bandwidth
        self.sample_rate = int(cfg.sample_rate)
        self.hop = int(cfg.hop_length)
        self.frame_rate = self.sample_rate / self.hop
        self.n_layers = int(model.quantizer.get_num_quantizers_for_bandwidth(bandwidth))
        self.codebook_sizes = [int(cfg.codebook_size)] * self.n_layers

    @classmethod
    def from_spec(cls, spec: Spec, device: torch.device) -> "XCodec":
        XcodecConfig, XcodecModel = hf_class("XcodecConfig"), hf_class("XcodecModel")
        bw = parse_target(spec.target)
        size = check_size(spec)
        ckpt = spec.get("checkpoint")
        if want_random(spec):
            seed = spec.get("seed", 0, int)
            config = load_hf_config(XcodecConfig, ckpt, "xcodec") if ckpt else builtin_config(size)
            with seeded(seed):
                model = XcodecModel(config)
                _variance_preserving_init(model)
            adapter = cls(model, bw, device)
            adapter.calibration_seconds = calibration_option(spec)
            adapter.balance_branches(seed)
            adapter.init_codebooks(seed)
            return adapter
        return cls(load_hf_model(XcodecModel, XcodecConfig, ckpt or HUB, "xcodec"), bw, device)

    def halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(acoustic, semantic)`` encoder outputs ``[B, D_a, T]``, ``[B, D_s, T]`` of ``x [B, N]``,
        computed as ``XcodecModel.encode`` does before concatenating them."""
        m = self.model
        x = pad_to_hop(x, self.hop)[:, None]
        sem = m.encoder_semantic(m._extract_semantic_features(x).transpose(1, 2))
        if m._get_conv1d_output_lengths(x.shape[2], m.acoustic_encoder) != sem.shape[2]:
            ac = m.acoustic_encoder(F.pad(x, (m.pad, m.pad)))
        else:
            ac = m.acoustic_encoder(x)
        return ac, sem

    def semantic_frames(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, C]`` output of the self-supervised model's convolutional feature encoder on
        the padded input, as ``_extract_semantic_features`` pads it: what fixes the
        semantic half's timing (its transformer then mixes frames)."""
        m = self.model
        x = F.pad(pad_to_hop(x, self.hop), (m.pad, m.pad))
        return m.semantic_model.feature_extractor(x)[0].T

    def describe(self):
        return {**super().describe(), "frame_offset_halves_s": dict(HALF_OFFSETS)}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The RVQ input ``[B, D, T]``, computed as ``XcodecModel.encode`` does before quantizing."""
        emb = torch.cat(self.halves(x), dim=1)
        return self.model.fc(emb.transpose(1, 2)).transpose(1, 2)

    def _encode_one(self, x):
        return self.model.encode(pad_to_hop(x, self.hop)[:, None], bandwidth=self.bandwidth).audio_codes[0]

    def _latent_one(self, x):
        return self._embed(x)[0].T

    def _compute_tables(self):
        return [q.codebook.embed for q in self.model.quantizer.quantizers[: self.n_layers]]

    @torch.no_grad()
    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        if layers is None:
            return self.model.quantizer.decode(codes.transpose(0, 1)).transpose(1, 2)
        return self._sum_layers(codes, layers, lambda l, c: self.model.quantizer.quantizers[l].decode(c))

    def _decode_quantized(self, q):
        return self.model.acoustic_decoder(self.model.fc2(q).transpose(1, 2)).squeeze(1)

    def reference_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """transformers' own ``XcodecModel.decode``."""
        with torch.no_grad():
            return self.model.decode(codes.to(self.device)).audio_values.squeeze(1)

    @torch.no_grad()
    def balance_branches(self, seed: int) -> None:
        """random_init: give the acoustic half the semantic half's RMS on the calibration signal
        (scaling the acoustic encoder's output convolution), and the decoder output the input's
        RMS (scaling its last convolution), so neither half dominates the mixed latent and
        decodes are at the input's level."""
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds).to(self.device)
        ac, sem = self.halves(x)
        out_conv = self.model.acoustic_encoder.conv2
        out_conv.weight.mul_(_rms(sem) / _rms(ac))
        if out_conv.bias is not None:
            out_conv.bias.mul_(_rms(sem) / _rms(ac))
        last = [m for m in self.model.acoustic_decoder.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))][-1]
        y = self._decode_quantized(self._embed(x).transpose(1, 2))
        last.weight.mul_(_rms(x) / _rms(y))
        if last.bias is not None:
            last.bias.mul_(_rms(x) / _rms(y))

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds).to(self.device)
        resid = self._embed(x)[0].T

        def layer_fns(vq):
            return ema_codebook_setter(vq.codebook), (lambda r: r), (lambda r: vq.decode(vq.encode(r.T[None]))[0].T)

        init_residual_codebooks(resid, [layer_fns(q) for q in self.model.quantizer.quantizers],
                                self.model.config.codebook_size, seed)
        self._table_cache = None


def _variance_preserving_init(model) -> None:
    """At transformers' std-0.02 init the acoustic (DAC) branch's output is ~2000x smaller
    than the semantic branch's (RMS ~0.006 vs ~12 on speech-like input, full size), so the
    random control would be "random HuBERT only". Every convolution and linear layer outside
    the self-supervised model gets the variance-preserving init DAC's control has; the
    self-supervised model (layer-normed transformer) keeps its own init."""
    variance_preserving_init(model.acoustic_encoder, model.acoustic_decoder, model.encoder_semantic,
                             model.decoder_semantic, model.fc, model.fc1, model.fc2)


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt().clamp(min=1e-12))

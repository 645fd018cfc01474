"""BigCodec's network (Xin et al. 2024), written against the module layout of the
authors' release so that its checkpoint loads as it is.

Parameter names follow the release's ``vq.codec_encoder.CodecEncoder`` and
``vq.codec_decoder.CodecDecoder`` exactly (``block.N...`` / ``model.N...`` /
``quantizer.layers.0...``), including the alias-free activations' filter buffers, so a
state dict of either loads strictly. Weight norm uses ``torch.nn.utils.parametrizations``;
the release's ``weight_g`` / ``weight_v`` keys (old ``torch.nn.utils.weight_norm``)
are converted by torch's own load hook.

The computation is the release's: SnakeBeta activations (log-scale alpha, beta)
wrapped in 2x anti-aliased resampling (Kaiser-windowed sinc, 12 taps), residual units
with dilations 1/3/9, strided convolutions of kernel ``2 * stride``, a unidirectional
2-layer LSTM with a skip connection, and one factorized VQ (cosine lookup in an 8-d
codebook, then a linear ``out_proj`` to the 1024-d latent).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


@dataclasses.dataclass(frozen=True)
class BigCodecConfig:
    """Architecture of a BigCodec model (the release's ``config/model/default.yaml``)."""

    ngf: int = 48
    """Channels after the encoder's first convolution (doubled by each encoder block)."""
    up_ratios: tuple[int, ...] = (2, 2, 2, 5, 5)
    """Encoder strides, in order (the decoder uses them reversed); their product is the hop."""
    dilations: tuple[int, ...] = (1, 3, 9)
    """Dilations of the residual units of every block."""
    latent_dim: int = 1024
    """Encoder output channels = the quantizer's and decoder's input dimension."""
    decoder_channels: int = 1536
    """Channels of the decoder's first convolution (``upsample_initial_channel``)."""
    rnn_num_layers: int = 2
    """Layers of the encoder's and decoder's (unidirectional) LSTM."""
    codebook_size: int = 8192
    """Codes of the single VQ layer."""
    codebook_dim: int = 8
    """Dimension of the factorized codebook (looked up by cosine similarity)."""
    sample_rate: int = 16000
    """Audio sample rate in Hz."""

    def __post_init__(self):
        object.__setattr__(self, "up_ratios", tuple(int(r) for r in self.up_ratios))
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        for name in ("ngf", "latent_dim", "decoder_channels", "rnn_num_layers", "codebook_size", "codebook_dim", "sample_rate"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"BigCodec config: {name} must be > 0 (got {getattr(self, name)})")
        if not self.up_ratios or min(self.up_ratios) <= 0:
            raise ValueError(f"BigCodec config: up_ratios must be positive strides (got {self.up_ratios})")
        if self.decoder_channels % 2 ** len(self.up_ratios):
            raise ValueError("BigCodec config: decoder_channels must halve evenly through every decoder block")

    @property
    def hop(self) -> int:
        return math.prod(self.up_ratios)

    @classmethod
    def from_dict(cls, d: dict) -> "BigCodecConfig":
        """Our flat form (``to_dict``), or the release's model config (``codec_encoder`` and
        ``codec_decoder`` sections of ``config/model/default.yaml``, as JSON)."""
        if "codec_encoder" in d or "codec_decoder" in d:
            return cls.from_release(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"_source"})
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_release(cls, d: dict) -> "BigCodecConfig":
        """The release's two sections; settings this network does not implement (a
        bidirectional LSTM, no LSTM, several VQ layers) and encoder/decoder disagreements
        are errors rather than silently another model."""
        enc, dec = d.get("codec_encoder") or {}, d.get("codec_decoder") or {}
        need = {"use_rnn": True, "rnn_bidirectional": False}
        for section, vals in (("codec_encoder", enc), ("codec_decoder", dec)):
            for k, want in need.items():
                if vals.get(k, want) != want:
                    raise ValueError(f"{section}.{k}={vals[k]!r} is not supported (the release uses {want!r})")
        if dec.get("vq_num_quantizers", 1) != 1:
            raise ValueError(f"codec_decoder.vq_num_quantizers={dec['vq_num_quantizers']} is not supported (the release has 1)")
        up = tuple(enc.get("up_ratios", cls.up_ratios))
        pairs = [("up_ratios reversed", tuple(reversed(up)), tuple(dec.get("up_ratios", tuple(reversed(up))))),
                 ("latent dim", enc.get("out_channels", 1024), dec.get("in_channels", enc.get("out_channels", 1024))),
                 ("vq dim", enc.get("out_channels", 1024), dec.get("vq_dim", enc.get("out_channels", 1024))),
                 ("dilations", tuple(enc.get("dilations", cls.dilations)), tuple(dec.get("dilations", enc.get("dilations", cls.dilations)))),
                 ("LSTM layers", enc.get("rnn_num_layers", 2), dec.get("rnn_num_layers", enc.get("rnn_num_layers", 2)))]
        for what, a, b in pairs:
            if _as_tuple(a) != _as_tuple(b):
                raise ValueError(f"encoder and decoder disagree on {what} ({a} vs {b})")
        return cls(ngf=enc.get("ngf", cls.ngf), up_ratios=up, dilations=tuple(enc.get("dilations", cls.dilations)),
                   latent_dim=enc.get("out_channels", cls.latent_dim),
                   decoder_channels=dec.get("upsample_initial_channel", cls.decoder_channels),
                   rnn_num_layers=enc.get("rnn_num_layers", cls.rnn_num_layers),
                   codebook_size=dec.get("codebook_size", cls.codebook_size),
                   codebook_dim=dec.get("codebook_dim", cls.codebook_dim),
                   sample_rate=d.get("sample_rate", cls.sample_rate))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _as_tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _wn_conv(*args, **kwargs) -> nn.Module:
    return weight_norm(nn.Conv1d(*args, **kwargs))


def _kaiser_sinc(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """``[1, 1, taps]`` low-pass filter (Kaiser window design), normalised to unit DC gain."""
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, beta=beta, periodic=False)
    t = torch.arange(-half, half) + 0.5 if taps % 2 == 0 else torch.arange(taps) - half
    h = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (h / h.sum()).view(1, 1, taps)


class LowPassFilter1d(nn.Module):
    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int = 12):
        super().__init__()
        self.stride = stride
        self.pads = (kernel_size // 2 - int(kernel_size % 2 == 0), kernel_size // 2)
        self.register_buffer("filter", _kaiser_sinc(cutoff, half_width, kernel_size))

    def forward(self, x):
        x = F.pad(x, self.pads, mode="replicate")
        return F.conv1d(x, self.filter.expand(x.shape[1], -1, -1), stride=self.stride, groups=x.shape[1])


class UpSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop = (self.pad * ratio + (kernel_size - ratio) // 2, self.pad * ratio + (kernel_size - ratio + 1) // 2)
        self.register_buffer("filter", _kaiser_sinc(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x):
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(x.shape[1], -1, -1), stride=self.ratio, groups=x.shape[1])
        return x[..., self.crop[0]: x.shape[-1] - self.crop[1]]


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x):
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """``x + sin^2(a x) / b`` per channel, ``a = exp(alpha)``, ``b = exp(beta)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        a = self.alpha.exp()[None, :, None]
        b = self.beta.exp()[None, :, None]
        return x + torch.sin(x * a).pow(2) / (b + 1e-9)


class Activation1d(nn.Module):
    """SnakeBeta at twice the rate (upsample, activate, low-pass and decimate)."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = SnakeBeta(channels)
        self.upsample = UpSample1d(2, 12)
        self.downsample = DownSample1d(2, 12)

    def forward(self, x):
        return self.downsample(self.act(self.upsample(x)))


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Activation1d(dim), _wn_conv(dim, dim, 7, dilation=dilation, padding=3 * dilation),
            Activation1d(dim), _wn_conv(dim, dim, 1),
        )

    def forward(self, x):
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Residual units at ``dim // 2`` channels, then a strided convolution to ``dim``."""

    def __init__(self, dim: int, stride: int, dilations):
        super().__init__()
        self.block = nn.Sequential(
            *[ResidualUnit(dim // 2, d) for d in dilations], Activation1d(dim // 2),
            _wn_conv(dim // 2, dim, 2 * stride, stride=stride, padding=stride // 2 + stride % 2),
        )

    def forward(self, x):
        return self.block(x)


class DecoderBlock(nn.Module):
    """A transposed convolution upsampling by ``stride``, then residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, dilations):
        super().__init__()
        up = nn.ConvTranspose1d(in_dim, out_dim, 2 * stride, stride=stride, padding=stride // 2 + stride % 2,
                                output_padding=stride % 2)
        self.block = nn.Sequential(Activation1d(in_dim), weight_norm(up), *[ResidualUnit(out_dim, d) for d in dilations])

    def forward(self, x):
        return self.block(x)


class ResLSTM(nn.Module):
    """Unidirectional LSTM over time with a skip connection, on ``[B, C, T]``."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers, batch_first=True)

    def forward(self, x):
        y = x.transpose(1, 2)
        return (self.lstm(y)[0] + y).transpose(1, 2)


class CodecEncoder(nn.Module):
    """Waveform ``[B, 1, N]`` -> latent ``[B, latent_dim, N / hop]`` (N a multiple of the hop)."""

    def __init__(self, cfg: BigCodecConfig):
        super().__init__()
        layers: list[nn.Module] = [_wn_conv(1, cfg.ngf, 7, padding=3)]
        d = cfg.ngf
        for stride in cfg.up_ratios:
            d *= 2
            layers.append(EncoderBlock(d, stride, cfg.dilations))
        layers += [ResLSTM(d, cfg.rnn_num_layers), Activation1d(d), _wn_conv(d, cfg.latent_dim, 3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return self.block(x)


class FactorizedVQ(nn.Module):
    """One factorized VQ layer: ``in_proj`` to the 8-d code space, nearest code by cosine
    similarity, its (unnormalised) codebook row back through ``out_proj``."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.in_proj = weight_norm(nn.Linear(dim, codebook_dim))
        self.out_proj = weight_norm(nn.Linear(codebook_dim, dim))
        self._codebook = nn.Embedding(codebook_size, codebook_dim)

    @property
    def codebook(self) -> nn.Embedding:
        return self._codebook

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """``z [B, D, T]`` -> codes ``[B, T]``."""
        e = F.normalize(self.in_proj(z.transpose(1, 2)), dim=-1)
        cb = F.normalize(self.codebook.weight, dim=-1)
        # Euclidean distance between unit vectors, in the release's form (so near-ties
        # round the same way): the nearest is the most cosine-similar code.
        dist = e.pow(2).sum(-1, keepdim=True) - 2 * e @ cb.T + cb.pow(2).sum(-1)
        return (-dist).argmax(-1)

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, T]`` -> ``[B, T, D]``."""
        return self.out_proj(self.codebook(codes))

    def forward(self, z):
        codes = self.encode(z)
        return self.vq2emb(codes).transpose(1, 2), codes


class ResidualVQ(nn.Module):
    def __init__(self, n_layers: int, dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([FactorizedVQ(dim, codebook_size, codebook_dim) for _ in range(n_layers)])

    def forward(self, z):
        """``z [B, D, T]`` -> (quantized ``[B, D, T]``, codes ``[n_q, B, T]``), residual by residual."""
        out, codes = torch.zeros_like(z), []
        for layer in self.layers:
            q, c = layer(z - out)
            out = out + q
            codes.append(c)
        return out, torch.stack(codes)

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, T, n_q]`` -> ``[B, T, D]`` (sum over layers)."""
        return sum(layer.vq2emb(codes[..., i]) for i, layer in enumerate(self.layers))


class CodecDecoder(nn.Module):
    """Owns the quantizer (``forward(z, vq=True)``) and the synthesis network
    (``forward(q [B, D, T], vq=False)`` -> waveform ``[B, 1, T * hop]``)."""

    def __init__(self, cfg: BigCodecConfig):
        super().__init__()
        self.quantizer = ResidualVQ(1, cfg.latent_dim, cfg.codebook_size, cfg.codebook_dim)
        ch = cfg.decoder_channels
        layers: list[nn.Module] = [_wn_conv(cfg.latent_dim, ch, 7, padding=3), ResLSTM(ch, cfg.rnn_num_layers)]
        for i, stride in enumerate(reversed(cfg.up_ratios)):
            layers.append(DecoderBlock(ch // 2 ** i, ch // 2 ** (i + 1), stride, cfg.dilations))
        out = ch // 2 ** len(cfg.up_ratios)
        layers += [Activation1d(out), _wn_conv(out, 1, 7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.vq2emb(codes)

    def forward(self, x, vq: bool = True):
        if vq:
            q, codes = self.quantizer(x)
            return q, codes, torch.zeros(x.shape[0], device=x.device)
        return self.model(x)


class BigCodecModel(nn.Module):
    """Encoder and decoder of one BigCodec (the release's ``CodecEnc`` and ``generator``)."""

    def __init__(self, cfg: BigCodecConfig):
        super().__init__()
        self.config = cfg
        self.encoder = CodecEncoder(cfg)
        self.decoder = CodecDecoder(cfg)

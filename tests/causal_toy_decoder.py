"""A torch-decoder version of ``causal_toy.PitchSpectrumCodec`` for activation patching: the same
roles (layer 1 spectral tilt, layer 3 pitch, layers 2 and 4 ignored), computed by a decoder made
of named blocks whose wiring is known:

    q ─┬─ spectrum (reads layer 1's part of q) ─┐
       └─ pitch    (reads layer 3's part of q) ─┴─ merge ── upsample ── synth ── out

``spectrum`` and ``pitch`` are parallel paths; ``merge`` is where they join, so every block from
``merge`` on carries both. ``upsample`` changes the time axis (frames -> samples), so a frame
window must be mapped to each block's own length.

Tables are one-hot in a 32-d space (layer l's code c is unit vector 8l + c), so the quantized
sum holds every layer's code separately and a dropped layer's part is zero; the 1x1
convolutions map a one-hot code to its value and a zero part to the default (150 Hz; tilt 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from codeclens.codecs.base import CodecAdapter, layer_mask

K, L, HOP, SR = 8, 4, 320, 16000


def _code_value(first: int, values: torch.Tensor, default: float) -> nn.Conv1d:
    """1x1 conv: one-hot code c of the layer at dims first..first+K -> values[c]; zeros -> default."""
    conv = nn.Conv1d(K, 1, 1)
    with torch.no_grad():
        conv.weight.copy_((values - default).view(1, K, 1))
        conv.bias.fill_(default)
    conv.first = first
    return conv


class _Path(nn.Module):
    def __init__(self, first: int, values: torch.Tensor, default: float):
        super().__init__()
        self.first = first
        self.conv = _code_value(first, values, default)

    def forward(self, q):
        return self.conv(q[:, self.first:self.first + K])


class _Merge(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Conv1d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(torch.eye(2)[..., None])

    def forward(self, tilt, f0):
        return self.mix(torch.cat([tilt, f0], 1))


class _Upsample(nn.Module):
    def forward(self, x):
        return x.repeat_interleave(HOP, dim=-1)


class _Synth(nn.Module):
    """Harmonics up to 4 kHz of the per-sample F0, amplitude (f / 100 Hz) ** -tilt."""

    def forward(self, x):
        tilt, f0 = x[:, :1], x[:, 1:]
        phase = torch.cumsum(2 * math.pi * f0 / SR, dim=-1) - 2 * math.pi * f0 / SR
        h = torch.arange(1, 41, dtype=x.dtype).view(1, -1, 1)
        freq = h * f0
        amp = torch.where(freq <= 4000.0, (freq / 100.0) ** -tilt, torch.zeros_like(freq))
        return 0.05 * (amp * torch.sin(h * phase)).sum(1, keepdim=True)


class ToyDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        c = torch.arange(K, dtype=torch.float32)
        self.spectrum = _Path(0 * K, 0.3 + 0.25 * c, 1.0)
        self.pitch = _Path(2 * K, 100.0 + 20.0 * c, 150.0)
        self.merge = _Merge()
        self.upsample = _Upsample()
        self.synth = _Synth()
        self.out = nn.Conv1d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.out.weight.fill_(1.0)

    def forward(self, q):  # q [B, D, T]
        return self.out(self.synth(self.upsample(self.merge(self.spectrum(q), self.pitch(q)))))[:, 0]


class BlockPitchSpectrumCodec(CodecAdapter):
    sample_rate = SR
    frame_rate = SR / HOP
    n_layers = L
    codebook_sizes = [K] * L

    @classmethod
    def from_spec(cls, spec, device):
        self = cls()
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.decoder = ToyDecoder().to(self.device).eval()
        eye = torch.eye(K * L)
        self._tables = [eye[l * K:(l + 1) * K] for l in range(L)]
        return self

    def tables(self):
        return self._tables

    def encode(self, waves, lengths):
        n = (lengths + HOP - 1) // HOP
        return torch.zeros(waves.shape[0], L, int(n.max()), dtype=torch.long), n

    def quantized(self, codes, layers=None):
        return self.lookup(codes.to(self.device), layer_mask(L, layers))

    @torch.no_grad()
    def decode_quantized(self, q):
        return self.decoder(q.transpose(1, 2))

    def decode(self, codes, layers=None):
        return self.decode_quantized(self.quantized(codes, layers))

    def decoder_blocks(self):
        """Every block, parameterless ones included (the default discovery keeps only blocks
        with parameters: here spectrum, pitch, merge and out)."""
        return list(self.decoder.named_children())

"""A complete example codec plug-in for codeclens: ``python:toy_codec:ToyCodec``.

It is deliberately small, but real: 16 kHz audio is cut into blocks of 160 samples
(100 Hz frames), each block is projected onto ``dim`` orthonormal directions, and the
projections are residual-vector-quantized. Decoding maps the quantized vectors back
through the same directions. Use it with examples/ on the Python path::

    PYTHONPATH=examples codeclens extract --corpus DIR --out STORE \\
        --codec 'python:toy_codec:ToyCodec?random_init=1&layers=4'

See docs/plugins.md for the contract this class implements.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codeclens.codecs.base import CodecAdapter, layer_mask
from codeclens.codecs.calibration import calibration_audio, sample_rows
from codeclens.errors import CodeclensError
from codeclens.spec import Spec

HOP = 160
SAMPLE_RATE = 16000


class ToyCodec(CodecAdapter):
    # Spec options of this codec, besides the common checkpoint/random_init/seed/device.
    options = ("layers", "codebook_size", "dim")

    def __init__(self, basis: torch.Tensor, codebooks: torch.Tensor, device: torch.device):
        self.device = device
        self.basis = basis.float().to(device)  # [dim, HOP], orthonormal rows
        self.codebooks = codebooks.float().to(device)  # [L, K, dim]
        self.sample_rate = SAMPLE_RATE
        self.frame_rate = SAMPLE_RATE / HOP
        self.n_layers = int(codebooks.shape[0])
        self.codebook_sizes = [int(codebooks.shape[1])] * self.n_layers

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Spec, device: torch.device) -> "ToyCodec":
        if spec.get("checkpoint"):
            return cls.load(spec.get("checkpoint"), device)
        if not spec.get("random_init", False, bool):
            raise CodeclensError("toy codec needs checkpoint=DIR or random_init=1")
        seed = spec.get("seed", 0, int)
        layers = spec.get("layers", 4, int)
        k = spec.get("codebook_size", 64, int)
        dim = spec.get("dim", 16, int)
        if not (1 <= layers and 2 <= k and 1 <= dim <= HOP):
            raise CodeclensError(f"toy codec: need layers >= 1, codebook_size >= 2, 1 <= dim <= {HOP}")
        g = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(HOP, dim, generator=g))[0].T.contiguous()
        # Codebooks from residual frames of the built-in calibration signal, layer by layer.
        audio = torch.from_numpy(calibration_audio(SAMPLE_RATE, 4.0, seed))
        resid = _blocks(audio[None], basis)[0]
        books = []
        for l in range(layers):
            c = sample_rows(resid, k, seed * 100 + l)
            resid = resid - c[torch.cdist(resid, c).argmin(1)]
            books.append(c)
        return cls(basis, torch.stack(books), device)

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> "ToyCodec":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "toy.safetensors").is_file():
            raise CodeclensError(f"toy codec: no toy.safetensors in '{path}'")
        t = load_file(str(path / "toy.safetensors"))
        return cls(t["basis"], t["codebooks"], device)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"basis": self.basis.cpu().contiguous(), "codebooks": self.codebooks.cpu().contiguous()},
                  str(path / "toy.safetensors"))
        (path / "toy.json").write_text(json.dumps({"hop": HOP, "sample_rate": SAMPLE_RATE}) + "\n")
        return path

    # -- the contract -------------------------------------------------------------

    def tables(self) -> list[torch.Tensor]:
        return list(self.codebooks.unbind(0))

    def latent(self, waves, lengths):
        n = torch.div(lengths + HOP - 1, HOP, rounding_mode="floor")
        z = _blocks(_zero_past(waves.to(self.device), lengths), self.basis)
        return z, n.to(self.device)

    def encode(self, waves, lengths):
        z, n = self.latent(waves, lengths)
        b, t, d = z.shape
        resid = z.reshape(b * t, d)
        codes = []
        for l in range(self.n_layers):
            c = torch.cdist(resid, self.codebooks[l]).argmin(1)
            resid = resid - self.codebooks[l][c]
            codes.append(c.reshape(b, t))
        return torch.stack(codes, 1), n

    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        out = torch.zeros(codes.shape[0], codes.shape[2], self.basis.shape[0], device=self.device)
        for l in layer_mask(self.n_layers, layers):
            out = out + self.codebooks[l][codes[:, l]]
        return out

    def decode(self, codes, layers=None):
        q = self.quantized(codes, layers)  # [B, T, dim]
        return (q @ self.basis).reshape(q.shape[0], -1)


def _zero_past(waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Samples past each item's length are zero, whatever the caller padded with."""
    idx = torch.arange(waves.shape[1], device=waves.device)
    return waves * (idx[None] < lengths.to(waves.device)[:, None])


def _blocks(waves: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` -> ``[B, ceil(N / HOP), dim]``: each block projected onto the basis."""
    extra = (-waves.shape[1]) % HOP
    x = torch.nn.functional.pad(waves, (0, extra)).float()
    return x.reshape(x.shape[0], -1, HOP) @ basis.T.to(x.device)

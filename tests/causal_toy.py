"""Test fixtures for the causal analysis: a codec and a token consumer with known causal structure.

``PitchSpectrumCodec``: 4 layers of 8 codes at 50 Hz, 16 kHz. Its decoder makes a harmonic tone
per frame whose F0 is set by layer 3 (100 + 20 * code Hz) and whose spectral tilt by layer 1
(code 0: bright ... code 7: dull; the envelope is a function of frequency, so it does
not move with the pitch); layers 2 and 4 are ignored. A dropped layer falls back to a
fixed default (150 Hz; medium tilt), so dropping it "contributes nothing" of its own.

``FirstLayerConsumer``: an utterance classifier that reads only layer 1's codes.
"""

from __future__ import annotations

import numpy as np
import torch

from codeclens.codecs.base import CodecAdapter, layer_mask


class PitchSpectrumCodec(CodecAdapter):
    sample_rate = 16000
    frame_rate = 50.0
    n_layers = 4
    codebook_sizes = [8, 8, 8, 8]
    HOP = 320

    @classmethod
    def from_spec(cls, spec, device):
        self = cls()
        self.device = device
        self._tables = [torch.eye(8, 4) * (l + 1) for l in range(4)]
        return self

    def tables(self):
        return self._tables

    def encode(self, waves, lengths):
        n = (lengths + self.HOP - 1) // self.HOP
        T = int(n.max())
        return torch.zeros(waves.shape[0], 4, T, dtype=torch.long), n

    def quantized(self, codes, layers=None):
        return self.lookup(codes, layers)

    def decode(self, codes, layers=None):
        present = set(layer_mask(4, layers))
        B, _, T = codes.shape
        t = np.arange(self.HOP) / self.sample_rate
        out = np.zeros((B, T * self.HOP), np.float32)
        for b in range(B):
            phase = 0.0
            for i in range(T):
                f0 = 100.0 + 20.0 * float(codes[b, 2, i]) if 2 in present else 150.0
                tilt = 0.3 + 0.25 * float(codes[b, 0, i]) if 0 in present else 1.0
                # harmonics up to 4 kHz, amplitude a function of frequency (not of harmonic number),
                # so the spectral envelope is the same whatever the pitch
                seg = sum(((h * f0 / 100.0) ** -tilt) * np.sin(h * (phase + 2 * np.pi * f0 * t))
                          for h in range(1, int(4000 // f0) + 1))
                out[b, i * self.HOP:(i + 1) * self.HOP] = 0.05 * seg
                phase += 2 * np.pi * f0 * self.HOP / self.sample_rate
        return torch.from_numpy(out)


class FirstLayerConsumer:
    """log p(class | codes) from the histogram of layer 1's codes only."""

    groups = None

    def __init__(self, store, classes: str = "4"):
        self.name = "first-layer"
        self.k = int(classes)
        rng = np.random.default_rng(0)
        self.W = rng.normal(size=(9, self.k))  # row 8: the dropped code

    def score(self, codes, lengths):
        out = []
        for c, n in zip(codes, lengths):
            c0 = np.where(c[: int(n), 0] < 0, 8, c[: int(n), 0])
            z = np.bincount(c0, minlength=9) / max(int(n), 1) @ self.W * 5
            out.append(z - np.log(np.exp(z).sum()))
        return np.array(out)

"""A toy codec with a vector-level decoder and a real encoder, for dose-response, SAE steering and
the interchange's re-encoded measures (accent classifier, phone probe).

``VectorToyCodec``: 4 layers of 8 codes at 50 Hz, 16 kHz; layer l's table maps code c to
(c + 1) e_l, so the quantized sum holds each layer's value x_l in its own dimension (0 when
the layer is dropped). ``decode_quantized(q)`` makes a phase-continuous harmonic tone per frame
with F0 = 80 + 20 x_3 Hz (layer 3: pitch) and spectral tilt 0.05 + 0.25 x_1 (layer 1:
spectrum); dimensions 2 and 4 are ignored. ``decode(codes, layers)`` is exactly
``decode_quantized(quantized(codes, layers))``, so a token swap and a vector interpolation at
α = 1 give the same audio. ``encode`` inverts the decoder frame by frame: least squares on the
harmonics of each candidate code's F0 (the highest F0 that explains the frame, so a
sub-harmonic cannot win), the tilt from the log-amplitudes of the fitted harmonics; layers 2
and 4 come back as code 0.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from codeclens.codecs.base import CodecAdapter

HOP = 320
SR = 16000
F0S = 100.0 + 20.0 * np.arange(8)


def f0_of(x3):
    return np.maximum(80.0 + 20.0 * x3, 40.0)


def tilt_of(x1):
    return 0.05 + 0.25 * x1


def render(f0: np.ndarray, tilt: np.ndarray) -> np.ndarray:
    """``[T]`` per-frame F0 and tilt -> audio; harmonics below 4 kHz with amplitude
    0.05 (h f0 / 100)^-tilt (a function of frequency, so the envelope does not move with F0)."""
    f = np.repeat(f0, HOP)
    ti = np.repeat(tilt, HOP)
    phase = 2 * np.pi * np.concatenate([[0.0], np.cumsum(f)[:-1]]) / SR
    out = np.zeros(len(f))
    for h in range(1, int(4000 // 40) + 1):
        on = h * f <= 4000
        if not on.any():
            break
        out[on] += (h * f[on] / 100.0) ** -ti[on] * np.sin(h * phase[on])
    return (0.05 * out).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _fit(f0: float) -> tuple[np.ndarray, np.ndarray]:
    """(basis [HOP, 2H], its pseudo-inverse) of the harmonics of ``f0`` below 4 kHz."""
    t = np.arange(HOP) / SR
    hs = np.arange(1, int(4000 // f0) + 1)
    B = np.concatenate([np.sin(2 * np.pi * np.outer(t, hs * f0)), np.cos(2 * np.pi * np.outer(t, hs * f0))], axis=1)
    return B, np.linalg.pinv(B)


def analyse(audio: np.ndarray) -> np.ndarray:
    """``[T, 4]`` codes of ``audio`` (frames of HOP samples)."""
    from threadpoolctl import threadpool_limits

    # small matrix products: a BLAS thread pool only contends with the other tests for the cores
    with threadpool_limits(1):
        return _analyse(audio)


def _analyse(audio: np.ndarray) -> np.ndarray:
    T = len(audio) // HOP
    frames = np.asarray(audio[: T * HOP], np.float64).reshape(T, HOP)
    energy = (frames ** 2).sum(1) + 1e-20
    fits = []
    for f0 in F0S:
        B, pinv = _fit(float(f0))
        coef = pinv @ frames.T
        res = ((frames.T - B @ coef) ** 2).sum(0) / energy
        fits.append((res, coef))
    res = np.stack([r for r, _ in fits])  # [8, T]
    codes = np.zeros((T, 4), np.int64)
    for i in range(T):
        good = np.flatnonzero(res[:, i] < 1e-3)
        c = int(good.max()) if len(good) else int(np.argmin(res[:, i]))
        coef = fits[c][1][:, i]
        H = len(coef) // 2
        amp = np.hypot(coef[:H], coef[H:])
        x = np.log(np.arange(1, H + 1) * F0S[c] / 100.0)
        y = np.log(np.maximum(amp, 1e-12) / 0.05)
        tilt = -float(x @ y) / max(float(x @ x), 1e-12)
        codes[i, 2] = c
        codes[i, 0] = int(np.clip(round((tilt - 0.05) / 0.25) - 1, 0, 7))
    return codes


class VectorToyCodec(CodecAdapter):
    sample_rate = SR
    frame_rate = 50.0
    n_layers = 4
    codebook_sizes = [8, 8, 8, 8]

    @classmethod
    def from_spec(cls, spec, device):
        self = cls()
        self.device = device
        self._tables = [torch.tensor(table(l)) for l in range(4)]
        return self

    def tables(self):
        return self._tables

    def encode(self, waves, lengths):
        out = [analyse(w[: int(n)].cpu().numpy()) for w, n in zip(waves, lengths)]
        T = max(len(c) for c in out)
        codes = torch.zeros(len(out), 4, T, dtype=torch.long)
        for b, c in enumerate(out):
            codes[b, :, : len(c)] = torch.from_numpy(c.T)
        return codes, torch.tensor([len(c) for c in out])

    def quantized(self, codes, layers=None):
        return self.lookup(codes, layers)

    def decode_quantized(self, q):
        q = q.detach().cpu().numpy()
        return torch.from_numpy(np.stack([render(f0_of(x[:, 2]), tilt_of(x[:, 0])) for x in q]))

    def decode(self, codes, layers=None):
        return self.decode_quantized(self.quantized(codes, layers))


def table(l: int) -> np.ndarray:
    t = np.zeros((8, 4), np.float32)
    t[:, l] = np.arange(1, 9)
    return t


def make_store(path, n_speakers: int = 10, n_frames: int = 40, seed: int = 0, ignored: str = "random"):
    """A store of this codec: ``n_speakers`` x 2 sentences; speakers s0, s1 train (split_spk), the rest
    test. Layer-1 and layer-3 codes are constant within runs of 10 frames; accent a{s % 2} sets the
    pitch register (a0: layer-3 codes 0-3, a1: 4-7); the frame label ``phone`` is lo/hi with the
    layer-1 code (< 4 / >= 4), ``f0_hz`` the F0 layer 3 makes (jittered by 0.1%). The ignored
    layers 2 and 4 get random codes, or code 0 with ``ignored="zero"`` (what ``encode`` returns, so
    decode-then-encode gives back the store's codes)."""
    import pandas as pd

    from codeclens.store import Store
    from codeclens.store.arrays import write_store

    rng = np.random.default_rng(seed)
    rows, codes = [], []
    for s in range(n_speakers):
        for sent in range(2):
            c = rng.integers(0, 8, size=(n_frames, 4)) if ignored == "random" else np.zeros((n_frames, 4), np.int64)
            c[:, 0] = np.repeat(rng.integers(0, 8, size=n_frames // 10), 10)
            c[:, 2] = np.repeat(rng.integers(0, 4, size=n_frames // 10) + 4 * (s % 2), 10)
            codes.append(c)
            rows.append({"id": f"s{s}_{sent}", "speaker": f"s{s}", "sentence": sent, "accent": f"a{s % 2}",
                         "n_frames": n_frames})
    u = pd.DataFrame(rows)
    u["split_spk"] = ["train" if r["speaker"] in ("s0", "s1") else "test" for r in rows]
    u["split_utt"] = "test"
    allc = np.concatenate(codes)
    # F0 labels are measured, so continuous: the code's F0 with a 0.1% jitter
    f0 = F0S[allc[:, 2]] * (1 + 1e-3 * rng.standard_normal(len(allc)))
    frames = pd.DataFrame({"phone": np.where(allc[:, 0] < 4, "lo", "hi"), "f0_hz": f0})
    write_store(path, allc, [table(l) for l in range(4)], u, frames, codec_spec="python:causal_vector_toy:VectorToyCodec",
                name="vtoy", sample_rate=SR)
    return Store(path)

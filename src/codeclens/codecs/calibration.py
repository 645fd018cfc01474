"""A deterministic speech-like calibration signal, built in (no download).

Random-weight adapters (``random_init``) initialise their codebooks from
residual frames of this signal, so that codes are actually used rather than
all collapsing on code 0.
"""

from __future__ import annotations

import numpy as np
import scipy.signal


def calibration_audio(sample_rate: int, seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """Voiced segments (glide-pitch harmonics through moving formants) alternating with
    fricative-like noise and short silences."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    seg = int(0.25 * sample_rate)
    for i, a in enumerate(range(0, n, seg)):
        b = min(a + seg, n)
        tt = t[a:b] - t[a]
        kind = i % 4
        if kind in (0, 1):
            f0 = rng.uniform(90, 260) * (1 + 0.3 * tt / max(tt[-1], 1e-9) * rng.choice([-1, 1]))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            x = sum(np.sin(h * phase) / h for h in range(1, 30) if h * f0.max() < sample_rate / 2)
            for fc in rng.uniform([300, 900, 2200], [900, 2200, 3400]):
                lo, hi = max(fc * 0.8, 50), min(fc * 1.2, sample_rate / 2 - 100)
                sos = scipy.signal.butter(2, [lo, hi], btype="band", fs=sample_rate, output="sos")
                out[a:b] += 0.3 * scipy.signal.sosfilt(sos, x)
        elif kind == 2:
            lo = rng.uniform(2000, 4000)
            hi = min(lo * 2, sample_rate / 2 - 100)
            sos = scipy.signal.butter(4, [lo, hi], btype="band", fs=sample_rate, output="sos")
            out[a:b] += 0.2 * scipy.signal.sosfilt(sos, rng.standard_normal(b - a))
        else:
            out[a:b] += 0.002 * rng.standard_normal(b - a)
    out /= max(np.abs(out).max(), 1e-9) / 0.7
    return out.astype(np.float32)


def sample_rows(x: np.ndarray | "torch.Tensor", k: int, seed: int = 0):  # noqa: F821
    """k rows of x chosen at random (with replacement only if x has fewer rows), plus tiny
    jitter so that duplicated rows stay distinct codes."""
    import torch

    x = torch.as_tensor(x)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    idx = torch.randperm(n, generator=g)[:k] if n >= k else torch.randint(0, n, (k,), generator=g)
    rows = x[idx.to(x.device)].clone()
    scale = rows.std() if rows.numel() > 1 else torch.tensor(1.0)
    rows += 1e-3 * scale * torch.randn(rows.shape, generator=g).to(rows.device)
    return rows

"""Stores with planted signals, for tests, benchmarks and demos of the probes.

Chosen layers carry one attribute each through their codes (phone -> a group
of codes per phone, speaker -> a group per speaker, F0 -> a code per F0 bin),
with table rows clustered around one centroid per group (so the attribute is
also linearly decodable from the vectors); every other layer's codes are
uniformly random. The answer is therefore known: the carrier layer wins, the
others sit at chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...store.arrays import write_store


def planted_store(
    path: str | Path, n_utt: int = 60, n_speakers: int = 6, frames: tuple[int, int] = (40, 80), n_layers: int = 4,
    codebook_size: int = 32, dim: int = 16, n_phones: int = 8, carriers: dict[str, int] | None = None,
    noise: float = 0.1, spread: float = 0.3, latent: str | None = None, zero_layers: tuple[int, ...] = (),
    seed: int = 0, name: str | None = None, frame_rate: float = 50.0, condition: float = 1.0,
) -> Path:
    """Write a planted store. ``carriers`` maps task -> 1-based layer (phone, speaker, f0);
    ``noise`` is the fraction of carrier frames whose code is random; ``latent`` is None,
    ``"sum"`` (sum of all layer vectors + noise) or ``"noise"`` (pure noise);
    ``zero_layers`` get an all-zero table (vectors without any information); ``condition`` > 1
    passes every table through one shared random linear map with that condition number
    (log-spaced singular values), like a codec's correlated, unevenly scaled embedding space."""
    carriers = {"phone": 1, "speaker": 2, "f0": 3} if carriers is None else carriers
    rng = np.random.default_rng(seed)
    K, D = codebook_size, dim
    n_fr = rng.integers(frames[0], frames[1] + 1, size=n_utt)
    spk = np.arange(n_utt) % n_speakers
    utts = pd.DataFrame({
        "id": [f"u{i:05d}" for i in range(n_utt)], "speaker": [f"s{s:02d}" for s in spk],
        "accent": [f"a{s % 2}" for s in spk], "n_frames": n_fr,
    })
    N = int(n_fr.sum())
    frame_spk = np.repeat(spk, n_fr)
    # Phones come in segments of 3-10 frames, like real phones at 50 Hz.
    phone = np.empty(N, np.int64)
    a = 0
    while a < N:
        ln = int(rng.integers(3, 11))
        phone[a : a + ln] = rng.integers(n_phones)
        a += ln
    voiced = phone % 4 != 0
    base = 110.0 + 90.0 * (np.arange(n_speakers) / max(n_speakers - 1, 1))
    t = np.concatenate([np.arange(n) for n in n_fr])
    f0 = base[frame_spk] * (1 + 0.35 * np.sin(2 * np.pi * t / 37.0 + frame_spk)) * np.exp(0.03 * rng.normal(size=N))
    f0_col = np.where(voiced, f0, np.nan)

    codes = rng.integers(0, K, size=(N, n_layers))
    tables = [rng.normal(size=(K, D)).astype(np.float32) for _ in range(n_layers)]

    def grouped(label: np.ndarray, n_groups: int, layer: int) -> None:
        g = max(K // n_groups, 1)
        c = (label % n_groups) * g + rng.integers(0, g, size=N)
        flip = rng.random(N) < noise
        codes[:, layer] = np.where(flip, rng.integers(0, K, size=N), np.minimum(c, K - 1))
        cent = rng.normal(size=(n_groups, D))
        grp = np.minimum(np.arange(K) // g, n_groups - 1)
        tables[layer] = (cent[grp] + spread * rng.normal(size=(K, D))).astype(np.float32)

    for task, layer in carriers.items():
        l = layer - 1
        if task == "phone":
            grouped(phone, n_phones, l)
        elif task == "speaker":
            grouped(frame_spk, n_speakers, l)
        elif task == "f0":
            lo, hi = np.nanmin(f0), np.nanmax(f0)
            c = np.clip(((f0 - lo) / (hi - lo) * K).astype(np.int64), 0, K - 1)
            flip = (rng.random(N) < noise) | ~voiced
            codes[:, l] = np.where(flip, rng.integers(0, K, size=N), c)
            u = rng.normal(size=D)
            u /= np.linalg.norm(u)
            level = lo + (np.arange(K) + 0.5) / K * (hi - lo)
            tables[l] = (np.outer((level - level.mean()) / level.std(), u) + spread * rng.normal(size=(K, D))).astype(np.float32)
        else:
            raise ValueError(f"unknown carrier task '{task}'")
    if condition > 1:
        q1, _ = np.linalg.qr(rng.normal(size=(D, D)))
        q2, _ = np.linalg.qr(rng.normal(size=(D, D)))
        mix = q1 @ np.diag(np.logspace(0, -np.log10(condition), D)) @ q2
        tables = [(t @ mix).astype(np.float32) for t in tables]
    for l in zero_layers:
        tables[l - 1] = np.zeros((K, D), np.float32)
    lat = None
    if latent == "sum":
        lat = sum(tables[l][codes[:, l]] for l in range(n_layers)) + 0.1 * rng.normal(size=(N, D))
    elif latent == "noise":
        lat = rng.normal(size=(N, D))
    fr = pd.DataFrame({"phone": np.array([f"p{p:02d}" for p in phone]), "f0_hz": f0_col, "voiced": voiced})
    return write_store(path, codes, tables, utts, fr, latent=lat, frame_rate=frame_rate, seed=seed,
                       codec_spec=f"planted?seed={seed}", name=name)

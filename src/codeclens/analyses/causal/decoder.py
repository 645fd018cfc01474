"""Decoder-side attribution and interchange: decode token streams with layer sets present or
patched, and measure the audio against the full decode.

Every measure here is a *value* that is defined for every decode (a silent decode scores its
floor rather than NaN), because a Shapley value needs v(S) for every coalition S:

- ``speaker``: Resemblyzer cosine to the full decode's embedding (0 for silence);
- ``f0_kept``: fraction of the full decode's voiced frames that stay voiced within 50 cents;
  undefined (NaN, counted) only when the full decode itself has no voiced frame;
- ``voicing``: voiced/unvoiced agreement with the full decode;
- ``loudness``: level relative to the full decode in dB, floored at −60 dB;
- ``stoi``: STOI against the full decode (0 where STOI is undefined on a silent decode).

Decodes are cached per (utterance, coalition) for the run and shared by every measure.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..ablate import measures as M
from .shapley import mask_layers

DECODER_MEASURES = ("speaker", "f0_kept", "voicing", "loudness", "stoi")
LOUDNESS_FLOOR_DB = -60.0


def decode(codec, codes_tl: np.ndarray, layers: Sequence[int] | None = None, scales: np.ndarray | None = None) -> np.ndarray:
    """``[T, L]`` codes -> mono audio through the codec's own decode (``layers``: present, 0-based;
    ``scales``: the utterance's input scales, :func:`~codeclens.analyses.ablate.engine.utterance_scales`)."""
    from ..ablate.engine import decode_codes

    return decode_codes(codec, codes_tl.T, layers, scales)


ABSENT_VALUES = ("drop", "mean", "mean_code")
"""What an absent layer is: drop (contributes nothing), mean (its expected table vector, decoded
through the codec's ``decode_quantized``; the shared ablate engine), mean_code (its mean code)."""


def decode_coalition(codec, codes_tl: np.ndarray, mask: int, absent: str, mean_codes: np.ndarray,
                     expected: Sequence[np.ndarray] | None, scales: np.ndarray | None = None) -> np.ndarray:
    """The decode of coalition ``mask`` (bit k set: layer k present) with absent layers as ``absent``."""
    from ..ablate.engine import decode_edit
    from ..ablate.interventions import Edited

    n = codes_tl.shape[1]
    present = mask_layers(mask, n)
    missing = tuple(l for l in range(n) if l not in present)
    if absent == "drop":
        return decode(codec, codes_tl, present, scales)
    if absent == "mean":
        return decode_edit(codec, Edited(np.ascontiguousarray(codes_tl.T), tuple(present), missing), expected, scales)
    if absent == "mean_code":
        out = codes_tl.copy()
        for l in missing:
            out[:, l] = mean_codes[l]
        return decode(codec, out, None, scales)
    raise ValueError(f"unknown absent value '{absent}'; known: {', '.join(ABSENT_VALUES)}")


class Reference:
    """What every decode of one utterance is measured against: the full decode and its features."""

    def __init__(self, audio: np.ndarray, sr: int, enc):
        self.audio, self.sr, self.enc = audio, sr, enc
        self.emb = enc.embed(audio, sr)
        self.f0 = M.f0_track(audio, sr)

    def measure(self, audio: np.ndarray, which: Sequence[str] = DECODER_MEASURES) -> np.ndarray:
        silent = not np.any(audio)
        out = []
        hyp_f0 = None
        for m in which:
            if m == "speaker":
                v = 0.0 if silent else M.cosine(self.emb, self.enc.embed(audio, self.sr))
                v = 0.0 if not math.isfinite(v) else v
            elif m in ("f0_kept", "voicing"):
                hyp_f0 = hyp_f0 or M.f0_track(audio, self.sr)
                if m == "voicing":
                    v = M.voicing_agreement(self.f0, hyp_f0)
                else:
                    v = f0_kept(self.f0, hyp_f0)
            elif m == "loudness":
                v = max(LOUDNESS_FLOOR_DB, M.loudness_change_db(self.audio, audio))
            elif m == "stoi":
                v = M.stoi(self.audio, audio, self.sr)
                v = 0.0 if not math.isfinite(v) else v
            else:
                raise ValueError(f"unknown decoder measure '{m}'; known: {', '.join(DECODER_MEASURES)}")
            out.append(v)
        return np.array(out, dtype=np.float64)


def f0_kept(ref: "M.F0Track", hyp: "M.F0Track", cents: float = 50.0) -> float:
    """Fraction of ``ref``'s voiced frames voiced in ``hyp`` within ``cents``."""
    n = min(len(ref.f0), len(hyp.f0))
    rv = ref.voiced[:n]
    if not rv.any():
        return float("nan")
    both = rv & hyp.voiced[:n]
    ok = np.zeros(n, bool)
    ok[both] = np.abs(1200.0 * np.log2(hyp.f0[:n][both] / ref.f0[:n][both])) <= cents
    return float(ok[rv].mean())


def envelope_distance(ref: np.ndarray, hyp: np.ndarray, sr: int, n_coef: int = 4) -> float:
    """Mean distance of the low-order mel cepstra (c1..c4: the spectral envelope's broad shape, not
    the harmonics of the pitch), so "the spectrum followed the donor" is not confounded with F0."""
    a, b = M.mel_cepstrum(ref, sr)[:, :n_coef], M.mel_cepstrum(hyp, sr)[:, :n_coef]
    n = min(len(a), len(b))
    return float(np.mean(np.linalg.norm(a[:n] - b[:n], axis=1))) if n else float("nan")

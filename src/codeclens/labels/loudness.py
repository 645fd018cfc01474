"""``loudness`` labeller: RMS level in dB re full scale (dBFS) over each frame's span.

Frame ``t`` of a codec at frame rate ``fr`` covers the samples in
``[t - 0.5/fr, t + 0.5/fr)`` (clipped to the audio); its loudness is
``10*log10(mean(x^2))``, floored at ``floor_db`` (default -100 dB) so silence
gives a finite value. A span holding no sample at all (past the end of the
audio) is NaN. A full-scale sine reads -3.01 dB.

Frame column: ``loudness`` (float, dBFS). Utterance column: ``loudness_db``
(RMS level of the whole utterance). Option: ``floor_db``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CodeclensError
from . import LABELLERS
from .base import Labeller


def rms_db(audio: np.ndarray, sample_rate: int, times: np.ndarray, frame_rate: float, floor_db: float = -100.0) -> np.ndarray:
    """RMS dBFS of ``audio`` over the span of each frame centred at ``times``."""
    x = np.asarray(audio, dtype=np.float64)
    cs = np.concatenate([[0.0], np.cumsum(x * x)])
    half = 0.5 / float(frame_rate)
    t = np.asarray(times, dtype=np.float64)
    # Sample i sits at time i/sr; it belongs to the span when start <= i/sr < end.
    a = np.clip(np.ceil((t - half) * sample_rate - 1e-9), 0, len(x)).astype(np.int64)
    b = np.clip(np.ceil((t + half) * sample_rate - 1e-9), 0, len(x)).astype(np.int64)
    n = b - a
    with np.errstate(invalid="ignore", divide="ignore"):
        power = (cs[b] - cs[a]) / n
        db = 10.0 * np.log10(np.maximum(power, 10.0 ** (floor_db / 10.0)))
    return np.where(n > 0, db, np.nan)


@LABELLERS.register("loudness")
class LoudnessLabeller(Labeller):
    """RMS level (dBFS) per codec frame."""

    options = ("floor_db",)

    def __init__(self, spec):
        super().__init__(spec)
        self.floor_db = spec.get("floor_db", -100.0, float)
        if self.floor_db >= 0:
            raise CodeclensError("loudness: floor_db must be negative")

    def frame_labels(self, utt, audio, sample_rate, times, frame_rate) -> dict[str, np.ndarray]:
        return {"loudness": rms_db(audio, sample_rate, times, frame_rate, self.floor_db)}

    def utterance_labels(self, utt, audio, sample_rate) -> dict[str, Any]:
        x = np.asarray(audio, dtype=np.float64)
        power = float(np.mean(x * x)) if len(x) else 0.0
        return {"loudness_db": float(10.0 * np.log10(max(power, 10.0 ** (self.floor_db / 10.0))))}

    def describe(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "columns": ["loudness"], "unit": "dBFS (RMS)", "floor_db": self.floor_db}

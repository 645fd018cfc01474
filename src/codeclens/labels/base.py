"""The labeller contract: per-frame and per-utterance label columns.

A labeller is built from a spec (``f0?method=crepe``), sees each utterance once
with its audio, and returns columns for the frames of that utterance, given
the frame *times* (centres, in seconds from the utterance start) at the codec's
own frame rate. Alignment is always by time, never by index.
"""

from __future__ import annotations

import abc
from typing import Any, Iterable

import numpy as np

from ..corpora.base import Utterance
from ..spec import Spec


class Labeller(abc.ABC):
    #: Spec options this labeller understands.
    options: tuple[str, ...] = ()

    def __init__(self, spec: Spec):
        self.spec = spec

    @classmethod
    def from_spec(cls, spec: Spec) -> "Labeller":
        spec.check_keys(cls.options)
        return cls(spec)

    def fit(self, utterances: Iterable[Utterance]) -> None:
        """Optional corpus-level preparation (e.g. k-means for units) before labelling."""

    def frame_labels(
        self, utt: Utterance, audio: np.ndarray, sample_rate: int, times: np.ndarray, frame_rate: float
    ) -> dict[str, np.ndarray]:
        """Columns (each ``[len(times)]``) for this utterance's frames."""
        return {}

    def utterance_labels(self, utt: Utterance, audio: np.ndarray, sample_rate: int) -> dict[str, Any]:
        """Utterance-level columns."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"spec": str(self.spec)}


def frame_times(n_frames: int, frame_rate: float) -> np.ndarray:
    """Centre time (s) of each codec frame: frame t spans [t/fr, (t+1)/fr)."""
    return (np.arange(n_frames, dtype=np.float64) + 0.5) / float(frame_rate)

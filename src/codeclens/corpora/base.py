"""What a corpus yields: utterances with their metadata and optional phone alignment."""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Iterator

import numpy as np

from ..audio import load_audio
from ..spec import Spec


@dataclasses.dataclass(frozen=True)
class Interval:
    """A labelled time span in seconds, relative to the utterance start."""

    start: float
    end: float
    label: str


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One utterance of a corpus."""

    id: str
    """Unique id within the corpus (used as the key for resuming)."""
    path: str
    """Audio file."""
    speaker: str = "unknown"
    """Speaker id."""
    accent: str | None = None
    """Accent / variety label, when known."""
    start: float | None = None
    """Segment start in seconds within ``path`` (None: file start)."""
    end: float | None = None
    """Segment end in seconds within ``path`` (None: file end)."""
    phones: tuple[Interval, ...] | None = None
    """Phone alignment (times relative to the segment start), if any."""
    extra: tuple[tuple[str, Any], ...] = ()
    """Other utterance-level labels (gender, split, manifest columns)."""

    @property
    def meta(self) -> dict[str, Any]:
        """Utterance-level columns of the store's utterances table."""
        out: dict[str, Any] = {"id": self.id, "path": self.path, "speaker": self.speaker}
        if self.accent is not None:
            out["accent"] = self.accent
        # Segments of long files keep their bounds, so the audio can be found again.
        if self.start is not None:
            out["start"] = self.start
        if self.end is not None:
            out["end"] = self.end
        out.update(dict(self.extra))
        return out

    def load(self, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
        return load_audio(self.path, sample_rate, self.start, self.end)


@dataclasses.dataclass(frozen=True)
class Problem:
    """An input that was skipped, with the reason: the one record shape of a store
    manifest's ``skipped`` list, whether the corpus or the extraction skipped it."""

    where: str
    """The file (or ``FILE:row N``) that was skipped."""
    message: str
    """Why, naming the real cause (empty file, unreadable folder, truncated TextGrid...)."""
    id: str | None = None
    """Utterance id, when the input had become an utterance."""
    stage: str = "corpus"
    """corpus (listing the inputs) | audio (reading the samples) | labels (a labeller refused it)"""


class Corpus(abc.ABC):
    """A corpus: a deterministic, re-iterable sequence of utterances.

    ``problems`` collects rows or files skipped while reading (a missing file, a
    malformed TextGrid...): they are reported, never fatal.
    """

    options: tuple[str, ...] = ()

    def __init__(self, spec: Spec):
        self.spec = spec
        self.problems: list[Problem] = []
        # Inputs passed over as not being utterances (a text file in an audio folder): not
        # skipped data, so not in the manifest, but named when a corpus turns out empty.
        self.ignored: list[Problem] = []

    @classmethod
    def from_spec(cls, spec: Spec) -> "Corpus":
        spec.check_keys(cls.options)
        return cls(spec)

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Utterance]:
        """Utterances in a fixed order."""

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def describe(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "kind": self.spec.kind}


def why_empty(problems: list[Problem], ignored: list[Problem] = (), limit: int = 5) -> str:
    """What an empty corpus saw instead of utterances, for its one-line error."""
    seen = list(problems) + list(ignored)
    if not seen:
        return "no audio files found"
    shown = "; ".join(p.message for p in seen[:limit])
    more = f"; and {len(seen) - limit} more" if len(seen) > limit else ""
    return f"{len(seen)} input(s) rejected: {shown}{more}"


class ListedCorpus(Corpus):
    """A corpus that reads its whole listing once (``_load``) and keeps it: for loaders
    that parse an index (a manifest, a LibriSpeech tree) and record problems while doing so."""

    _utts: list[Utterance] | None = None

    @abc.abstractmethod
    def _load(self) -> list[Utterance]:
        """Read the listing, appending skipped rows to ``self.problems``."""

    def utterances(self) -> list[Utterance]:
        if self._utts is None:
            self._utts = self._load()
        return self._utts

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances())

    def __len__(self) -> int:
        return len(self.utterances())

"""What the interchange's decodes say when they are read back through the codec: the accent
decision and content retention.

Each decode (the source's full decode, the donor's, every patched one) is re-encoded with the
same codec and read by

- the toolkit's own accent token classifier (:class:`~.consumers.TokenClassifier` on the
  ``accent`` label: logistic regression on the utterance mean of the summed table lookups, fit
  on the store's speaker-disjoint train split). ``accent_follows_donor`` is 1 when the patched
  decode is classified as the donor's decode is, over the pairs whose source and donor decodes
  the classifier tells apart (elsewhere undefined: following cannot be told from staying).
  ``accent_source_correct`` is how often it is right about the source's own decode (a held-out
  speaker): near chance, following the donor means little;
- the phone probe of ``ablate`` (:func:`~codeclens.analyses.ablate.phoneprobe.fit_phone_probe`,
  trained on speakers none of the measured ones is). ``phone_acc_change`` is the patched decode's
  frame accuracy against the source's phone labels minus the source's full decode's: 0 when the
  content is retained, negative when it is lost.

A token classifier on re-encoded audio rather than a classifier on audio features: it is trained
on the store itself (so it exists for every corpus with an accent column, the synthetic one's
eight English accents included) and reads the decoded audio only through the codec, as every
other ``causal`` consumer reads tokens.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ReencodeFields:
    """Options of the interchange's re-encoded measures (fields of :class:`~.run.CausalConfig`)."""

    interchange_reencode: bool = True
    """Re-encode the interchange's decodes to read the accent classifier's decision (accent_follows_donor) and
    the phone probe's accuracy (phone_acc_change: content retention), where the store has accent / phone labels."""


class Reencoded:
    """Reads decodes of one store's codec: ``read(audio, phones) -> (accent class or None, phone accuracy)``."""

    def __init__(self, store, codec, measured_rows, seed: int = 0, log=print):
        from ...errors import CodeclensError
        from ..ablate.phoneprobe import fit_phone_probe
        from .consumers import TokenClassifier

        self.store, self.codec = store, codec
        self.accent = None
        if "accent" in store.utterances.columns:
            try:
                self.accent = TokenClassifier(store, "accent", seed=seed)
            except CodeclensError as e:
                log(f"interchange: no accent classifier ({e})")
        self.probe, note = fit_phone_probe(store, measured_rows, seed=seed)
        log(f"interchange: {note}")

    @property
    def active(self) -> bool:
        return self.accent is not None or self.probe is not None

    def phones(self, row: int, n: int) -> np.ndarray | None:
        if self.probe is None:
            return None
        off = int(self.store.utterances["frame_offset"].iloc[row])
        return np.asarray(self.store.frame_column("phone")[off : off + n])

    def read(self, audio: np.ndarray, phones: np.ndarray | None, row: int | None = None) -> tuple:
        """(accent class or None, phone accuracy), plus the utterance's true accent when ``row`` is given."""
        from ..ablate.engine import encode_audio

        codes = encode_audio(self.codec, audio)
        acc = self.probe.accuracy(codes, self.store.tables, phones) if self.probe is not None and phones is not None \
            else float("nan")
        cls = None
        if self.accent is not None and len(codes):
            logp = self.accent.score(codes[None], np.array([len(codes)]))
            cls = str(self.accent.classes[int(np.argmax(logp[0]))])
        if row is None:
            return cls, acc
        return cls, acc, str(self.store.utterances["accent"].iloc[row]) if self.accent is not None else None


def follow_columns(src: tuple, don: tuple, hyp: tuple) -> dict[str, float]:
    """The interchange columns of one patched decode from the readings of source, donor and it."""
    differ = src[0] is not None and don[0] is not None and src[0] != don[0]
    truth = src[2] if len(src) > 2 else None
    return {"accent_follows_donor": float(hyp[0] == don[0]) if differ else float("nan"),
            # is the classifier right about the source's own decode? (says whether following means anything)
            "accent_source_correct": float(src[0] == truth) if truth is not None and src[0] is not None else float("nan"),
            "phone_acc_change": hyp[1] - src[1]}


def summary_lines(name: str, ic) -> list[str]:
    """Which single layer moves the accent decision most, and which loses the most content."""
    single = ic[ic["kind"] == "layer"] if "kind" in ic.columns else ic.iloc[:0]
    lines = []
    if "accent_follows_donor" in single.columns and single["accent_follows_donor"].notna().any():
        top = single.loc[single["accent_follows_donor"].idxmax()]
        lines.append(f"{name}: swapping layer {top['layers']} alone makes the accent classifier follow the donor in "
                     f"{top['accent_follows_donor']:.0%} of the pairs whose accents it tells apart "
                     f"[{top['accent_follows_donor_ci_low']:.0%}, {top['accent_follows_donor_ci_high']:.0%}].")
    if "phone_acc_change" in single.columns and single["phone_acc_change"].notna().any():
        top = single.loc[single["phone_acc_change"].idxmin()]
        lines.append(f"{name}: swapping layer {top['layers']} alone changes the re-encoded phone accuracy most "
                     f"({top['phone_acc_change']:+.1%} [{top['phone_acc_change_ci_low']:+.1%}, "
                     f"{top['phone_acc_change_ci_high']:+.1%}]).")
    return lines

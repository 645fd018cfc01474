"""The phone inventory, and the ``phone`` labeller (max-overlap phone per codec frame).

One inventory for every corpus
------------------------------
Alignments arrive in two notations: eSpeak NG's IPA (the synthetic corpus,
stress marks attached to vowels, e.g. ``ˈɜː``) and ARPAbet from
Montreal-Forced-Aligner / LibriSpeech alignments (``AH0``, ``HH``). Both are
mapped to **one set of IPA symbols**, :data:`INVENTORY`: one symbol per phone
of the 39-phone CMU/ARPAbet set, plus a few English phones ARPAbet cannot
write but eSpeak's accents use (``ɒ``, the centring diphthongs ``ɪə eə ʊə``,
the flap ``ɾ``, the glottal stop ``ʔ``, ``x`` and ``ʍ``), plus ``sil``.

Normalisation (:func:`normalize_phone`):

* stress is folded by default: IPA ``ˈ``/``ˌ`` are dropped and ARPAbet stress
  digits are ignored, except that they pick the vowel quality where ARPAbet
  uses stress for it (``AH0`` -> ``ə``, ``AH1``/``AH2`` -> ``ʌ``; ``ER0`` ->
  ``ɚ``, ``ER1``/``ER2`` -> ``ɜ``). With ``keep_stress`` a stressed vowel is
  written with a leading ``ˈ`` (primary) or ``ˌ`` (secondary), from either notation;
* length marks, tie bars and diacritics are dropped (``iː`` -> ``i``,
  ``t͡ʃ`` -> ``tʃ``, ``tʰ`` -> ``t``, ``n̩`` -> ``n``); eSpeak's accent variants
  map to the phoneme they stand for (table :data:`IPA_ALIASES`, e.g. ``ɐ`` ->
  ``ə``, ``əʊ`` -> ``oʊ``, ``ɪɹ`` -> ``ɪə``, ``r`` -> ``ɹ``, syllabic ``əl`` -> ``l``);
* silence and pauses (``""``, ``sil``, ``sp``, ``<eps>``, ``_``, ``pau``,
  ``h#``...) are one class, ``sil``;
* spoken-noise and noise markers (MFA's and LibriSpeech's ``spn``, ``<unk>``,
  ``[noise]``, ``<SPOKEN_NOISE>``, ``nsn``, laughter...) are out-of-vocabulary
  speech or non-speech sounds, neither a phone nor silence: they normalise to
  ``None``, so their frames have no phone label (missing, never counted as ``sil``);
* a symbol outside the inventory is kept (after stripping) and gets class
  ``other`` rather than failing, so a new accent never stops a run.

Every symbol has a class (:data:`CLASSES`: vowel, stop, affricate, fricative,
nasal, approximant, silence) used to colour plots.

The ``phone`` labeller
----------------------
Frame ``t`` of a codec at frame rate ``fr`` spans ``[t - 0.5/fr, t + 0.5/fr)``
around its centre time; its label is that of the interval with the largest
overlap with that span (ties: the earlier interval; overlaps are compared to
1 ns, so floating-point dust at exact boundaries neither counts nor breaks ties). A frame that overlaps no
interval (no alignment, or beyond the aligned part) gets ``None``. Times, not
indices, so any frame rate works. Columns: ``phone`` (str) and ``phone_class`` (str).
Options: ``keep_stress`` (default false), ``tolerance`` (seconds the alignment may
run past the audio end, default 0.05; beyond it the utterance is skipped and recorded).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Sequence

import numpy as np

from ..corpora.base import Interval, Utterance
from ..errors import CodeclensError
from . import LABELLERS
from .base import Labeller

SILENCE = "sil"

#: Canonical symbol -> (class, ARPAbet, example word).
INVENTORY: dict[str, tuple[str, str, str]] = {
    # vowels: monophthongs
    "i": ("vowel", "IY", "fleece"),
    "ɪ": ("vowel", "IH", "kit"),
    "ɛ": ("vowel", "EH", "dress"),
    "æ": ("vowel", "AE", "trap"),
    "ɑ": ("vowel", "AA", "palm"),
    "ɒ": ("vowel", "", "lot (British)"),
    "ɔ": ("vowel", "AO", "thought"),
    "ʊ": ("vowel", "UH", "foot"),
    "u": ("vowel", "UW", "goose"),
    "ʌ": ("vowel", "AH1", "strut"),
    "ə": ("vowel", "AH0", "comma"),
    "ɜ": ("vowel", "ER1", "nurse"),
    "ɚ": ("vowel", "ER0", "letter (rhotic)"),
    # vowels: diphthongs
    "eɪ": ("vowel", "EY", "face"),
    "aɪ": ("vowel", "AY", "price"),
    "aʊ": ("vowel", "AW", "mouth"),
    "oʊ": ("vowel", "OW", "goat"),
    "ɔɪ": ("vowel", "OY", "choice"),
    "ɪə": ("vowel", "", "near"),
    "eə": ("vowel", "", "square"),
    "ʊə": ("vowel", "", "cure"),
    # stops (with the flap and the glottal stop)
    "p": ("stop", "P", "pin"),
    "b": ("stop", "B", "bin"),
    "t": ("stop", "T", "tin"),
    "d": ("stop", "D", "din"),
    "k": ("stop", "K", "kin"),
    "ɡ": ("stop", "G", "gap"),
    "ɾ": ("stop", "DX", "butter (flap)"),
    "ʔ": ("stop", "Q", "uh-oh"),
    # affricates
    "tʃ": ("affricate", "CH", "chin"),
    "dʒ": ("affricate", "JH", "gin"),
    # fricatives
    "f": ("fricative", "F", "fin"),
    "v": ("fricative", "V", "vin"),
    "θ": ("fricative", "TH", "thin"),
    "ð": ("fricative", "DH", "this"),
    "s": ("fricative", "S", "sin"),
    "z": ("fricative", "Z", "zoo"),
    "ʃ": ("fricative", "SH", "shin"),
    "ʒ": ("fricative", "ZH", "measure"),
    "h": ("fricative", "HH", "hat"),
    "x": ("fricative", "", "loch"),
    # nasals
    "m": ("nasal", "M", "man"),
    "n": ("nasal", "N", "no"),
    "ŋ": ("nasal", "NG", "sing"),
    # approximants
    "l": ("approximant", "L", "leg"),
    "ɹ": ("approximant", "R", "red"),
    "w": ("approximant", "W", "wet"),
    "j": ("approximant", "Y", "yes"),
    "ʍ": ("approximant", "WH", "which (Scottish)"),
    SILENCE: ("silence", "", "pause / non-speech"),
}

CLASSES: tuple[str, ...] = ("vowel", "stop", "affricate", "fricative", "nasal", "approximant", "silence")
"""Phone classes, in display order; symbols outside the inventory are class ``other``."""

ARPABET: dict[str, str] = {
    "AA": "ɑ", "AE": "æ", "AH": "ʌ", "AO": "ɔ", "AW": "aʊ", "AX": "ə", "AXR": "ɚ", "AY": "aɪ",
    "EH": "ɛ", "ER": "ɜ", "EY": "eɪ", "IH": "ɪ", "IX": "ɪ", "IY": "i", "OW": "oʊ", "OY": "ɔɪ",
    "UH": "ʊ", "UW": "u", "UX": "u",
    "B": "b", "CH": "tʃ", "D": "d", "DH": "ð", "DX": "ɾ", "EL": "l", "EM": "m", "EN": "n",
    "F": "f", "G": "ɡ", "HH": "h", "HV": "h", "JH": "dʒ", "K": "k", "L": "l", "M": "m", "N": "n",
    "NG": "ŋ", "NX": "n", "P": "p", "Q": "ʔ", "R": "ɹ", "S": "s", "SH": "ʃ", "T": "t", "TH": "θ",
    "V": "v", "W": "w", "WH": "ʍ", "Y": "j", "Z": "z", "ZH": "ʒ",
}
"""ARPAbet (CMU, TIMIT extras) -> canonical symbol, before stress-dependent vowels."""

_ARPA_UNSTRESSED = {"AH": "ə", "ER": "ɚ"}  # stress digit 0 changes the quality

IPA_ALIASES: dict[str, str] = {
    # vowels written with length or as accent variants (keys after stress removal)
    "iː": "i", "ᵻ": "ɪ", "ɨ": "ɪ", "e": "ɛ", "ɛː": "ɛ", "a": "æ", "ɑː": "ɑ", "aː": "ɑ", "a:": "ɑ",
    "aa": "ɑ", "ɒː": "ɒ", "ɔː": "ɔ", "o": "ɔ", "uː": "u", "ʉ": "u", "ʉː": "u", "ɐ": "ə", "ɜː": "ɜ",
    "ɝ": "ɜ", "əɹ": "ɜ", "ʌɹ": "ɜ", "əɪ": "ɜ", "ɚː": "ɚ",
    "eː": "eɪ", "ei": "eɪ", "ɛɪ": "eɪ", "ɑɪ": "aɪ", "ʌɪ": "aɪ", "æʊ": "aʊ", "ʌʉ": "aʊ", "ɑʊ": "aʊ",
    "əʊ": "oʊ", "oː": "oʊ", "ʌʊ": "oʊ", "əu": "oʊ", "ou": "oʊ", "oɪ": "ɔɪ",
    # centring diphthongs and their rhotic counterparts (lexical sets NEAR, SQUARE, CURE)
    "iə": "ɪə", "ɪɹ": "ɪə", "iɹ": "ɪə", "ɛə": "eə", "ɛɹ": "eə", "eɹ": "eə", "ʊɹ": "ʊə", "ʉɹ": "ʊə", "uə": "ʊə",
    # r-coloured START / NORTH / FORCE vowels keep the vowel (ARPAbet writes AA R, AO R)
    "ɑːɹ": "ɑ", "ɑɹ": "ɑ", "ɑə": "ɑ", "ɔːɹ": "ɔ", "ɔɹ": "ɔ", "oə": "ɔ", "ɔə": "ɔ", "oɹ": "ɔ",
    # consonant glyph variants
    "g": "ɡ", "r": "ɹ", "ɻ": "ɹ", "ɾ̃": "ɾ", "ɫ": "l", "əl": "l", "əm": "m", "ən": "n",
    "ʧ": "tʃ", "ʤ": "dʒ", "tɕ": "tʃ", "dʑ": "dʒ", "ç": "h", "ɦ": "h", "χ": "x", "ɱ": "m", "ʋ": "v",
    "ɬ": "l",
}
"""eSpeak IPA spellings and accent variants -> canonical symbol (stress already removed).
Looked up first as written (so ``eː``, Scottish FACE, is not taken for ``e``), then
with length marks and diacritics stripped."""

SILENCE_LABELS = frozenset(
    {"", "sil", "sp", "<eps>", "<sil>", "eps", "_", "#", "pau", "h#", "epi", "sils", "silence", "<p:>", "||", "|"}
)
"""Labels meaning silence or a pause (compared lower-cased)."""

NOISE_LABELS = frozenset(
    {"spn", "<spn>", "<unk>", "unk", "[unk]", "<noise>", "[noise]", "noise", "nsn", "<nsn>", "<spoken_noise>",
     "[spoken_noise]", "spoken_noise", "lau", "[laughter]", "<laughter>", "laughter", "ns", "bg", "<v-noise>",
     "[vocalized-noise]", "<vocalized_noise>", "garbage", "<garbage>", "+noise+", "++noise++"}
)
"""Spoken-noise / noise markers (compared lower-cased): not a phone and not silence, so missing."""

_ARPA_RE = re.compile(r"^([A-Z]{1,3})([012])?$")
_STRIP = re.compile("[ːˑ:\u0361\u035c\u02b0\u02b7\u02b2\u02e0\u02e4\u02c0\u02c1\u1d4a\u207f\u02e1\u00b7.‖|]")


def _strip_marks(s: str) -> str:
    """Drop length marks, tie bars, modifier letters and combining diacritics."""
    s = _STRIP.sub("", s)
    return "".join(ch for ch in unicodedata.normalize("NFD", s) if not unicodedata.combining(ch))


def _lookup(sym: str) -> str | None:
    if sym in INVENTORY:
        return sym
    return IPA_ALIASES.get(sym)


def normalize_phone(label: str | None, keep_stress: bool = False) -> str | None:
    """The canonical inventory symbol of an IPA or ARPAbet phone label (see module docs);
    ``None`` for a spoken-noise / noise marker (:data:`NOISE_LABELS`)."""
    raw = (label or "").strip()
    if raw.lower() in NOISE_LABELS:
        return None
    if raw.lower() in SILENCE_LABELS:
        return SILENCE
    stress = ""
    m = _ARPA_RE.match(raw)
    if m and m.group(1) in ARPABET:
        base, digit = m.group(1), m.group(2)
        sym = _ARPA_UNSTRESSED.get(base) if digit == "0" else None
        sym = sym or ARPABET[base]
        if digit == "1":
            stress = "ˈ"
        elif digit == "2":
            stress = "ˌ"
    else:
        s = unicodedata.normalize("NFC", raw)
        # Stress marks may sit anywhere in the label (eSpeak puts them before the vowel).
        for ch in s:
            if ch in ("ˈ", "ˌ"):
                stress = stress or ch
        s = s.replace("ˈ", "").replace("ˌ", "")
        if s.lower() in SILENCE_LABELS:
            return SILENCE
        sym = _lookup(s) or _lookup(_strip_marks(s)) or _strip_marks(s) or s
    if keep_stress and stress and INVENTORY.get(sym, ("",))[0] == "vowel":
        return stress + sym
    return sym


def phone_class(symbol: str | None) -> str:
    """Class of a canonical symbol (stress marks allowed): one of :data:`CLASSES` or ``other``."""
    if symbol is None:
        return "other"
    return INVENTORY.get(symbol.lstrip("ˈˌ"), ("other",))[0]


def phone_index(symbol: str | None) -> int:
    """Position of a canonical symbol in :data:`INVENTORY` (stress ignored), -1 when outside."""
    if symbol is None:
        return -1
    return _INDEX.get(symbol.lstrip("ˈˌ"), -1)


_INDEX = {s: i for i, s in enumerate(INVENTORY)}


def max_overlap_labels(
    starts: np.ndarray, ends: np.ndarray, labels: Sequence[Any], times: np.ndarray, frame_rate: float,
    missing: Any = None, eps: float = 1e-9,
) -> list[Any]:
    """For each frame centred at ``times`` (span ``[t - 0.5/fr, t + 0.5/fr)``), the label of
    the interval with the largest overlap (ties: the earlier interval), else ``missing``.

    Overlaps are compared with a tolerance of ``eps`` seconds: a frame edge computed as
    ``t - 0.5/fr`` lands a few 1e-17 s off a boundary at ``k/fr``, which must neither
    count as overlap nor break a tie.

    Intervals must be sorted and non-overlapping (then ends are sorted too), which lets each
    frame look only at the few intervals its span can touch.
    """
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    half = 0.5 / float(frame_rate)
    fs, fe = times - half, times + half
    out: list[Any] = [missing] * len(times)
    if len(starts) == 0 or len(times) == 0:
        return out
    lo = np.searchsorted(ends, fs, side="right")  # first interval ending after the span starts
    hi = np.searchsorted(starts, fe, side="left")  # intervals starting before the span ends
    best = np.full(len(times), -1, dtype=np.int64)
    best_ov = np.full(len(times), eps, dtype=np.float64)
    width = int(np.max(hi - lo)) if len(times) else 0
    for k in range(max(width, 0)):
        idx = lo + k
        ok = idx < hi
        j = np.where(ok, idx, 0)
        ov = np.minimum(ends[j], fe) - np.maximum(starts[j], fs)
        better = ok & (ov > best_ov + (best >= 0) * eps)
        best[better] = idx[better]
        best_ov[better] = ov[better]
    for f in np.flatnonzero(best >= 0):
        out[f] = labels[best[f]]
    return out


def check_sorted(intervals: Sequence[Interval], where: str) -> None:
    for j in range(1, len(intervals)):
        if intervals[j].start < intervals[j - 1].end - 1e-9:
            raise CodeclensError(f"{where}: phone interval {j + 1} '{intervals[j].label}' overlaps the previous one")
        if intervals[j].end < intervals[j].start:
            raise CodeclensError(f"{where}: phone interval {j + 1} ends before it starts")


@LABELLERS.register("phone")
class PhoneLabeller(Labeller):
    """Canonical phone (and its class) of each frame, by maximum overlap with the alignment."""

    options = ("keep_stress", "tolerance")

    def __init__(self, spec):
        super().__init__(spec)
        self.keep_stress = spec.get("keep_stress", False, bool)
        self.tolerance = spec.get("tolerance", 0.05, float)
        if self.tolerance < 0:
            raise CodeclensError("phone: tolerance must be >= 0")

    def frame_labels(self, utt: Utterance, audio, sample_rate, times, frame_rate) -> dict[str, np.ndarray]:
        labels = self.frame_phones(utt, len(audio) / float(sample_rate), times, frame_rate)
        classes = np.array([phone_class(p) if p is not None else None for p in labels], dtype=object)
        return {"phone": np.array(labels, dtype=object), "phone_class": classes}

    def frame_phones(self, utt: Utterance, duration: float | None, times, frame_rate) -> list[str | None]:
        """Canonical phone per frame (``None`` where there is no alignment, or where the interval of
        largest overlap is a spoken-noise / noise marker)."""
        if not utt.phones:
            return [None] * len(times)
        ivs = list(utt.phones)
        check_sorted(ivs, f"{utt.path} ({utt.id})")
        if duration is not None and ivs[-1].end > duration + self.tolerance:
            raise CodeclensError(
                f"{utt.path} ({utt.id}): alignment ends at {ivs[-1].end:.3f} s but the audio lasts {duration:.3f} s"
            )
        syms = [normalize_phone(iv.label, self.keep_stress) for iv in ivs]
        return max_overlap_labels(
            np.array([iv.start for iv in ivs]), np.array([iv.end for iv in ivs]), syms, times, frame_rate
        )

    def describe(self) -> dict[str, Any]:
        return {"spec": str(self.spec), "columns": ["phone", "phone_class"], "inventory": list(INVENTORY)}

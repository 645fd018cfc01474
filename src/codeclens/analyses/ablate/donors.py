"""Which utterances to measure, which donor each swap takes its codes from, and how the
donor is put on the source's time axis.

Donors prefer the *same sentence* said by another speaker (the synthetic corpus
says every sentence in every accent: its ``sentence`` column; otherwise a ``text``
column), so a swapped layer carries the same words in the same order. Every donor
is then aligned to the source by dynamic time warping on the codes' lookups (the
codec's quantized frames), unless ``align="crop"`` asks for the old crop/loop; the
alignment's repeat and skip fractions are recorded with each swap.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...errors import CodeclensError
from . import interventions as ivs
from .phoneprobe import cumulative_features

SENTENCE_COLUMNS = ("sentence", "text")
"""Utterance columns that identify what was said (first present one is used)."""


def choose_utterances(store, n: int, seed: int) -> list[int]:
    """Held-out utterances first: test speakers of the speaker-disjoint split, then the
    utterance split's test, then the rest."""
    u = store.utterances
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(u))
    rank = np.zeros(len(u), dtype=np.int64)
    for col, w in (("split_spk", 2), ("split_utt", 1)):
        if col in u.columns:
            rank -= w * (u[col].to_numpy() == "test")
    order = order[np.argsort(rank[order], kind="stable")]
    return sorted(int(i) for i in order[:n])


def speakers(store) -> np.ndarray:
    u = store.utterances
    return u["speaker"].astype(str).to_numpy() if "speaker" in u.columns else np.array([f"utt{i}" for i in range(len(u))])


def _sentences(store) -> np.ndarray | None:
    u = store.utterances
    for col in SENTENCE_COLUMNS:
        if col in u.columns:
            v = u[col].astype(str).to_numpy()
            ok = (v != "") & (v != "nan") & (v != "None")
            return np.where(ok, v, None)
    return None


@dataclasses.dataclass(frozen=True)
class Donor:
    row: int
    other_speaker: bool
    same_sentence: bool


def choose_donor(store, row: int, different_speaker: bool, seed: int, same_sentence: bool = True) -> Donor:
    """Deterministic in (seed, row): another speaker's utterance when asked (falls back to any
    other utterance), of the same sentence when one exists and ``same_sentence``."""
    n = store.n_utterances
    rng = np.random.default_rng([seed, row, 7])
    others = np.array([i for i in range(n) if i != row], dtype=np.int64)
    if len(others) == 0:
        raise CodeclensError(f"{store.path}: swap needs at least two utterances")
    spk = speakers(store)
    pool = others[spk[others] != spk[row]]
    if not (different_speaker and len(pool)):
        pool = others
    sent = _sentences(store)

    def says_same(j) -> bool:
        return bool(sent is not None and sent[row] is not None and sent[j] == sent[row])

    if same_sentence and sent is not None and sent[row] is not None:
        same = pool[sent[pool] == sent[row]]
        if len(same):
            j = int(rng.choice(same))
            return Donor(j, bool(spk[j] != spk[row]), True)
    j = int(rng.choice(pool))
    return Donor(j, bool(spk[j] != spk[row]), says_same(j))


def align_donor(tables, source_lt: np.ndarray, donor_lt: np.ndarray, method: str = "dtw") -> tuple[np.ndarray, ivs.Alignment]:
    """Donor ``[L, T_donor]`` codes on the source's ``T`` frames, and how they were mapped."""
    if method == "dtw":
        al = ivs.dtw_alignment(cumulative_features(tables, source_lt.T), cumulative_features(tables, donor_lt.T))
    elif method == "crop":
        al = ivs.crop_loop_alignment(source_lt.shape[1], donor_lt.shape[1])
    else:
        raise ValueError(f"unknown alignment '{method}' (dtw or crop)")
    return np.ascontiguousarray(donor_lt[:, al.index]), al

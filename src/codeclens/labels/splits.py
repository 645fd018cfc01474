"""Train/val/test splits saved with the store, from stable seeded hashes of ids.

- ``split_utt``: utterance-level (a speaker's utterances spread over the splits):
  for closed-set speaker tasks. Each utterance's split is a hash of
  (seed, speaker, utterance id).
- ``split_spk``: speaker-disjoint (all of a speaker's utterances in one split):
  for accent, phone, F0 and other tasks that must generalise to new speakers.
  Each speaker's split is a hash of (seed, speaker). When that leaves a split
  with no speaker (likely with few speakers: val's 10 % is empty for 12 speakers
  with probability 0.9**12 = 0.28), the speakers are dealt by the same hash in
  order instead: the lowest hashes to train, then val, then test, in the
  FRACTIONS' proportions with at least one speaker each (12 speakers: 9/1/2).
  Below MIN_SPEAKERS speakers no speaker-disjoint split can have all three.

An item's split depends on its own id and the seed only, never on its position
in the utterance list or on which other utterances exist: two stores of one
corpus that differ by skipped utterances put every shared utterance in the same
split, so codec comparisons are on the same test data. (The price: fractions are
70/10/20 in expectation, not exactly, and a speaker with very few utterances may
have none in some split. The exception is the few-speaker fallback of
``split_spk``, which depends on the corpus' speaker set: stores that share
their speakers still share the split.)

A corpus's own ``split`` column (e.g. Vox-Profile's speaker-disjoint
train/validation/test) is honoured: when it keeps every speaker in one split it
becomes ``split_spk``, otherwise ``split_utt``; the other column is hashed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ..errors import CodeclensError

FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test
NAMES = np.array(["train", "val", "test"])
MIN_SPEAKERS = 3
"""Speakers a speaker-disjoint train/val/test split needs (one per split)."""
PREDEFINED = "split"
"""Utterance column holding a corpus's own split."""
ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val", "development": "val",
    "test": "test", "eval": "test", "evaluation": "test", "tst": "test",
}


def unit_interval(seed: int, *parts: str) -> np.ndarray:
    """A stable pseudo-uniform number in [0, 1) per item, from the seed and the item's id parts
    (blake2b, so it is the same on every machine, Python and numpy version)."""
    out = np.empty(len(parts[0]), np.float64)
    for i, key in enumerate(zip(*parts)):
        h = hashlib.blake2b("\x1f".join((str(seed),) + tuple(map(str, key))).encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def hashed_split(seed: int, *parts: str) -> np.ndarray:
    """'train' / 'val' / 'test' per item by the FRACTIONS thresholds on its hash."""
    u = unit_interval(seed, *parts)
    edges = np.cumsum(FRACTIONS)[:-1]
    return NAMES[np.searchsorted(edges, u, side="right")]


def speaker_quotas(n: int) -> tuple[int, int, int]:
    """(train, val, test) speaker counts of the few-speaker fallback: the FRACTIONS rounded,
    at least one speaker per split (needs ``n >= MIN_SPEAKERS``)."""
    val = max(1, round(n * FRACTIONS[1]))
    test = max(1, round(n * FRACTIONS[2]))
    return n - val - test, val, test


def speaker_split(seed: int, speakers: np.ndarray) -> np.ndarray:
    """Speaker-disjoint split per item: hashed thresholds, or the ranked fallback when they leave a
    split without speakers (see the module doc)."""
    uniq, inv = np.unique(speakers, return_inverse=True)
    tag = np.full(len(uniq), "spk")
    per = hashed_split(seed, tag, uniq)
    if len(uniq) >= MIN_SPEAKERS and len(set(per)) < len(NAMES):
        # Same hash, so the order (and the thresholds' ranking) is kept; only the cut points move.
        order = np.argsort(unit_interval(seed, tag, uniq), kind="stable")
        per = np.empty(len(uniq), dtype=NAMES.dtype)
        per[order] = np.repeat(NAMES, speaker_quotas(len(uniq)))
    return per[inv]


def too_few_speakers(n_speakers: int, column: str = "split_spk") -> str:
    """Why a speaker-disjoint split cannot hold train, val and test ('' when it can)."""
    if n_speakers >= MIN_SPEAKERS:
        return ""
    return (f"a speaker-disjoint split ({column}) needs at least {MIN_SPEAKERS} speakers (one each for "
            f"train, val and test); this store has {n_speakers}")


def normalise_split(values: pd.Series) -> np.ndarray:
    v = values.astype(str).str.strip().str.lower()
    bad = sorted(set(v) - set(ALIASES))
    if bad:
        raise CodeclensError(
            f"split column: unknown value(s) {', '.join(map(repr, bad[:5]))}; use train/val/test "
            f"(or {', '.join(sorted(set(ALIASES) - {'train', 'val', 'test'}))})"
        )
    return v.map(ALIASES).to_numpy()


def add_splits(utts: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    utts = utts.copy()
    speakers = utts["speaker"].astype(str).to_numpy()
    ids = utts["id"].astype(str).to_numpy() if "id" in utts.columns else utts.index.astype(str).to_numpy()
    utts["split_utt"] = hashed_split(seed, np.full(len(utts), "utt"), speakers, ids)
    utts["split_spk"] = speaker_split(seed, speakers)
    if PREDEFINED in utts.columns and utts[PREDEFINED].notna().all() and len(utts):
        own = normalise_split(utts[PREDEFINED])
        disjoint = pd.Series(own).groupby(speakers).nunique().max() == 1
        utts["split_spk" if disjoint else "split_utt"] = own
    return utts

"""Seeded train/val/test splits saved with the store.

- ``split_utt``: utterance-level, stratified by speaker (every speaker appears in
  every split it can): for closed-set speaker tasks.
- ``split_spk``: speaker-disjoint, stratified by accent when there is one: for
  accent and other open-set tasks.
A manifest's own ``split`` column is kept as it is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FRACTIONS = (0.7, 0.1, 0.2)  # train, val, test
NAMES = np.array(["train", "val", "test"])


def _assign(n: int, rng: np.random.Generator) -> np.ndarray:
    """Split labels for n shuffled items; small groups still get a test item first."""
    order = rng.permutation(n)
    if n == 1:
        labels = np.array([0])
    elif n == 2:
        labels = np.array([0, 2])
    elif n <= 4:
        labels = np.array([0] * (n - 2) + [1, 2])
    else:
        n_test = max(1, int(round(FRACTIONS[2] * n)))
        n_val = max(1, int(round(FRACTIONS[1] * n)))
        labels = np.array([0] * (n - n_test - n_val) + [1] * n_val + [2] * n_test)
    out = np.empty(n, dtype=np.int64)
    out[order] = labels
    return out


def add_splits(utts: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    utts = utts.copy()
    rng = np.random.default_rng(seed)
    speakers = utts["speaker"].astype(str).to_numpy()
    split_utt = np.zeros(len(utts), dtype=np.int64)
    for spk in sorted(set(speakers)):
        idx = np.flatnonzero(speakers == spk)
        split_utt[idx] = _assign(len(idx), rng)
    utts["split_utt"] = NAMES[split_utt]

    strata = utts["accent"].astype(str).to_numpy() if "accent" in utts.columns else np.array([""] * len(utts))
    spk_split: dict[str, int] = {}
    for stratum in sorted(set(strata)):
        spks = sorted(set(speakers[strata == stratum]) - set(spk_split))
        for spk, lab in zip(spks, _assign(len(spks), rng)):
            spk_split[spk] = int(lab)
    utts["split_spk"] = NAMES[[spk_split[s] for s in speakers]]
    return utts
